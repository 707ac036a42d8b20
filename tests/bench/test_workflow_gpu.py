"""bench/workflow_gpu.py on the CPU: what the GPU run depends on and a CPU run can't show by itself.

The whole flow runs with ``--standin --part all`` (about 7 minutes on two cores: too slow
for the suite); here the parts that differ on the GPU: the host config keeps the three
package trees apart per job kind, and the ready-time part's stand-in run measures and
writes its rows (the stand-in starts in a second, so it is the product's overhead alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import workflow_gpu as wf
from runners.config import load_config

ROOT = Path(__file__).resolve().parents[2]


def _ctx(tmp_path: Path, standin: bool) -> wf.Ctx:
    args = argparse.Namespace(standin=standin, host_python="/opt/torch/.venv/bin/python", vllm_site="/tmp/vsite",
                              ft_site="/tmp/site", llmc_site="/tmp/llmc", lmeval_site="/tmp/lmeval",
                              budget_s=540.0)  # fmt: skip
    return wf.Ctx(args=args, sizes=wf.STANDIN if standin else wf.GPU, work=tmp_path, out=tmp_path / "out")


def test_gpu_host_config_gives_each_kind_of_job_its_own_tree(tmp_path: Path):
    host = load_config(wf.host_config(_ctx(tmp_path, standin=False)), environ={}).host("gpu")
    assert host.interpreter == "/opt/torch/.venv/bin/python" and host.accelerator is not None
    serve, ft, quant = (host.env_for(k) for k in ("serve", "finetune", "quantize"))
    assert serve["PYTHONPATH"] == "/tmp/vsite" and serve["PATH"].split(":")[:2] == [
        "/tmp/vsite/bin",
        "/opt/torch/.venv/bin",
    ]
    # `import unsloth` patches vLLM when it imports: training must not see the vLLM tree,
    # and llm-compressor's compressed-tensors 0.19 must come before vLLM's 0.17 (which it never sees)
    assert ft["PYTHONPATH"] == "/tmp/site"
    assert quant["PYTHONPATH"] == "/tmp/llmc:/tmp/site"
    assert all(e["HF_HUB_OFFLINE"] == "1" for e in (serve, ft, quant))


def test_gpu_evaluate_jobs_see_lm_eval_vllm_and_the_fine_tune_tree(tmp_path: Path):
    host = load_config(wf.host_config(_ctx(tmp_path, standin=False)), environ={}).host("gpu")
    # lm-eval's own tree first, vLLM for its vllm back-end, the fine-tune tree (TRL, datasets) for the loss
    assert host.env_for("evaluate")["PYTHONPATH"] == "/tmp/lmeval:/tmp/vsite:/tmp/site"
    assert "evaluate" in wf.PARTS
    standin = load_config(wf.host_config(_ctx(tmp_path / "s", standin=True)), environ={}).host("gpu")
    assert "PYTHONPATH" not in standin.env_for("evaluate")  # the CPU venv has lm-eval itself


def test_table_and_nested_errors():
    rows = [{"part": "ready-time", "step": "overhead", "ok": True, "overhead_s": 0.9, "bare_to_ready_s": 84.0}]
    assert "| ready-time | overhead | yes | overhead_s 0.9, bare_to_ready_s 84.0 |" in wf.table(rows)
    inner = wf.StepFailed("x")
    assert wf.first_leaf(BaseExceptionGroup("g", [BaseExceptionGroup("h", [inner])])) is inner


def test_standin_ready_time_writes_tool_and_bare_rows(tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(ROOT / "bench" / "workflow_gpu.py"), "--standin", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    subprocess.run([*base, "--part", "setup"], env=env, check=True, timeout=600, capture_output=True)
    r = subprocess.run([*base, "--part", "ready-time", "--ready-runs", "3"], env=env, timeout=600,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "out" / "workflow_gpu.jsonl").read_text().splitlines()]
    steps = {x["step"]: x for x in rows}
    assert steps["run 1 (bare vllm serve)"]["ok"] and steps["run 1 (bare vllm serve)"]["to_ready_s"] > 0
    tool = steps["run 2 (start_vllm_server)"]
    assert tool["ok"] and tool["ready_mark_to_wait_return_s"] is not None
    assert "--port" in steps["run 1 (bare vllm serve)"]["argv"]
    over = steps["overhead"]
    assert (
        over["tool_runs"]
        and over["bare_runs"]
        and over["overhead_s"] == pytest.approx(over["tool_to_ready_s"] - over["bare_to_ready_s"], abs=0.02)
    )


def test_standin_bench_agreement_alternates_and_stops(tmp_path: Path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    base = [sys.executable, str(ROOT / "bench" / "workflow_gpu.py"), "--standin", "--work", str(tmp_path / "w"),
            "--out", str(tmp_path / "out")]  # fmt: skip
    subprocess.run([*base, "--part", "setup"], env=env, check=True, timeout=600, capture_output=True)
    r = subprocess.run([*base, "--part", "bench-agreement", "--rounds", "2"], env=env, timeout=600,
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(x) for x in (tmp_path / "out" / "workflow_gpu.jsonl").read_text().splitlines()]
    steps = {x["step"]: x for x in rows if x["part"] == "bench-agreement"}
    assert steps["round 0 ours"]["order"] == ["ours", "theirs"]
    assert steps["round 1 ours"]["order"] == ["theirs", "ours"]
    assert steps["round 0 ours"]["ok"] and steps["round 0 ours"]["output_tokens_per_s"] > 0
    assert steps["round 0 ours"]["length_mismatches"] == 0
    assert "skipped" in steps["agreement"] and steps["stop"]["ok"]
