"""How close estimate_memory is to measured GPU memory, beside two common anchors.

Rows: ``bench/data/memory_reference.jsonl`` (published measurements, each with its
source) and ``bench/data/memory_gpu.jsonl`` (our own, written by
``bench/measure_memory_gpu.py`` on a GPU). For every scored row it prints, per
backend and task, the mean absolute percentage error (MAPE) and the worst
under-estimate of: our estimator; weights only (accelerate's ``estimate-memory``);
and the "18x / 8x / 2x / x / x/2 GB per billion parameters" rule of thumb.
Unscored rows (settings unstated, other software versions) are listed with their
errors but kept out of the scores. Finally: the median time of one
``estimate_memory`` call for a catalog model (target < 5 ms).

Run: ``PYTHONPATH=. .venv/bin/python bench/memory_accuracy.py``
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tools.memory import GIB, MemoryInput, breakdown_bytes, estimate_memory, resolve_settings
from tools.models import resolve_model

__all__ = ["anchors", "load_rows", "main", "predict"]

DATA = Path(__file__).parent / "data"
_INPUT_KEYS = set(MemoryInput.model_fields)


def load_rows() -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for name in ("memory_reference.jsonl", "memory_gpu.jsonl", "memory_trl.jsonl"):
        p = DATA / name
        if p.exists():
            for line in p.read_text().splitlines():
                if line.strip():
                    row = json.loads(line)
                    row.setdefault("origin", name)
                    rows.append(row)
    return rows


def _input(row: dict[str, Any]) -> MemoryInput:
    args = {k: v for k, v in row.items() if k in _INPUT_KEYS and v is not None}
    if "gpu_memory_total_gib" in row:
        args.pop("gpu", None)  # a board not in the tier table: its memory is passed to the core directly
    return MemoryInput(**args)


def predict(row: dict[str, Any]) -> float:
    """Our estimate of the row's metric, in GiB."""
    p = _input(row)
    metric = row.get("metric", "total_gib")
    if metric == "total_gib":
        return estimate_memory(p, with_plan=False).total_gib
    arch = resolve_model(p.model)
    s = resolve_settings(p, arch)
    parts = breakdown_bytes(arch, s, gpu_gib=row.get("gpu_memory_total_gib"))
    if metric == "vllm_weights_gib":
        return parts.weights / GIB
    if metric == "vllm_non_kv_gib":
        return parts.non_kv / GIB
    raise ValueError(f"unknown metric {metric}")


def anchors(row: dict[str, Any]) -> tuple[float, float]:
    """(weights only, rule of thumb) in GiB for the row."""
    p = _input(row)
    arch = resolve_model(p.model)
    billions = arch.param_counts()[0] / 1e9
    tp = p.tensor_parallel_size or 1
    if p.task == "qlora":
        wbytes, rule = 0.5, 0.5
    elif p.quantization in ("bnb-8bit", "fp8"):
        wbytes, rule = 1.0, 1.0
    else:
        wbytes = 4.0 if p.dtype == "float32" else 2.0
        rule = {"full": 18.0 if p.dtype == "float32" else 8.0, "lora": 2.0}.get(p.task, wbytes)
    gb = 1e9 / GIB
    return billions * wbytes * gb / tp, billions * rule * gb / tp


def _fmt(errs: list[float]) -> str:
    if not errs:
        return "      -            -"
    mape = 100 * statistics.fmean(abs(e) for e in errs)
    worst = 100 * min(min(errs), 0.0)
    return f"{mape:6.1f}%   {worst:+7.1f}%"


def main() -> int:
    rows = load_rows()
    groups: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    unscored: list[str] = []
    print(f"{'row':42s} {'measured':>9s} {'ours':>7s} {'err':>7s}")
    for row in rows:
        if row.get("model") is None:
            unscored.append(f"{row['id']}: not modelled ({row.get('note', '')})")
            continue
        try:
            ours = predict(row)
        except Exception as e:  # a bench row must never stop the report
            unscored.append(f"{row['id']}: {type(e).__name__}: {e}")
            continue
        meas = float(row["measured_gib"])
        err = (ours - meas) / meas
        if not row.get("scored", True):
            unscored.append(
                f"{row['id']}: measured {meas:.2f}, ours {ours:.2f} ({100 * err:+.1f}%) — {row.get('note')}"
            )
            continue
        w, rule = anchors(row)
        key = (row.get("backend") or "vllm", row.get("task", "inference"))
        groups[key]["ours"].append(err)
        groups[key]["weights"].append((w - meas) / meas)
        groups[key]["rule"].append((rule - meas) / meas)
        groups[("all", "all")]["ours"].append(err)
        groups[("all", "all")]["weights"].append((w - meas) / meas)
        groups[("all", "all")]["rule"].append((rule - meas) / meas)
        print(f"{row['id']:42s} {meas:9.2f} {ours:7.2f} {100 * err:+6.1f}%")
    print()
    print(
        "| backend / task | rows | ours MAPE | ours worst under | weights-only MAPE | worst under "
        "| rule of thumb MAPE | worst under |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (bk, task), g in sorted(groups.items(), key=lambda kv: (kv[0] == ("all", "all"), kv[0])):
        cells = []
        for k in ("ours", "weights", "rule"):
            m = _fmt(g[k]).split()
            cells += m if len(m) == 2 else ["-", "-"]
        print(f"| {bk} / {task} | {len(g['ours'])} | " + " | ".join(cells) + " |")
    if unscored:
        print("\nNot scored:")
        for u in unscored:
            print("  -", u)
    p = MemoryInput(model="meta-llama/Llama-3.1-70B", task="inference", gpu="H100", seq_len=8192)
    estimate_memory(p)
    times = []
    for _ in range(200):
        t0 = time.perf_counter()
        estimate_memory(p)
        times.append(time.perf_counter() - t0)
    p2 = MemoryInput(model="meta-llama/Llama-3.1-8B", task="qlora", gpu="RTX4090", seq_len=4096)
    for _ in range(200):
        t0 = time.perf_counter()
        estimate_memory(p2)
        times.append(time.perf_counter() - t0)
    print(
        f"\nestimate_memory median time (catalog model, with plan and all tiers): "
        f"{1000 * statistics.median(times):.2f} ms over {len(times)} calls"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
