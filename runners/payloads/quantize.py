#!/usr/bin/env python
"""Quantize payload: bitsandbytes NF4/INT8 through transformers, AWQ/GPTQ/FP8 through llm-compressor.

Runs on the GPU host in the host's own Python, so it is self-contained: stdlib plus torch,
transformers and, per method, bitsandbytes or llmcompressor (+ datasets for calibration).

    python quantize.py job.json          # the engine's form: settings in job.json["payload_config"]
    python quantize.py config.json       # a bare settings object works too (tests, by hand)

Why these two back-ends: bitsandbytes quantizes at load time and ``save_pretrained`` writes a
4/8-bit checkpoint that transformers (and vLLM's bitsandbytes loader) reload as is;
llm-compressor's ``oneshot`` writes the compressed-tensors format, the one vLLM serves fast
(Marlin/Machete kernels for W4A16, FP8 GEMMs on Hopper/Ada).

Why the manifest measures what it does: a quantized checkpoint that saved but does not load,
or loads but has lost the model, is the usual silent failure. So the payload reloads the
*saved* checkpoint from disk, runs a forward pass, and compares perplexity on a small
held-out text before and after.

Reports only through files, because the controller may be gone while this runs:
  DIR/metrics.jsonl          {"event": "start"}, {"event": "phase", ...}, then "end" or "error"
  DIR/outputs/<output_name>/ the quantized checkpoint + tokenizer
  DIR/outputs/manifest.json  sizes, perplexities, the forward check, versions
Exit codes (job_io's table): 0 done, 1 unexpected failure, 2 bad config or input, 3 out of
memory, 4 a library this method needs is not installed on the host.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

try:  # beside this file in the job directory; runners.payloads.job_io in the repository
    from . import job_io as jio
except ImportError:
    import job_io as jio  # type: ignore[no-redef]

METHODS = ("bnb-nf4", "bnb-int8", "awq", "gptq", "fp8", "fp8-dynamic")
BNB_METHODS = ("bnb-nf4", "bnb-int8")
CALIBRATED_METHODS = ("awq", "gptq", "fp8")
# llm-compressor preset schemes (compressed-tensors); each is a format vLLM loads.
LLMC_SCHEMES = {"awq": "W4A16_ASYM", "gptq": "W4A16", "fp8": "FP8", "fp8-dynamic": "FP8_DYNAMIC"}
# W4A16 schemes quantize weights in groups of 128 input features.
GROUPED_METHODS, GROUP_SIZE = ("awq", "gptq"), 128
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# bitsandbytes 0.50.2, nn/modules.py Linear4bit.forward: on a CPU where functional.has_avx512bf16()
# holds, the first inference forward repacks each 4-bit weight for the AVX512-BF16 kernel
# (functional._convert_weight_packed_for_cpu). The repack asserts out_features % 32 == 0 (its block_n)
# and reshapes the scales to [out_features, in_features // blocksize], so in_features must be a multiple
# of the 4-bit block size (64): any other layer stops the forward with an AssertionError or
# "shape '[32, 0]' is invalid". Real models have such layers (Qwen1.5-MoE and Qwen2-MoE: a
# shared_expert_gate with one output per layer). On a CPU the payload leaves them unquantized whatever
# this CPU's probe says, so a CPU-made checkpoint runs on every CPU; on a GPU nothing is repacked.
CPU_REPACK_ROWS = 32

DEFAULTS: dict[str, Any] = {
    "model": None,
    "method": None,
    "output_name": "quantized",
    "revision": None,
    "calibration_dataset": None,
    "calibration_split": "train",
    "num_calibration_samples": 256,
    "max_seq_length": 512,
    "eval_text": None,
    "eval_max_tokens": 4096,
    "eval_window": 512,
    "ignore": ["lm_head"],
    "device": "auto",
    "trust_remote_code": False,
    "skip_eval": False,
}

# A small, fixed held-out text: general English prose no calibration set is built from, so
# "perplexity before vs after" compares like with like across methods and runs.
HELD_OUT_TEXT = (
    "The river rose slowly through the night, and by morning the lower fields were under water. "
    "Farmers moved their animals to the hills, where the old stone walls still marked the edges of "
    "pastures that had been grazed for centuries. In the village, the baker opened at five as he "
    "always did, and people came in with wet boots to buy bread and to talk about the weather. "
    "Nobody could remember a flood this early in the year. The schoolteacher said that her "
    "grandmother had kept a diary of every storm since the war, and that the diary would show "
    "whether this one was the worst. When she brought it to the square that afternoon, a small "
    "crowd gathered to read the careful handwriting: dates, heights of the water, the names of "
    "families who had lost their harvest. The worst year, it turned out, had been long before any "
    "of them were born. Still, the water kept rising, and the mayor asked everyone with a tractor "
    "to help carry sandbags to the bridge. By evening the rain had stopped, the clouds broke apart, "
    "and the low sun turned the flooded fields into a sheet of gold. Children threw stones into the "
    "water from the bridge while their parents counted the bags that were left, and the baker, who "
    "had not slept, gave away what remained of the day's bread. "
)


def say(msg: str) -> None:
    print(f"[quantize] {msg}", flush=True)


def load_settings(path: Path) -> dict[str, Any]:
    """job.json's settings over DEFAULTS (job_io.load_settings), then this payload's own checks."""
    cfg = jio.load_settings(path, DEFAULTS, required=("model",))
    if cfg["method"] not in METHODS:
        raise jio.BadInput(f"method must be one of {', '.join(METHODS)}, not {cfg['method']!r}")
    if cfg["method"] in CALIBRATED_METHODS and not cfg["calibration_dataset"]:
        raise jio.BadInput(f"method {cfg['method']} needs a calibration_dataset (a JSONL file or a Hub dataset id)")
    name = str(cfg["output_name"])
    if not name or "/" in name or name.startswith(".") or name == "manifest.json":
        raise jio.BadInput(f"output_name {name!r} must be a plain directory name")
    return cfg


def versions() -> dict[str, str]:
    """Library versions for the manifest: what produced these weights, to reproduce or debug them."""
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "llmcompressor", "compressed-tensors", "accelerate"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def resolve_model_dir(model: str, revision: str | None) -> Path:
    """A local directory for ``model``: itself if it is a path, else its snapshot in the HF cache.

    ``snapshot_download`` is a no-op when the files are cached (and works with HF_HUB_OFFLINE=1),
    so compute nodes without internet quantize what download_model fetched on the login node.
    """
    p = Path(model).expanduser()
    if p.is_dir():
        return p.resolve()
    if p.is_absolute() or model.startswith((".", "~")):
        raise jio.BadInput(f"model directory {model} does not exist on this host")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id=model, revision=revision))
    except Exception as exc:
        raise jio.BadInput(
            f"model {model!r} is not available on this host ({type(exc).__name__}: {exc}); "
            "download it first with download_model"
        ) from exc


def weights_size(path: Path) -> int:
    """Bytes of weight files under ``path`` (symlinks into the HF blob store followed)."""
    total = 0
    for f in path.rglob("*"):
        if f.name.endswith(WEIGHT_SUFFIXES) and f.is_file():
            total += f.stat().st_size
    return total


def pick_device(choice: str) -> str:
    import torch

    if choice == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda" and not torch.cuda.is_available():
        raise jio.BadInput("device 'cuda' was asked for but torch sees no CUDA GPU on this host")
    return choice


def work_dtype(device: str) -> Any:
    """bf16 on GPUs (what the weights usually are), fp32 on CPU (bf16 matmuls are slow or missing there)."""
    import torch

    return torch.bfloat16 if device == "cuda" else torch.float32


def device_map(device: str) -> Any:
    return "auto" if device == "cuda" else "cpu"


def load_texts(spec: str, split: str, limit: int) -> list[str]:
    """Calibration texts from a local .jsonl/.json/.txt file or a Hub dataset id.

    Rows may be ``text``, chat ``messages``/``conversations``, ``prompt``/``completion``
    or ``instruction``/``output``: calibration only needs representative tokens.
    """
    p = Path(spec).expanduser()
    rows: list[Any]
    if p.is_file():
        if p.suffix == ".txt":
            rows = [line for line in p.read_text(encoding="utf-8").split("\n\n") if line.strip()]
        elif p.suffix == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
            rows = data if isinstance(data, list) else data.get("data", [])
        else:
            rows = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    elif p.is_absolute() or spec.startswith((".", "~")):
        raise jio.BadInput(f"calibration dataset {spec} does not exist on this host")
    else:
        datasets = jio.require("datasets", "a Hub calibration dataset")
        try:
            rows = list(datasets.load_dataset(spec, split=f"{split}[:{limit}]"))
        except Exception as exc:
            raise jio.BadInput(
                f"calibration dataset {spec!r} could not be loaded ({type(exc).__name__}: {exc})"
            ) from exc
    texts = [t for t in (row_text(r) for r in rows[:limit]) if t.strip()]
    if not texts:
        raise jio.BadInput(f"calibration dataset {spec} has no usable text rows")
    return texts


def row_text(row: Any) -> str:
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        return ""
    if isinstance(row.get("text"), str):
        return row["text"]
    for key in ("messages", "conversations"):
        turns = row.get(key)
        if isinstance(turns, list):
            return "\n".join(str(t.get("content", t.get("value", ""))) for t in turns if isinstance(t, dict))
    parts = [row.get(k) for k in ("instruction", "input", "output", "prompt", "completion")]
    return "\n".join(p for p in parts if isinstance(p, str) and p)


def perplexity(model: Any, tokenizer: Any, text: str, max_tokens: int, window: int) -> dict[str, float]:
    """Token-weighted perplexity over non-overlapping windows of ``text`` (why: cheap, and the same
    windows before and after make the two numbers comparable)."""
    import torch

    ids = tokenizer(text, return_tensors="pt").input_ids[0][:max_tokens]
    limit = getattr(model.config, "max_position_embeddings", None) or window
    window = max(2, min(window, int(limit)))
    dev = next(model.parameters()).device
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids) - 1, window):
            chunk = ids[start : start + window].unsqueeze(0).to(dev)
            if chunk.shape[1] < 2:
                break
            loss = model(input_ids=chunk, labels=chunk).loss
            n = chunk.shape[1] - 1
            nll += float(loss) * n
            count += n
    if count == 0:
        raise jio.BadInput("the held-out text is too short to measure perplexity")
    return {"perplexity": round(math.exp(nll / count), 4), "tokens": count}


def forward_check(model: Any, tokenizer: Any) -> dict[str, Any]:
    """One forward pass of the reloaded checkpoint: shape and whether every logit is finite."""
    import torch

    batch = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")
    dev = next(model.parameters()).device
    with torch.no_grad():
        logits = model(**{k: v.to(dev) for k, v in batch.items()}).logits
    finite = bool(torch.isfinite(logits.float()).all())
    return {"ok": finite, "logits_shape": list(logits.shape), "finite": finite}


def free(*objs: Any) -> None:
    import torch

    for o in objs:
        del o
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def quantize_bnb(cfg: dict[str, Any], src: Path, out: Path, device: str, kept: dict[str, str]) -> str:
    """Quantize at load (bitsandbytes) and save the 4/8-bit checkpoint; returns the format name.

    ``kept``: layers to leave unquantized besides ``ignore`` (from ``plan_cpu_4bit``).
    """
    jio.require("bitsandbytes", f"method {cfg['method']}")
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = work_dtype(device)
    skip: list[str] | None = list(cfg["ignore"]) or None
    if kept:
        skip = [*(skip or default_skips(model_skeleton(src, cfg["trust_remote_code"]))), *kept]
    if cfg["method"] == "bnb-nf4":
        qc = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_use_double_quant=True,
            llm_int8_skip_modules=skip,
        )
        fmt = "bitsandbytes-nf4"
    else:
        qc = BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        fmt = "bitsandbytes-int8"
    model = AutoModelForCausalLM.from_pretrained(
        str(src),
        quantization_config=qc,
        device_map=device_map(device),
        dtype=dtype,
        trust_remote_code=cfg["trust_remote_code"],
    )
    if cfg["method"] == "bnb-nf4" and device == "cpu":
        check_cpu_4bit(model)
    model.save_pretrained(str(out))
    free(model)
    return fmt


def plan_cpu_4bit(cfg: dict[str, Any], src: Path, device: str) -> dict[str, str]:
    """Before anything loads: the layers a bnb-nf4 quantization on a CPU leaves unquantized, with why.

    Read from the model's skeleton (no weights), so a model with no layer to quantize is refused
    before minutes of loading, and one with a few misfits (a MoE gate) keeps just those.
    """
    if cfg["method"] != "bnb-nf4" or device != "cpu":
        return {}
    jio.require("bitsandbytes", f"method {cfg['method']}")
    ignore = cfg["ignore"]
    skeleton = model_skeleton(src, cfg["trust_remote_code"])
    linears = linear_shapes(skeleton)
    blocksize = bnb_blocksize()
    kept = {
        n: why
        for n, (ins, outs) in linears.items()
        if not any(n.endswith(i) for i in ignore) and (why := cpu_4bit_misfit(ins, outs, blocksize))
    }
    if linears and all(n in kept or any(n.endswith(i) for i in ignore) for n in linears):
        raise jio.BadInput(no_4bit_layer_message(blocksize))
    if kept:
        say(
            f"keeping {len(kept)} layer(s) unquantized, which bitsandbytes' 4-bit CPU kernel cannot run: "
            + "; ".join(f"{n} ({why})" for n, why in list(kept.items())[:3])
            + (f"; and {len(kept) - 3} more" if len(kept) > 3 else "")
        )
    return kept


def model_skeleton(src: Path, trust_remote_code: bool) -> Any:
    """The model's modules on the meta device: its layer shapes without reading a weight."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(src), trust_remote_code=trust_remote_code)
    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)


def default_skips(model: Any) -> list[str]:
    """What transformers leaves unquantized when it is given no skip list (the lm_head, tied weights),
    which it stops doing once the payload passes one (transformers quantizers/base.py
    ``get_keys_to_not_convert``, used by ``HfQuantizer.get_modules_to_not_convert``)."""
    try:
        from transformers.quantizers.base import get_keys_to_not_convert
    except ImportError:
        return ["lm_head"]
    return list(get_keys_to_not_convert(model))


def cpu_4bit_misfit(ins: int, outs: int, blocksize: int) -> str | None:
    """Why bitsandbytes' AVX512-BF16 CPU repack cannot take an ``ins`` -> ``outs`` 4-bit layer, or None."""
    why = []
    if ins % blocksize:
        why.append(f"{ins} input features, not a multiple of the 4-bit block size {blocksize}")
    if outs % CPU_REPACK_ROWS:
        why.append(f"{outs} output features, not a multiple of {CPU_REPACK_ROWS}")
    return " and ".join(why) or None


def bnb_blocksize() -> int:
    """The block size bitsandbytes gives a 4-bit weight when nobody asks (``Params4bit``'s default, 64)."""
    import bitsandbytes as bnb

    return int(bnb.nn.Params4bit().blocksize)


def linear_shapes(model: Any) -> dict[str, tuple[int, int]]:
    """(in, out) features of every layer transformers may make 4-bit: ``nn.Linear`` and GPT-2's ``Conv1D``."""
    import torch
    from transformers.pytorch_utils import Conv1D

    shapes: dict[str, tuple[int, int]] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, Conv1D):
            shapes[name] = tuple(mod.weight.shape)  # [in, out] (transformers integrations/bitsandbytes.py)
        elif isinstance(mod, torch.nn.Linear):
            shapes[name] = (mod.in_features, mod.out_features)
    return shapes


def no_4bit_layer_message(blocksize: int) -> str:
    return (
        "no layer of this model has a shape bitsandbytes' 4-bit CPU kernel can run (input features a "
        f"multiple of the block size {blocksize}, output features a multiple of {CPU_REPACK_ROWS}), so "
        "nothing would be quantized; quantize it on a GPU host or use bnb-int8"
    )


def check_cpu_4bit(model: Any) -> None:
    """After the 4-bit load on a CPU: something was quantized, and every 4-bit layer fits the CPU repack.

    ``plan_cpu_4bit`` leaves every misfit it sees unquantized; this reads the real layers (with
    their own block size), so a layer it missed is refused by name instead of failing in the forward.
    """
    import bitsandbytes as bnb

    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    if not layers:
        raise jio.BadInput(no_4bit_layer_message(bnb_blocksize()))
    left = {n: why for n, m in layers if (why := cpu_4bit_misfit(m.in_features, m.out_features, m.weight.blocksize))}
    if left:
        raise jio.BadInput(
            f"bitsandbytes' 4-bit CPU kernel cannot run {len(left)} quantized layer(s): "
            + "; ".join(f"{n} ({why})" for n, why in list(left.items())[:3])
            + "; quantize on a GPU host or use bnb-int8"
        )


def quantize_llmc(cfg: dict[str, Any], src: Path, out: Path, device: str, tokenizer: Any) -> str:
    """llm-compressor ``oneshot`` with the method's preset scheme; saves compressed-tensors."""
    jio.require("llmcompressor", f"method {cfg['method']}")
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import QuantizationModifier
    from transformers import AutoModelForCausalLM

    method, scheme, ignore = cfg["method"], LLMC_SCHEMES[cfg["method"]], list(cfg["ignore"])
    if method == "awq":
        from llmcompressor.modifiers.awq import AWQModifier

        recipe: Any = AWQModifier(targets=["Linear"], scheme=scheme, ignore=ignore)
    elif method == "gptq":
        from llmcompressor.modifiers.quantization import GPTQModifier

        recipe = GPTQModifier(targets="Linear", scheme=scheme, ignore=ignore)
    else:
        recipe = QuantizationModifier(targets="Linear", scheme=scheme, ignore=ignore)
    model = AutoModelForCausalLM.from_pretrained(
        str(src),
        dtype=work_dtype(device) if device == "cuda" else "auto",
        device_map=device_map(device),
        trust_remote_code=cfg["trust_remote_code"],
    )
    if method in GROUPED_METHODS:
        check_group_size(model, ignore)
    kwargs: dict[str, Any] = {}
    if method in CALIBRATED_METHODS:
        datasets = jio.require("datasets", "calibration")
        texts = load_texts(cfg["calibration_dataset"], cfg["calibration_split"], cfg["num_calibration_samples"])
        enc = tokenizer(texts, truncation=True, max_length=cfg["max_seq_length"], padding=False)
        ds = datasets.Dataset.from_dict({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
        kwargs.update(dataset=ds, max_seq_length=cfg["max_seq_length"], num_calibration_samples=len(texts))
        say(f"calibrating on {len(texts)} samples of {cfg['calibration_dataset']}")
    oneshot(model=model, recipe=recipe, **kwargs)
    model.save_pretrained(str(out), save_compressed=True)
    free(model)
    return f"compressed-tensors ({scheme})"


def check_group_size(model: Any, ignore: list[str]) -> None:
    """Refuse a model whose linear layers cannot be split into groups (llm-compressor fails deep inside)."""
    import torch

    for name, mod in model.named_modules():
        skipped = any(name.endswith(i) for i in ignore)
        if isinstance(mod, torch.nn.Linear) and not skipped and mod.in_features % GROUP_SIZE:
            raise jio.BadInput(
                f"layer {name} has {mod.in_features} input features, not a multiple of the group size "
                f"{GROUP_SIZE} that W4A16 uses; use fp8-dynamic or bnb-nf4 for this model"
            )


def load_quantized(cfg: dict[str, Any], out: Path, device: str) -> Any:
    """Reload the saved checkpoint the way a user would; on CPU, compressed-tensors are decompressed."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"device_map": device_map(device), "trust_remote_code": cfg["trust_remote_code"]}
    if cfg["method"] not in BNB_METHODS and device != "cuda":
        from transformers import CompressedTensorsConfig

        kwargs["quantization_config"] = CompressedTensorsConfig(dequantize=True)
    return AutoModelForCausalLM.from_pretrained(str(out), **kwargs)


def run(cfg: dict[str, Any], outputs: Path, metrics: jio.Metrics, state: dict[str, Any]) -> dict[str, Any]:
    """The quantization itself, phase by phase; returns the manifest. ``state`` tells the error handlers
    how far it got."""
    import torch
    from transformers import AutoTokenizer

    torch.manual_seed(0)
    device = pick_device(cfg["device"])
    out = outputs / cfg["output_name"]
    out.mkdir(parents=True, exist_ok=True)
    eval_text = cfg["eval_text"] or HELD_OUT_TEXT
    metrics.write(
        {"event": "start", "method": cfg["method"], "model": cfg["model"], "device": device, "total_steps": 4}
    )

    state["phase"] = "resolve"
    src = resolve_model_dir(cfg["model"], cfg["revision"])
    size_before = weights_size(src)
    say(
        f"model {cfg['model']} at {src} ({size_before / 2**20:.1f} MiB of weights), method {cfg['method']}, on {device}"
    )
    tokenizer = AutoTokenizer.from_pretrained(str(src), trust_remote_code=cfg["trust_remote_code"])
    kept = plan_cpu_4bit(cfg, src, device)
    ppl_before = None if cfg["skip_eval"] else eval_before(cfg, src, device, tokenizer, eval_text, metrics, state)
    fmt, quantize_s = quantize_and_save(cfg, src, out, device, tokenizer, kept, metrics, state)
    check, ppl_after = reload_and_check(cfg, out, device, tokenizer, eval_text, metrics, state)
    manifest = {
        **manifest_head(cfg, src, out, device, fmt, size_before, weights_size(out)),
        **perplexity_fields(ppl_before, ppl_after),
        "eval_text": "built-in held-out paragraph" if not cfg["eval_text"] else "from settings",
        "forward_check": check,
        "kept_unquantized": kept,
        "calibration": calibration_of(cfg),
        "quantize_s": quantize_s,
        "wall_time_s": round(time.time() - metrics.t0, 2),
        "versions": versions(),
        "serve_hint": (f"vllm serve {out}" + (" --quantization bitsandbytes" if cfg["method"] in BNB_METHODS else "")),
    }
    (outputs / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    if not check["ok"]:
        raise jio.BadInput(
            "the quantized checkpoint produced non-finite logits; try another method or keep more layers"
        )
    return manifest


def enter_phase(phase: str, step: int, metrics: jio.Metrics, state: dict[str, Any]) -> None:
    """Record that ``phase`` (step ``step`` of 4) starts: for the error handlers and for progress."""
    state["phase"] = phase
    metrics.write({"event": "phase", "phase": phase, "step": step, "total_steps": 4})


def eval_before(
    cfg: dict[str, Any],
    src: Path,
    device: str,
    tokenizer: Any,
    eval_text: str,
    metrics: jio.Metrics,
    state: dict[str, Any],
) -> dict[str, float]:
    """Step 1: the original model's perplexity on the held-out text."""
    from transformers import AutoModelForCausalLM

    enter_phase("eval_before", 1, metrics, state)
    base = AutoModelForCausalLM.from_pretrained(
        str(src),
        dtype=work_dtype(device),
        device_map=device_map(device),
        trust_remote_code=cfg["trust_remote_code"],
    )
    ppl = perplexity(base, tokenizer, eval_text, cfg["eval_max_tokens"], cfg["eval_window"])
    say(f"perplexity before: {ppl['perplexity']} over {ppl['tokens']} tokens")
    free(base)
    return ppl


def quantize_and_save(
    cfg: dict[str, Any],
    src: Path,
    out: Path,
    device: str,
    tokenizer: Any,
    kept: dict[str, str],
    metrics: jio.Metrics,
    state: dict[str, Any],
) -> tuple[str, float]:
    """Step 2: quantize with the method's back-end and save the checkpoint and tokenizer; (format, seconds)."""
    enter_phase("quantize", 2, metrics, state)
    t0 = time.time()
    if cfg["method"] in BNB_METHODS:
        fmt = quantize_bnb(cfg, src, out, device, kept)
    else:
        fmt = quantize_llmc(cfg, src, out, device, tokenizer)
    quantize_s = round(time.time() - t0, 2)
    tokenizer.save_pretrained(str(out))
    say(f"saved {fmt} checkpoint to {out} ({weights_size(out) / 2**20:.1f} MiB) in {quantize_s} s")
    return fmt, quantize_s


def reload_and_check(
    cfg: dict[str, Any],
    out: Path,
    device: str,
    tokenizer: Any,
    eval_text: str,
    metrics: jio.Metrics,
    state: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, float] | None]:
    """Steps 3 and 4: reload the saved checkpoint, run a forward pass, measure its perplexity."""
    enter_phase("reload", 3, metrics, state)
    reloaded = load_quantized(cfg, out, device)
    check = forward_check(reloaded, tokenizer)
    say(f"reloaded and ran a forward pass: logits {check['logits_shape']}, finite={check['finite']}")
    ppl_after = None
    if not cfg["skip_eval"]:
        enter_phase("eval_after", 4, metrics, state)
        ppl_after = perplexity(reloaded, tokenizer, eval_text, cfg["eval_max_tokens"], cfg["eval_window"])
        say(f"perplexity after: {ppl_after['perplexity']}")
    free(reloaded)
    return check, ppl_after


def manifest_head(
    cfg: dict[str, Any], src: Path, out: Path, device: str, fmt: str, size_before: int, size_after: int
) -> dict[str, Any]:
    """The manifest's what and where: method, format, directories, sizes."""
    return {
        "method": cfg["method"],
        "format": fmt,
        "model": cfg["model"],
        "source_dir": str(src),
        "output_dir": str(out),
        "device": device,
        "size_before_bytes": size_before,
        "size_after_bytes": size_after,
        "compression_ratio": round(size_before / size_after, 3) if size_after else None,
    }


def perplexity_fields(before: dict[str, float] | None, after: dict[str, float] | None) -> dict[str, Any]:
    """The manifest's perplexities before and after, and the change in percent."""
    delta = None
    if before and after:
        delta = round(100.0 * (after["perplexity"] / before["perplexity"] - 1.0), 3)
    return {
        "perplexity_before": before["perplexity"] if before else None,
        "perplexity_after": after["perplexity"] if after else None,
        "perplexity_change_pct": delta,
        "eval_tokens": after["tokens"] if after else None,
    }


def calibration_of(cfg: dict[str, Any]) -> dict[str, Any] | None:
    if cfg["method"] not in CALIBRATED_METHODS:
        return None
    return {
        "dataset": cfg["calibration_dataset"],
        "max_samples": cfg["num_calibration_samples"],
        "max_seq_length": cfg["max_seq_length"],
    }


END_FIELDS = (
    "method",
    "format",
    "size_before_bytes",
    "size_after_bytes",
    "perplexity_before",
    "perplexity_after",
    "output_dir",
)


def main(argv: list[str] | None = None) -> int:
    """Run, and turn every failure into a metrics record, a last log line that names it, and an exit code."""
    args = sys.argv[1:] if argv is None else argv
    # output.log is for people: no progress bars (tqdm reads TQDM_DISABLE; set before any import uses it)
    os.environ.setdefault("TQDM_DISABLE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    if len(args) != 1:
        print("usage: python quantize.py job.json", file=sys.stderr)
        return jio.EXIT_BAD_INPUT
    files = jio.job_files(Path(args[0]))
    metrics = jio.Metrics(files.metrics)
    state: dict[str, Any] = {"phase": "config"}
    try:
        cfg = load_settings(files.settings)
        manifest = run(cfg, files.outputs, metrics, state)
    except Exception as exc:
        return jio.report_failure(metrics, exc, phase=state["phase"])
    metrics.write({"event": "end", "step": 4, "total_steps": 4, **{k: manifest[k] for k in END_FIELDS}})
    say(
        f"done: {manifest['format']}, {manifest['size_before_bytes']} -> {manifest['size_after_bytes']} bytes, "
        f"perplexity {manifest['perplexity_before']} -> {manifest['perplexity_after']}, in {manifest['output_dir']}"
    )
    return jio.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
