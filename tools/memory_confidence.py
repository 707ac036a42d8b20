"""Which measured regime an estimate falls in, and what it extrapolates to beyond the measurements.

A regime is the software path that decides the physics (backend, task, checkpointing,
autocast, eager attention, sharding). ``tools/data/memory_regimes.json`` lists, per
regime, what was measured on real GPUs (model families, parameter and token ranges, the
accuracy bench's errors there); ``bench/memory_accuracy.py --write-regimes`` rewrites it
from bench/data/. An estimate inside those ranges is "confident"; anything else is named.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from pydantic import BaseModel, Field

from tools.memory_arch import param_counts
from tools.memory_settings import Settings
from tools.models import ModelArch

__all__ = ["REGIMES_PATH", "Confidence", "confidence", "regime", "regime_features"]

REGIMES_PATH = Path(__file__).parent / "data" / "memory_regimes.json"


class Confidence(BaseModel):
    regime: str = Field(description="The software path whose physics this estimate uses.")
    measured_rows: int = Field(description="GPU measurements of this regime the estimator was checked on.")
    confident: bool = Field(description="Inside what was measured: regime, model family, size and tokens.")
    extrapolates: list[str] = Field(description="What lies outside the measurements (empty when confident).")
    measured_error: str | None = Field(None, description="The accuracy bench's errors in this regime.")


def regime(s: Settings) -> str:
    """The regime's name (the accuracy bench groups its rows by it)."""
    if s.task == "inference":
        return f"{s.backend} serving"
    parts = [f"{s.backend} {s.task}", "checkpointing" if s.gradient_checkpointing else "no checkpointing"]
    if s.backend != "unsloth" and s.mixed_precision == "none" and s.dtype != "float32":
        parts.append("no autocast")
    if s.attn_implementation == "eager" and s.backend != "unsloth":
        parts.append("eager attention")
    if s.num_gpus > 1:
        parts.append(f"{s.num_gpus} GPUs ZeRO {s.zero_stage}" + (" offload" if s.cpu_offload else ""))
    return ", ".join(parts)


def regime_features(arch: ModelArch, s: Settings) -> dict:
    """What a measurement of this configuration covers: family, size, tokens per micro-batch."""
    return {
        "model_type": arch.model_type,
        "params_b": round(param_counts(arch)[0] / 1e9, 2),
        "tokens": s.seq_len * s.batch_size,
    }


@functools.cache
def _table() -> dict:
    return json.loads(REGIMES_PATH.read_text()) if REGIMES_PATH.exists() else {}


def confidence(arch: ModelArch, s: Settings) -> Confidence:
    """Where this estimate stands against the measurements (pure: the table is read once)."""
    name = regime(s)
    r = _table().get(name)
    if r is None:
        return Confidence(
            regime=name, measured_rows=0, confident=False, extrapolates=[f"regime '{name}' was never measured"]
        )
    f = regime_features(arch, s)
    out = []
    if f["model_type"] not in r["model_types"]:
        out.append(f"model family {f['model_type']} not measured here (measured: {', '.join(r['model_types'])})")
    lo, hi = r["params_b"]
    if not lo <= f["params_b"] <= hi:
        out.append(f"{f['params_b']}B parameters outside the measured {lo}-{hi}B")
    lo, hi = r["tokens"]
    if not lo <= f["tokens"] <= hi:
        out.append(f"{f['tokens']} tokens per micro-batch outside the measured {lo}-{hi}")
    err = (
        f"mean {100 * r['mean_error']:.1f}%, worst under {100 * r['worst_under']:+.1f}%, "
        f"worst over {100 * r['worst_over']:+.1f}% over {r['rows']} rows"
    )
    return Confidence(regime=name, measured_rows=r["rows"], confident=not out, extrapolates=out, measured_error=err)
