"""Test-only start-up hook: force bitsandbytes' AVX512-BF16 CPU probe one way or the other.

Why: bitsandbytes 0.50.2 takes a different 4-bit path depending on one probe,
``bitsandbytes/functional.py`` ``has_avx512bf16()`` (the native library's
``has_avx512bf16_cpu``). ``nn/modules.py`` ``Linear4bit.__init__`` stores its answer, and where it
is yes the first inference forward on the CPU repacks the weight
(``functional._convert_weight_packed_for_cpu``) for the AVX512-BF16 kernel that
``backends/cpu/ops.py`` registered at import time. Which path a test takes would depend on the CPU it
happens to run on, so a green run on one CPU proves nothing about the next.

A test puts this directory on ``PYTHONPATH`` of the payload's process and sets
``LLM_OPS_TEST_BNB_AVX512BF16`` to ``1`` or ``0``; Python imports ``sitecustomize`` at start-up, and
this one patches the probe right after ``bitsandbytes.functional`` executes, before the modules that
bind it by name import it. Without the variable it does nothing.

Forced on where the CPU lacks the instructions, the repack (pure torch reshaping) runs for real; only
the compiled kernel, which would stop on an illegal instruction, is swapped for ``packed_gemm``, a
pure-torch reading of the same packed layout (bitsandbytes ``csrc/cpu_ops.cpp``
``tinygemm_kernel_nn``), through the hook the CPU op already has for an external kernel
(``gemm_4bit_forward_kernel``). Where the CPU has them, the real kernel runs.

``LLM_OPS_TEST_BNB_REPORT`` names a JSON file written at exit: the real probe, the forced value, how
often the repack and the stand-in kernel ran, and how far the repacked weights decode from the
weights bitsandbytes' own dequantization gives (a wrong layout would be off by the whole weight), so
a test can check that the path it asked for ran, and ran right.
"""

from __future__ import annotations

import atexit
import importlib.abc
import json
import os
import sys
from collections.abc import Callable
from typing import Any

FORCE_VAR = "LLM_OPS_TEST_BNB_AVX512BF16"
REPORT_VAR = "LLM_OPS_TEST_BNB_REPORT"

_report: dict[str, Any] = {
    "forced": None,
    "probe_real": None,
    "repacks": 0,
    "repack_max_rel_error": 0.0,
    "packed_gemm_calls": 0,
}


def decode_packed(b: Any, absmax: Any, blocksize: int, quant_type: str) -> Any:
    """The float [N, K] weight held by a repacked 4-bit weight ``b`` [N, K/2] with scales ``absmax`` [K/blocksize, N].

    The layout ``_convert_weight_packed_for_cpu`` writes and the kernel reads: output rows in blocks
    of 32, and for each pair of input columns 32 bytes whose low nibbles hold rows 0-15 and high
    nibbles rows 16-31 (``vb_i8_lo``/``vb_i8_hi``); each code indexes the NF4/FP4 table (bf16 in the
    kernel's ``lut``) and is scaled per ``blocksize`` inputs.
    """
    import torch
    from bitsandbytes.functional import get_4bit_type

    n, k = b.shape[0], b.shape[1] * 2
    nibbles = b.reshape(-1, 32)
    codes = torch.cat([nibbles & 0xF, nibbles >> 4], dim=-1)  # [N/32 * K/2, 64]
    codes = codes.reshape(n // 32, k // 2, 32, 2).transpose(1, 2).reshape(n, k)
    table = get_4bit_type(quant_type, device=b.device).to(torch.bfloat16).float()
    return table[codes.long()] * absmax.float().t().repeat_interleave(blocksize, dim=1)


def packed_gemm(a: Any, b: Any, absmax: Any, blocksize: int, quant_type_num: int) -> Any:
    """``a`` [M, K] bf16 times the repacked weight: the stand-in for the compiled AVX512-BF16 kernel.

    Under ``no_grad``, because the real kernel writes into a fresh tensor through ctypes: autograd
    sees no graph through it either, and the stand-in must not be kinder than that.
    """
    import torch

    _report["packed_gemm_calls"] += 1
    with torch.no_grad():
        weight = decode_packed(b, absmax, blocksize, "fp4" if quant_type_num == 1 else "nf4")
        return (a.float() @ weight.t()).to(torch.bfloat16)


def _patch_functional(module: Any, forced: bool) -> None:
    _report["probe_real"] = bool(module.has_avx512bf16())
    module.has_avx512bf16 = lambda: forced
    repack = module._convert_weight_packed_for_cpu

    def checked_repack(qweight: Any, quant_state: Any, *args: Any, **kwargs: Any) -> Any:
        """The real repack, plus a check that its output decodes to the weight it was given."""
        before = module.dequantize_4bit(qweight, quant_state).float()  # the repack rewrites quant_state
        packed, state = repack(qweight, quant_state, *args, **kwargs)
        after = decode_packed(packed, state.absmax, state.blocksize, state.quant_type)
        error = float((after - before).abs().max() / before.abs().max().clamp_min(1e-12))
        _report["repacks"] += 1
        _report["repack_max_rel_error"] = max(_report["repack_max_rel_error"], error)
        return packed, state

    module._convert_weight_packed_for_cpu = checked_repack


def _patch_cpu_ops(module: Any, forced: bool) -> None:
    if forced and not _report["probe_real"]:
        module.gemm_4bit_forward_kernel = packed_gemm


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs a patch right after a named module executes (the other finders still find and load it)."""

    def __init__(self, patches: dict[str, Callable[[Any], None]]) -> None:
        self.patches = patches

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        patch = self.patches.get(fullname)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module: Any) -> None:
            run(module)
            patch(module)

        spec.loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _write_report() -> None:
    path = os.environ.get(REPORT_VAR)
    if path:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump(_report, fh)


def _install() -> None:
    value = os.environ.get(FORCE_VAR)
    if value not in ("0", "1"):
        return
    forced = value == "1"
    _report["forced"] = forced
    sys.meta_path.insert(
        0,
        _AfterImport(
            {
                "bitsandbytes.functional": lambda m: _patch_functional(m, forced),
                "bitsandbytes.backends.cpu.ops": lambda m: _patch_cpu_ops(m, forced),
            }
        ),
    )
    atexit.register(_write_report)


_install()
