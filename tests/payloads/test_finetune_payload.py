"""Real CPU fine-tunes of a tiny random-init Llama through the payload, run as the host would run it.

Why a subprocess: on a GPU host the payload is its own process fed a config file, reporting
only through metrics.jsonl, outputs/ and its exit code; the test holds it to exactly that
contract (no in-process shortcuts that the real launch would not have).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import peft  # noqa: F401  (the worker stack must be installed: make test does it)
import pytest
import trl  # noqa: F401

from tests.helpers.bnb_probe import probe_env, read_report
from tests.helpers.tiny_model import FORMATS, build_tiny_model, make_dataset, make_rows, write_jsonl

PAYLOAD = Path(__file__).resolve().parents[2] / "runners" / "payloads" / "finetune.py"
LOG_KEYS = {"step", "total_steps", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s", "samples_per_s"}

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run_payload(
    job_dir: Path, env_extra: dict[str, str] | None = None, **config: Any
) -> subprocess.CompletedProcess[str]:
    """Write job_config.json into job_dir and run the payload on the CPU, as a launcher would."""
    job_dir.mkdir(parents=True, exist_ok=True)
    cfg = {"max_seq_length": 64, "per_device_batch_size": 8, "gradient_accumulation_steps": 1,
           "learning_rate": 5e-3, "lora_r": 8, "save_steps": 0, **config}  # fmt: skip
    (job_dir / "job_config.json").write_text(json.dumps(cfg))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true",
           "TOKENIZERS_PARALLELISM": "false", **(env_extra or {})}  # fmt: skip
    argv = [sys.executable, str(PAYLOAD), "--config", str(job_dir / "job_config.json"), "--job-dir", str(job_dir)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, env=env)


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def check_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"payload failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


@pytest.mark.parametrize("fmt", FORMATS)
def test_twenty_steps_lower_the_loss_in_every_format(tmp_path: Path, tiny_model: Path, fmt: str) -> None:
    data = make_dataset(tmp_path / f"{fmt}.jsonl", fmt)
    job = tmp_path / "job"
    proc = run_payload(job, model=str(tiny_model), dataset=str(data), max_steps=20, eval_fraction=0.125, eval_steps=10)
    check_ok(proc)

    rows = read_metrics(job)
    assert rows[0]["event"] == "start" and rows[0]["backend"] == "trl"
    assert rows[-1]["event"] == "end" and rows[-1]["status"] == "succeeded" and rows[-1]["steps"] == 20
    train_logs = [r for r in rows if r["event"] == "log" and "loss" in r]
    assert [r["step"] for r in train_logs] == list(range(1, 21))
    for r in train_logs:
        assert r.keys() >= LOG_KEYS and r["total_steps"] == 20 and r["tokens_per_s"] > 0 and "eta_s" in r
    losses = [r["loss"] for r in train_logs]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0]
    assert "step 20/20" in proc.stdout  # human-readable progress for output.log

    manifest = json.loads((job / "outputs" / "manifest.json").read_text())
    assert manifest["dataset_format"] == fmt and manifest["backend"] == "trl" and manifest["steps"] == 20
    assert manifest["final_loss"] == losses[-1] and manifest["final_eval_loss"] == evals[-1]
    assert {"torch", "transformers", "trl", "peft"} <= manifest["versions"].keys()
    assert (Path(manifest["paths"]["adapter"]) / "adapter_model.safetensors").exists()


def test_adapter_and_merged_model_load_and_generate(tmp_path: Path, tiny_model: Path) -> None:
    import torch
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data = make_dataset(tmp_path / "alpaca.jsonl", "alpaca")
    job = tmp_path / "job"
    check_ok(run_payload(job, model=str(tiny_model), dataset=str(data), max_steps=10, save_merged=True))
    adapter, merged = job / "outputs" / "adapter", job / "outputs" / "merged"

    tok = AutoTokenizer.from_pretrained(adapter)
    assert tok.chat_template  # the payload's default template travels with the adapter, for serving
    prompt = tok.apply_chat_template([{"role": "user", "content": "What colour is the sky?"}],
                                     tokenize=False, add_generation_prompt=True)  # fmt: skip
    ids = tok(prompt, return_tensors="pt")
    for model in (AutoPeftModelForCausalLM.from_pretrained(adapter), AutoModelForCausalLM.from_pretrained(merged)):
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.pad_token_id)
        assert out.shape[1] > ids["input_ids"].shape[1]


def test_resume_continues_from_the_checkpoint(tmp_path: Path, tiny_model: Path) -> None:
    data = make_dataset(tmp_path / "text.jsonl", "text")
    first, second = tmp_path / "first", tmp_path / "second"
    check_ok(run_payload(first, model=str(tiny_model), dataset=str(data), max_steps=10, save_steps=5))
    assert (first / "outputs" / "checkpoints" / "checkpoint-10" / "trainer_state.json").exists()

    check_ok(run_payload(second, model=str(tiny_model), dataset=str(data), max_steps=20, resume_from=str(first)))
    logs = [r for r in read_metrics(second) if r["event"] == "log" and "loss" in r]
    assert [r["step"] for r in logs] == list(range(11, 21))
    first_losses = [r["loss"] for r in read_metrics(first) if "loss" in r]
    assert logs[0]["loss"] < first_losses[0]  # weights came back, not a fresh start
    manifest = json.loads((second / "outputs" / "manifest.json").read_text())
    assert manifest["resumed_from"].endswith("checkpoint-10") and manifest["steps"] == 20


@pytest.mark.parametrize("avx512bf16", [True, False], ids=["avx512bf16", "no-avx512bf16"])
def test_qlora_trains_on_cpu(tmp_path: Path, tiny_model: Path, avx512bf16: bool) -> None:
    """With an eval pass mid-training, on both of bitsandbytes' CPU paths (tests/helpers/bnb_probe.py).

    Where the CPU has AVX512-BF16, that eval's no-grad forward used to repack every 4-bit weight, and
    the training steps after it ran through an op with no autograd kernel: the gradient through the
    frozen layers was dropped, with only a torch warning to say so."""
    data = make_dataset(tmp_path / "sharegpt.jsonl", "sharegpt")
    job = tmp_path / "job"
    probe = probe_env(avx512bf16, tmp_path / "bnb-probe.json")
    proc = run_payload(
        job,
        probe,
        model=str(tiny_model),
        dataset=str(data),
        method="qlora",
        max_steps=6,
        eval_fraction=0.125,
        eval_steps=3,
    )
    check_ok(proc)
    assert "an autograd kernel was not registered" not in proc.stdout + proc.stderr
    report = read_report(tmp_path / "bnb-probe.json")
    assert report["forced"] is avx512bf16 and report["repacks"] == 0  # the payload keeps the differentiable path
    assert [r["step"] for r in read_metrics(job) if "eval_loss" in r] == [3, 6]
    assert read_metrics(job)[-1]["event"] == "end"
    assert json.loads((job / "outputs" / "manifest.json").read_text())["method"] == "qlora"


def test_malformed_dataset_exits_2_with_one_clear_line(tmp_path: Path, tiny_model: Path) -> None:
    rows = make_rows("alpaca", 8)
    del rows[2]["instruction"]
    data = write_jsonl(tmp_path / "bad.jsonl", rows)
    job = tmp_path / "job"
    proc = run_payload(job, model=str(tiny_model), dataset=str(data), dataset_format="alpaca", max_steps=2)
    message = "dataset row 3 has no 'instruction' field; alpaca needs instruction/output"
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == f"error: {message}"
    last = read_metrics(job)[-1]
    assert last["event"] == "error" and last["kind"] == "bad_input" and last["message"] == message


def test_unknown_config_key_is_refused(tmp_path: Path) -> None:
    proc = run_payload(tmp_path / "job", model="m", dataset="d", lora_rank=8)
    assert proc.returncode == 2 and "unknown config keys: lora_rank" in proc.stderr
