"""bench/vllm_bench_serve.py on the CPU: the flags are vLLM 0.26.0's, its result is read right.

No vLLM here, so two recordings stand in for it (tests/data/vllm/):
* ``bench-serve-flags-0.26.0.txt``: the option strings of ``vllm bench serve``, read from the
  argparse parser that vLLM 0.26.0's vllm/benchmarks/serve.py ``add_cli_args`` builds;
* ``bench-serve-result-0.26.0.json``: the file ``--save-result`` wrote when vLLM 0.26.0's own
  benchmark code (vllm/benchmarks/serve.py ``main``) ran this module's argv against
  tests/standin_vllm_server.py (96 prompts of 256 tokens, 64 out, concurrency 8).
The run itself is checked with a STAND-IN ``vllm`` program (it only checks its argv and env
and writes the recorded result), so the plumbing — environment, key, result file, failures —
is real; the measurement is vLLM's on the GPU host (bench/workflow_gpu.py).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

from bench.vllm_bench_serve import (
    COMPARED,
    format_table,
    parse_result,
    run_vllm_bench_serve,
    side_by_side,
    vllm_bench_serve_argv,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "vllm"
FLAGS = {ln for ln in (DATA / "bench-serve-flags-0.26.0.txt").read_text().splitlines() if ln.startswith("--")}
RESULT = json.loads((DATA / "bench-serve-result-0.26.0.json").read_text())
WORKLOAD = {"num_prompts": 96, "input_len": 256, "output_len": 64, "concurrency": 8}


def test_every_flag_is_one_of_vllm_0_26_bench_serve() -> None:
    argv = vllm_bench_serve_argv(
        base_url="http://127.0.0.1:8000", model="base", tokenizer="/m", result_dir="/tmp/r", **WORKLOAD
    )
    assert argv[:3] == ["vllm", "bench", "serve"]
    used = [a for a in argv if a.startswith("--")]
    assert used and not set(used) - FLAGS, set(used) - FLAGS
    opts = dict(itertools.pairwise(argv))
    assert opts["--random-input-len"] == "256" and opts["--random-output-len"] == "64"
    assert opts["--num-prompts"] == "96" and opts["--max-concurrency"] == "8" and opts["--dataset-name"] == "random"
    assert "--ignore-eos" in argv and opts["--random-range-ratio"] == "0.0" and opts["--temperature"] == "0"
    assert opts["--metric-percentiles"] == "50,99" and opts["--model"] == "base" and opts["--tokenizer"] == "/m"


@pytest.mark.parametrize(
    "bad",
    [
        {"base_url": "http://127.0.0.1:8000/v1"},
        {"base_url": "127.0.0.1:8000"},
        {"input_len": 0},
        {"concurrency": -1},
        {"model": "--help"},
    ],
)
def test_bad_arguments_are_refused(bad: dict[str, object]) -> None:
    kw: dict[str, object] = {"base_url": "http://h:1", "model": "m", "tokenizer": None, "result_dir": "/r", **WORKLOAD}
    with pytest.raises(ValueError):
        vllm_bench_serve_argv(**{**kw, **bad})  # type: ignore[arg-type]


def test_result_in_benchmark_server_names() -> None:
    m = parse_result(RESULT)
    assert (
        m["output_tokens_per_s"] == RESULT["output_throughput"] and m["requests_per_s"] == RESULT["request_throughput"]
    )
    assert m["completed"] == 96 and m["total_output_tokens"] == 96 * 64 and m["duration_s"] == RESULT["duration"]
    assert m["mean_input_tokens"] == round(RESULT["total_input_tokens"] / 96, 1)  # vLLM's random text drifts: 256.7
    for k in ("ttft", "tpot", "itl"):
        assert m[f"{k}_ms"] == {
            "mean": RESULT[f"mean_{k}_ms"],
            "p50": RESULT[f"p50_{k}_ms"],
            "p99": RESULT[f"p99_{k}_ms"],
        }
    assert m["output_throughput"] == RESULT["output_throughput"]  # vLLM's own keys stay beside ours


def test_side_by_side_ratios() -> None:
    theirs = parse_result(RESULT)
    ours = {
        "output_tokens_per_s": RESULT["output_throughput"] * 0.98,
        "requests_per_s": RESULT["request_throughput"],
        "mean_input_tokens": 256.0,
        "ttft_ms": {"mean": 20.0, "p50": None, "p99": 100.0},
    }
    rows = {r["metric"]: r for r in side_by_side(ours, theirs)}
    assert list(rows) == list(COMPARED)
    assert rows["output_tokens_per_s"]["ratio"] == 0.98 and rows["requests_per_s"]["ratio"] == 1.0
    assert rows["ttft_ms.p50"]["ratio"] is None and rows["itl_ms.mean"]["ours"] is None
    table = format_table(list(rows.values()))
    assert table.splitlines()[0] == "| metric | benchmark_server | vllm bench serve | ratio |"
    assert "| output_tokens_per_s | 1,207.73 | 1,232.38 | 0.98 |" in table


STUB = """
import json, os, sys
argv = sys.argv[1:]
assert argv[:2] == ["bench", "serve"], argv
opt = dict(zip(argv, argv[1:]))
if os.environ.get("STUB_FAIL"):
    print("RuntimeError: Failed to fetch models", file=sys.stderr)
    sys.exit(1)
assert os.environ.get("OPENAI_API_KEY") == os.environ["STUB_WANT_KEY"], "the key must reach the client"
assert os.environ.get("STUB_FROM_ENV") == "yes"
out = os.path.join(opt["--result-dir"], opt["--result-filename"])
with open(out, "w") as f:
    f.write(open(os.environ["STUB_RESULT"]).read())
"""


def _stub(tmp_path: Path) -> list[str]:
    p = tmp_path / "stub_vllm.py"
    p.write_text(STUB)
    return [sys.executable, str(p)]


def test_run_reads_the_saved_result(tmp_path: Path) -> None:
    env = {"STUB_WANT_KEY": "k3y", "STUB_FROM_ENV": "yes", "STUB_RESULT": str(DATA / "bench-serve-result-0.26.0.json")}
    r = run_vllm_bench_serve(
        base_url="http://127.0.0.1:9",
        model="base",
        api_key="k3y",
        env=env,
        result_dir=tmp_path / "res",
        vllm=_stub(tmp_path),
        timeout_s=60,
        **WORKLOAD,
    )
    assert r["ok"], r
    assert r["output_tokens_per_s"] == RESULT["output_throughput"] and Path(r["result_file"]).is_file()
    assert "k3y" not in json.dumps(r["command"])


def test_a_failed_run_is_reported_not_raised(tmp_path: Path) -> None:
    r = run_vllm_bench_serve(
        base_url="http://127.0.0.1:9",
        model="base",
        env={"STUB_FAIL": "1"},
        result_dir=tmp_path,
        vllm=_stub(tmp_path),
        timeout_s=60,
        **WORKLOAD,
    )
    assert r["ok"] is False and "exit 1" in r["error"] and "Failed to fetch models" in r["output_tail"]
    r = run_vllm_bench_serve(
        base_url="http://127.0.0.1:9", model="base", result_dir=tmp_path, vllm=["/nonexistent/vllm"], **WORKLOAD
    )
    assert r["ok"] is False and "cannot run" in r["error"]
