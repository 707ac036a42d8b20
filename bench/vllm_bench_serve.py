"""Run vLLM's own ``vllm bench serve`` against a server and read its result in benchmark_server's names.

Why: benchmark_server (tools/serve/bench.py) must measure what the field's tool measures.
The GPU workflow bench (bench/workflow_gpu.py) runs both on the same server with the same
lengths, concurrency and number of prompts and prints them side by side with a ratio.
This runs on the GPU host next to vLLM (it is vLLM's CLI), never in the controller.

The flags are vLLM 0.26.0's (vllm/benchmarks/serve.py ``add_cli_args`` and
vllm/benchmarks/datasets/datasets.py ``add_dataset_parser``), chosen to match
benchmark_server:

* ``--dataset-name random --random-input-len N --random-output-len M --random-range-ratio 0``:
  every prompt N tokens (specials included: ``RandomDataset.sample`` subtracts
  ``num_special_tokens_to_add``), every output M tokens; ``--ignore-eos`` (``main_async``
  sets it for the random dataset anyway);
* ``--max-concurrency C --request-rate inf``: all requests queued at once, C in flight;
* ``--temperature 0`` (benchmark_server samples greedily; vLLM's benchmark no longer sets it);
* ``--percentile-metrics ttft,tpot,itl --metric-percentiles 50,99``: the JSON then has
  ``mean_/median_/p50_/p99_{ttft,tpot,itl}_ms`` (``benchmark``'s ``process_one_metric``);
* ``--save-result --result-dir D --result-filename F``: the JSON at D/F
  (``compute_result_filename``);
* ``--model`` is the served name (the request's ``model``), ``--tokenizer`` the model's
  directory (the client tokenizes to build prompts); the API key goes in ``OPENAI_API_KEY``,
  which lib/endpoint_request_func.py ``_get_headers`` sends as a bearer token.

Metric meanings differ in one place: vLLM counts one ITL gap per streamed chunk,
benchmark_server one per token (equal when every chunk carries one token).

Usage (on the GPU host)::

    from bench.vllm_bench_serve import run_vllm_bench_serve, side_by_side, format_table
    theirs = run_vllm_bench_serve(base_url="http://127.0.0.1:8000", model="base",
                                  tokenizer="/models/llama", num_prompts=200, input_len=512,
                                  output_len=128, concurrency=32, api_key=key)
    print(format_table(side_by_side(ours, theirs)))
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "COMPARED",
    "format_table",
    "parse_result",
    "run_vllm_bench_serve",
    "side_by_side",
    "vllm_bench_serve_argv",
]

# (our name, vLLM's key) for the scalar metrics; the three latency groups are built below
_SCALARS = (
    ("completed", "completed"),
    ("failed", "failed"),
    ("duration_s", "duration"),
    ("requests_per_s", "request_throughput"),
    ("output_tokens_per_s", "output_throughput"),
    ("total_output_tokens", "total_output_tokens"),
    ("total_input_tokens", "total_input_tokens"),
)
_LATENCIES = ("ttft", "tpot", "itl")
# what side_by_side compares, in benchmark_server's names ("group.stat" for latencies)
COMPARED = (
    "output_tokens_per_s",
    "requests_per_s",
    "mean_input_tokens",
    "total_output_tokens",
    "ttft_ms.mean",
    "ttft_ms.p50",
    "ttft_ms.p99",
    "tpot_ms.mean",
    "tpot_ms.p50",
    "tpot_ms.p99",
    "itl_ms.mean",
    "itl_ms.p50",
    "itl_ms.p99",
)


def vllm_bench_serve_argv(
    *,
    base_url: str,
    model: str,
    tokenizer: str | None,
    num_prompts: int,
    input_len: int,
    output_len: int,
    concurrency: int,
    result_dir: str | Path,
    result_filename: str = "vllm-bench-serve.json",
    seed: int = 0,
    vllm: Sequence[str] = ("vllm",),
) -> list[str]:
    """The argv of ``vllm bench serve`` for the same workload as benchmark_server (see module doc)."""
    if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+", base_url.rstrip("/")):
        raise ValueError(f"base_url must be http(s)://host:port with no path, not {base_url!r}")
    for name, v in (("num_prompts", num_prompts), ("input_len", input_len), ("output_len", output_len)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{name} must be a positive integer, not {v!r}")
    if not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive integer, not {concurrency!r}")
    if not model or model.startswith("-") or "/" in result_filename or not result_filename.endswith(".json"):
        raise ValueError("model must be a served name, result_filename a plain *.json name")
    argv = [*vllm, "bench", "serve", "--backend", "openai", "--endpoint", "/v1/completions"]
    argv += ["--base-url", base_url.rstrip("/"), "--model", model]
    if tokenizer:
        argv += ["--tokenizer", tokenizer]
    argv += ["--dataset-name", "random", "--random-input-len", str(input_len)]
    argv += ["--random-output-len", str(output_len), "--random-range-ratio", "0.0"]
    argv += ["--num-prompts", str(num_prompts), "--max-concurrency", str(concurrency), "--request-rate", "inf"]
    argv += ["--ignore-eos", "--temperature", "0", "--seed", str(seed)]
    argv += ["--percentile-metrics", "ttft,tpot,itl", "--metric-percentiles", "50,99", "--disable-tqdm"]
    argv += ["--save-result", "--result-dir", str(result_dir), "--result-filename", result_filename]
    return argv


def parse_result(doc: Mapping[str, Any]) -> dict[str, Any]:
    """vLLM's saved result JSON → benchmark_server's metric names (vLLM's own keys kept beside them).

    ``ttft_ms``/``tpot_ms``/``itl_ms`` are ``{"mean", "p50", "p99"}`` like BenchmarkOutput;
    ``mean_input_tokens`` = ``total_input_tokens / completed`` (the server's prompt counts:
    endpoint_request_func.py takes ``prompt_len`` from the stream's usage).
    """
    out: dict[str, Any] = {k: v for k, v in doc.items() if not isinstance(v, (list, dict))}
    for ours, theirs in _SCALARS:
        out[ours] = doc.get(theirs)
    done, total_in = doc.get("completed"), doc.get("total_input_tokens")
    out["mean_input_tokens"] = round(total_in / done, 1) if done and total_in is not None else None
    for m in _LATENCIES:
        p50 = doc.get(f"p50_{m}_ms", doc.get(f"median_{m}_ms"))
        out[f"{m}_ms"] = {"mean": doc.get(f"mean_{m}_ms"), "p50": p50, "p99": doc.get(f"p99_{m}_ms")}
    return out


def run_vllm_bench_serve(
    *,
    base_url: str,
    model: str,
    tokenizer: str | None = None,
    num_prompts: int,
    input_len: int,
    output_len: int,
    concurrency: int,
    api_key: str | None = None,
    env: Mapping[str, str] | None = None,
    result_dir: str | Path | None = None,
    seed: int = 0,
    vllm: Sequence[str] = ("vllm",),
    timeout_s: float = 600.0,
) -> dict[str, Any]:
    """Run ``vllm bench serve`` (blocking; call it in a thread from async code) and parse its result.

    ``env`` is laid over this process's environment for the child (e.g. the PYTHONPATH of a
    carried vLLM). Returns :func:`parse_result`'s dict plus ``ok`` (True), ``command``,
    ``result_file``, ``wall_s``; on failure ``ok`` is False with ``error``, ``returncode``
    and ``output_tail`` (never raises for a failed run, so a bench can record it).
    """
    rdir = Path(result_dir) if result_dir is not None else Path(tempfile.mkdtemp(prefix="vllm-bench-"))
    rdir.mkdir(parents=True, exist_ok=True)
    name = f"vllm-bench-serve-{int(time.time() * 1000)}.json"
    argv = vllm_bench_serve_argv(
        base_url=base_url,
        model=model,
        tokenizer=tokenizer,
        num_prompts=num_prompts,
        input_len=input_len,
        output_len=output_len,
        concurrency=concurrency,
        result_dir=rdir,
        result_filename=name,
        seed=seed,
        vllm=vllm,
    )
    child = {**os.environ, **(env or {})}
    if api_key:
        child["OPENAI_API_KEY"] = api_key
    else:
        child.pop("OPENAI_API_KEY", None)
    t0 = time.monotonic()
    base: dict[str, Any] = {"command": argv, "result_file": str(rdir / name)}
    try:
        proc = subprocess.run(argv, env=child, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired as e:
        tail = (e.stdout or b"")[-4000:] if isinstance(e.stdout, bytes) else (e.stdout or "")[-4000:]
        return {**base, "ok": False, "error": f"timed out after {timeout_s:.0f} s", "output_tail": str(tail)}
    except OSError as e:
        return {**base, "ok": False, "error": f"cannot run {argv[0]}: {e}"}
    wall = round(time.monotonic() - t0, 1)
    tail = (proc.stdout + proc.stderr)[-4000:]
    path = rdir / name
    if proc.returncode != 0 or not path.is_file():
        err = f"exit {proc.returncode}" + ("" if path.is_file() else ", no result file")
        return {**base, "ok": False, "error": err, "returncode": proc.returncode, "output_tail": tail, "wall_s": wall}
    doc = json.loads(path.read_text(encoding="utf-8"))
    return {**parse_result(doc), **base, "ok": True, "wall_s": wall}


def _get(d: Mapping[str, Any], key: str) -> float | None:
    v: Any = d
    for part in key.split("."):
        v = v.get(part) if isinstance(v, Mapping) else None
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def side_by_side(ours: Mapping[str, Any], theirs: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rows ``{"metric", "ours", "vllm", "ratio"}`` (ratio = ours / vLLM's) for :data:`COMPARED`."""
    rows = []
    for key in COMPARED:
        a, b = _get(ours, key), _get(theirs, key)
        ratio = round(a / b, 3) if a is not None and b else None
        rows.append({"metric": key, "ours": a, "vllm": b, "ratio": ratio})
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`side_by_side`'s rows."""

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:,.2f}"

    lines = ["| metric | benchmark_server | vllm bench serve | ratio |", "|---|---|---|---|"]
    lines += [f"| {r['metric']} | {f(r['ours'])} | {f(r['vllm'])} | {f(r['ratio'])} |" for r in rows]
    return "\n".join(lines)
