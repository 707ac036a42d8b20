"""Run a payload with bitsandbytes' AVX512-BF16 CPU probe forced one way (the hook's docstring says why).

The hook is ``tests/helpers/bnb_cpu_probe/sitecustomize.py``; a payload process finds it through
``PYTHONPATH``. Both the subprocess tests and the engine's jobs (a host's ``env``) use ``probe_env``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

__all__ = ["HOOK_DIR", "check_forced_path", "probe_env", "read_report"]

HOOK_DIR = Path(__file__).resolve().with_name("bnb_cpu_probe")
# The names sitecustomize.py reads (it cannot import this module: it runs before sys.path has the repo).
FORCE_VAR, REPORT_VAR = "LLM_OPS_TEST_BNB_AVX512BF16", "LLM_OPS_TEST_BNB_REPORT"


def probe_env(forced: bool, report: Path) -> dict[str, str]:
    """Environment variables that make a payload's bitsandbytes believe the CPU has (or lacks) AVX512-BF16."""
    pythonpath = os.pathsep.join(p for p in (str(HOOK_DIR), os.environ.get("PYTHONPATH", "")) if p)
    return {"PYTHONPATH": pythonpath, FORCE_VAR: "1" if forced else "0", REPORT_VAR: str(report)}


def read_report(path: Path) -> dict[str, Any]:
    """What the hook saw in the payload's process (written when it exits)."""
    assert path.is_file(), f"the probe hook wrote no report at {path}: was it on the payload's PYTHONPATH?"
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def check_forced_path(report: dict[str, Any], forced: bool, layers_4bit: int) -> None:
    """The branch asked for is the branch that ran: repacks (right ones) when forced on, none when off."""
    assert report["forced"] is forced, report
    if forced:
        assert report["repacks"] == layers_4bit, report  # each 4-bit layer, once, at its first forward
        assert report["repack_max_rel_error"] < 0.02, report  # bf16 scales; a wrong layout is off by ~1
        assert report["packed_gemm_calls"] > 0 or report["probe_real"], report  # stand-in, or the real kernel
    else:
        assert report["repacks"] == 0 and report["packed_gemm_calls"] == 0, report
