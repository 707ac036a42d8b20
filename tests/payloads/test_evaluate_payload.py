"""The evaluate payload run as the host runs it, against a tiny Llama really fine-tuned on the CPU.

One LoRA fine-tune (the fine-tune payload, enough steps that the tiny world's answer form is
learnt every time) is shared by the module; each test runs the evaluate payload as its own
process, reporting only through metrics.jsonl, outputs/ and its exit code.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lm_eval  # noqa: F401  (the worker stack must be installed: make test does it)
import pytest

from tests.helpers.tiny_eval import TASK_NAME, write_colour_task
from tests.helpers.tiny_model import build_tiny_model, make_dataset

PAYLOADS = Path(__file__).resolve().parents[2] / "runners" / "payloads"
ENV = {"CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "WANDB_DISABLED": "true",
       "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
# LoRA, 40 steps: the answer form of the tiny world is learnt every time (tests/helpers/tiny_eval.py says why).
FINETUNE = {"max_steps": 40, "learning_rate": 5e-3, "lora_r": 8, "max_seq_length": 64, "per_device_batch_size": 8,
            "gradient_accumulation_steps": 1, "save_steps": 0, "eval_fraction": 0.125, "eval_steps": 20}  # fmt: skip

# Real training and lm-eval in fresh processes: minutes on a shared 2-core box, past the suite's 300 s default.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def run(payload: str, job_dir: Path, **config: Any) -> subprocess.CompletedProcess[str]:
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job_config.json").write_text(json.dumps(config))
    argv = [sys.executable, str(PAYLOADS / f"{payload}.py"), "--config", str(job_dir / "job_config.json"),
            "--job-dir", str(job_dir)]  # fmt: skip
    return subprocess.run(argv, capture_output=True, text=True, timeout=400, env={**os.environ, **ENV})


def rows(job_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"exit {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("eval")
    return {"dir": d, "model": build_tiny_model(d / "model"), "data": make_dataset(d / "alpaca.jsonl", "alpaca")}


@pytest.fixture(scope="module")
def world(tiny: dict[str, Path]) -> dict[str, Path]:
    d = tiny["dir"]
    ok(run("finetune", d / "ft", model=str(tiny["model"]), dataset=str(tiny["data"]), **FINETUNE))
    return {**tiny, "adapter": d / "ft" / "outputs" / "adapter", "ft": d / "ft"}


def evaluate(world: dict[str, Path], name: str, **config: Any) -> tuple[subprocess.CompletedProcess[str], Path]:
    job = world["dir"] / name
    for f in write_colour_task(job):  # the uploaded task files lie flat in the job dir
        assert f.parent == job
    return run("evaluate", job, **config), job


@pytest.fixture(scope="module")
def evaluated(world: dict[str, Path]) -> dict[str, Path]:
    """The base and the adapter, each evaluated once on both: the held-out loss and the local task."""
    both = {"dataset": str(world["data"]), "eval_fraction": 0.125, "max_seq_length": 64, "tasks": [TASK_NAME],
            "apply_chat_template": True}  # fmt: skip
    tuned, tuned_dir = evaluate(world, "tuned", model=str(world["model"]), adapter=str(world["adapter"]), **both)
    base, base_dir = evaluate(world, "base", model=str(world["model"]), **both)
    ok(tuned)
    ok(base)
    return {"tuned": tuned_dir, "base": base_dir}


def test_loss_is_the_finetunes_own_and_lower_after_training(world: dict[str, Path], evaluated: dict[str, Path]) -> None:
    t = json.loads((evaluated["tuned"] / "outputs" / "manifest.json").read_text())
    b = rows(evaluated["base"])[-1]
    # The fine-tune's final eval loss on its held-out split is this job's loss of its adapter: one number.
    ft_end = rows(world["ft"])[-1]
    assert t["loss"]["eval_loss"] == pytest.approx(ft_end["final_eval_loss"], rel=1e-5)
    assert t["loss"]["rows"] == 8 and "held-out" in t["loss"]["rows_used"]
    assert t["loss"]["perplexity"] < b["perplexity"] / 2, (t["loss"], b)
    progress = [r for r in rows(evaluated["tuned"]) if r["event"] == "progress" and r["phase"] == "loss"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == progress[-1]["total_steps"]
    assert b["event"] == "end" and "perplexity" in b["summary"]


def test_lm_eval_local_task_scores_higher_after_finetuning(evaluated: dict[str, Path]) -> None:
    after = rows(evaluated["tuned"])[-1]["scores"][TASK_NAME]["acc,none"]
    before = rows(evaluated["base"])[-1]["scores"][TASK_NAME]["acc,none"]
    assert after >= 0.9 and after >= before + 0.3, (before, after)
    results = json.loads((evaluated["tuned"] / "outputs" / "results.json").read_text())
    assert results["n-samples"][TASK_NAME]["effective"] == 12
    progress = [r for r in rows(evaluated["tuned"]) if r["event"] == "progress" and r["phase"] == "tasks"]
    assert progress[-1]["done"] == progress[-1]["total"] == 12 * 4  # 12 questions x 4 choices
    assert f"{TASK_NAME} acc" in rows(evaluated["tuned"])[-1]["summary"]


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"tasks": ["tiny_colorus"]}, "unknown task 'tiny_colorus' (lm-eval 0.4.13); did you mean tiny_colours?"),
        ({"dataset": "/nonexistent/rows.jsonl"}, "dataset /nonexistent/rows.jsonl does not exist on this host"),
        ({"tasks": ["hellaswag"], "limit": 2}, "not in this host's HF cache and the host is offline"),
        ({"adapter": "/nonexistent/adapter", "dataset": "x.jsonl"}, "has no adapter_config.json"),
        ({"dataset_fromat": "alpaca"}, "unknown config keys: dataset_fromat"),
    ],
    ids=["unknown-task", "missing-dataset", "task-data-offline", "missing-adapter", "typo"],
)
def test_bad_input_exits_2_with_one_clear_line(tiny: dict[str, Path], config: dict[str, Any], words: str) -> None:
    proc, job = evaluate(tiny, f"bad-{abs(hash(words))}", model=str(tiny["model"]), **config)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = rows(job)[-1]
    assert last["event"] == "error" and last["kind"] == "bad_input" and words in last["message"], last
