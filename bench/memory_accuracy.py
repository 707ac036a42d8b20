"""How close estimate_memory is to measured GPU memory, beside two common anchors; a check.

Rows: ``bench/data/memory_reference.jsonl`` (published measurements, each with its
source), ``bench/data/memory_gpu.jsonl`` (our own, written by
``bench/measure_memory_gpu.py`` on a GPU) and ``bench/data/memory_trl.jsonl``
(submit_finetune's own payload). The error of an estimate is measured against a band:
a GPU run's peak is anything from what the allocator handed out (``max_allocated``) to
what it held from the driver (``max_reserved``), each plus the CUDA context; how much
of the difference a run keeps is fragmentation, not physics. The error is 0 inside the
band, else (estimate - nearest edge) / that edge; a row with one number (published
figures, the TRL rows) is a band of width 0. The point error against the reserved edge
is printed beside it.

Printed: every scored row; mean absolute error, worst under- and over-estimate per
backend / task and per regime (the estimator's own regime names, the ones its
``confidence`` reports) for ours and two anchors (weights only = accelerate's
``estimate-memory``; the "18x / 8x / 2x / x / x/2 GB per billion" rule of thumb);
unscored rows with their reason; the median time of one ``estimate_memory`` call.

The check (exit status 1 when it fails): no under-estimate below -5 %, mean error at most
3 %, no over-estimate above +10 %, median call under 5 ms.
``--write-regimes`` rewrites ``tools/data/memory_regimes.json`` (what was measured in each
regime, which the estimator's ``confidence`` reads) from the scored rows.

Run: ``PYTHONPATH=. .venv/bin/python bench/memory_accuracy.py [--write-regimes]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tools.memory_confidence import REGIMES_PATH, regime, regime_features

from tools.memory import estimate_memory
from tools.memory_core import breakdown_bytes
from tools.memory_settings import GIB, MemoryInput, resolve_settings
from tools.models import resolve_model

__all__ = ["anchors", "band_error", "check", "load_rows", "main", "predict", "regime_table", "score"]

DATA = Path(__file__).parent / "data"
_INPUT_KEYS = set(MemoryInput.model_fields)
UNDER_LIMIT, MEAN_LIMIT, OVER_LIMIT, TIME_LIMIT_MS = -0.05, 0.03, 0.10, 5.0


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


def band(row: dict[str, Any]) -> tuple[float, float]:
    """(low, high) GiB: peak allocated + context .. peak reserved + context (one number: both)."""
    hi = float(row["measured_gib"])
    if row.get("max_allocated_gib") is not None and row.get("context_gib") is not None:
        return min(hi, float(row["max_allocated_gib"]) + float(row["context_gib"])), hi
    return hi, hi


def band_error(row: dict[str, Any], est: float) -> float:
    """0 inside the band, else (est - nearest edge) / that edge."""
    lo, hi = band(row)
    if est < lo:
        return (est - lo) / lo
    if est > hi:
        return (est - hi) / hi
    return 0.0


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


def row_regime(row: dict[str, Any]) -> str:
    p = _input(row)
    return regime(resolve_settings(p, resolve_model(p.model)))


def score(rows: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[str]]:
    """Scored rows with ours/anchors errors, and the unscored rows' lines."""
    scored, unscored = [], []
    for row in rows:
        if row.get("model") is None:
            unscored.append(f"{row['id']}: not modelled ({row.get('note', '')})")
            continue
        try:
            ours = predict(row)
        except Exception as e:  # a bench row must never stop the report
            unscored.append(f"{row['id']}: {type(e).__name__}: {e}")
            continue
        err = band_error(row, ours)
        if not row.get("scored", True):
            unscored.append(f"{row['id']}: measured {row['measured_gib']:.2f}, ours {ours:.2f} ({100 * err:+.1f}%)")
            unscored[-1] += f" — {row.get('note')}"
            continue
        w, rule = anchors(row)
        scored.append(
            {
                "row": row,
                "ours_gib": ours,
                "ours": err,
                "point": (ours - float(row["measured_gib"])) / float(row["measured_gib"]),
                "weights": band_error(row, w),
                "rule": band_error(row, rule),
                "backend_task": f"{row.get('backend') or 'vllm'} / {row.get('task', 'inference')}",
                "regime": row_regime(row),
            }
        )
    return scored, unscored


def _stats(errs: list[float]) -> tuple[float, float, float]:
    """(mean |error|, worst under (<= 0), worst over (>= 0))."""
    return statistics.fmean(abs(e) for e in errs), min(min(errs), 0.0), max(max(errs), 0.0)


def _table(scored: list[dict[str, Any]], key: str) -> list[str]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for s in scored:
        groups[s[key]].append(s)
        groups["all"].append(s)
    head = f"| {key.replace('_', ' / ')} | rows | ours mean | worst under | worst over | weights-only mean "
    head += "| worst under | rule of thumb mean | worst under |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for name in sorted(groups, key=lambda n: (n == "all", n)):
        g = groups[name]
        m, u, o = _stats([s["ours"] for s in g])
        wm, wu, _ = _stats([s["weights"] for s in g])
        rm, ru, _ = _stats([s["rule"] for s in g])
        lines.append(
            f"| {name} | {len(g)} | {100 * m:.1f}% | {100 * u:+.1f}% | {100 * o:+.1f}% | {100 * wm:.1f}% "
            f"| {100 * wu:+.1f}% | {100 * rm:.1f}% | {100 * ru:+.1f}% |"
        )
    return lines


def regime_table(scored: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """What was measured in each regime: the ranges the estimator calls confident."""
    out: dict[str, dict[str, Any]] = {}
    for s in scored:
        row = s["row"]
        if row.get("metric", "total_gib") != "total_gib":
            continue
        p = _input(row)
        arch = resolve_model(p.model)
        f = regime_features(arch, resolve_settings(p, arch))
        r = out.setdefault(
            s["regime"],
            {"rows": 0, "model_types": [], "params_b": [f["params_b"]] * 2, "tokens": [f["tokens"]] * 2, "errors": []},
        )
        r["rows"] += 1
        if f["model_type"] not in r["model_types"]:
            r["model_types"].append(f["model_type"])
        r["params_b"] = [min(r["params_b"][0], f["params_b"]), max(r["params_b"][1], f["params_b"])]
        r["tokens"] = [min(r["tokens"][0], f["tokens"]), max(r["tokens"][1], f["tokens"])]
        r["errors"].append(s["ours"])
    for r in out.values():
        errs = r.pop("errors")
        m, u, o = _stats(errs)
        r.update(mean_error=round(m, 4), worst_under=round(u, 4), worst_over=round(o, 4))
        r["model_types"].sort()
        r["params_b"] = [round(x, 2) for x in r["params_b"]]
    return dict(sorted(out.items()))


def _time_ms() -> float:
    times = []
    for p in (
        MemoryInput(model="meta-llama/Llama-3.1-70B", task="inference", gpu="H100", seq_len=8192),
        MemoryInput(model="meta-llama/Llama-3.1-8B", task="qlora", gpu="RTX4090", seq_len=4096),
    ):
        estimate_memory(p)
        for _ in range(200):
            t0 = time.perf_counter()
            estimate_memory(p)
            times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def check(scored: list[dict[str, Any]], ms: float) -> list[str]:
    """The targets missed (empty: the check passes)."""
    m, u, o = _stats([s["ours"] for s in scored])
    missed = []
    if u < UNDER_LIMIT:
        worst = min(scored, key=lambda s: s["ours"])
        missed.append(f"under-estimate {100 * u:+.1f}% below {100 * UNDER_LIMIT:+.0f}% ({worst['row']['id']})")
    if m > MEAN_LIMIT:
        missed.append(f"mean error {100 * m:.1f}% above {100 * MEAN_LIMIT:.0f}%")
    if o > OVER_LIMIT:
        worst = max(scored, key=lambda s: s["ours"])
        missed.append(f"over-estimate {100 * o:+.1f}% above {100 * OVER_LIMIT:+.0f}% ({worst['row']['id']})")
    if ms > TIME_LIMIT_MS:
        missed.append(f"median call {ms:.2f} ms above {TIME_LIMIT_MS} ms")
    return missed


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--write-regimes", action="store_true", help=f"Rewrite {REGIMES_PATH.name} from the rows.")
    args = ap.parse_args(argv)
    scored, unscored = score(load_rows())
    print(f"{'row':58s} {'band GiB':>13s} {'ours':>7s} {'band err':>8s} {'point':>7s}  regime")
    for s in scored:
        lo, hi = band(s["row"])
        print(
            f"{s['row']['id']:58s} {lo:6.2f}-{hi:6.2f} {s['ours_gib']:7.2f} {100 * s['ours']:+7.1f}% "
            f"{100 * s['point']:+6.1f}%  {s['regime']}"
        )
    for key in ("backend_task", "regime"):
        print()
        print("\n".join(_table(scored, key)))
    if unscored:
        print("\nNot scored:")
        for u in unscored:
            print("  -", u)
    ms = _time_ms()
    print(f"\nestimate_memory median time (catalog model, with plan and all tiers): {ms:.2f} ms")
    if args.write_regimes:
        REGIMES_PATH.write_text(json.dumps(regime_table(scored), indent=1) + "\n")
        print(f"wrote {REGIMES_PATH}")
    missed = check(scored, ms)
    print("\ncheck: " + ("PASS" if not missed else "FAIL: " + "; ".join(missed)))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
