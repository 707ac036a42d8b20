"""The payload's sharded strategies on CPU ranks (gloo): FSDP full_shard and DeepSpeed ZeRO-3 full
fine-tunes of the tiny Llama under torchrun, through the Trainer's own options.

Both shard the same model the same way, so with one seed they reach the same loss; the FSDP
case always runs (torch ships it), the DeepSpeed one where deepspeed imports (an sdist that
builds without compiling: ``DS_BUILD_OPS=0 pip install deepspeed`` + hjson, py-cpuinfo,
msgpack, ninja, einops; its CPU accelerator uses gloo).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runners.distributed import torchrun_argv
from runners.payloads import finetune as payload_mod
from runners.payloads import shipped_files
from tests.helpers.tiny_model import build_tiny_model, make_dataset


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-sharded")
    return {"model": build_tiny_model(d / "model"), "alpaca": make_dataset(d / "alpaca.jsonl", "alpaca")}


def _run(tiny: dict[str, Path], job: Path, strategy: str, **extra: object) -> list[dict]:
    job.mkdir()
    src = Path(payload_mod.__file__).parent
    for name in shipped_files("finetune"):
        (job / f"{name}.py").write_bytes((src / f"{name}.py").read_bytes())
    cfg = {
        "model": str(tiny["model"]),
        "dataset": str(tiny["alpaca"]),
        "method": "full",
        "max_steps": 8,
        "max_seq_length": 64,
        "learning_rate": 5e-3,
        "save_steps": 0,
        "per_device_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "strategy": strategy,
        **extra,
    }
    (job / "job.json").write_text(json.dumps({"payload_config": cfg}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_DISABLED": "true"}
    r = subprocess.run(
        torchrun_argv(sys.executable, ["finetune.py", "job.json"], nproc_per_node=2),
        cwd=job,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    rows = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["strategy"] == strategy and rows[0]["world_size"] == 2
    assert (job / "outputs" / "model" / "model.safetensors").exists()  # gathered into one full checkpoint
    return rows


def _losses(rows: list[dict]) -> list[float]:
    return [r["loss"] for r in rows if r.get("loss") is not None]


def test_fsdp_full_finetune_on_two_cpu_ranks(tiny, tmp_path: Path):
    rows = _run(tiny, tmp_path / "fsdp", "fsdp")
    losses = _losses(rows)
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert next(r for r in rows if r["event"] == "model_loaded")["load_s"] >= 0
    # every rank's peak host RAM, gathered to rank 0 (a torch process with a model: well over 100 MiB)
    peaks = rows[-1]["host_ram_peak_gib"]
    assert len(peaks) == 2 and all(0.1 < x < 64 for x in peaks), peaks


def test_fsdp_cpu_offload_on_two_cpu_ranks(tiny, tmp_path: Path):
    """FSDP's CPU offload through the Trainer (gloo ranks): trains, and the start record says how
    many CPU threads each rank got for the CPU optimizer step (torchrun alone would pin 1)."""
    rows = _run(tiny, tmp_path / "offload", "fsdp", cpu_offload=True)
    losses = _losses(rows)
    assert len(losses) == 8 and losses[-1] < losses[0], losses
    assert rows[0]["config"]["cpu_offload"] is True
    assert rows[0]["cpu_threads"] == max(1, len(os.sched_getaffinity(0)) // 2)


def test_deepspeed_zero3_matches_fsdp(tiny, tmp_path: Path):
    ds = _losses(_run(tiny, tmp_path / "ds", "deepspeed-zero3"))
    fsdp = _losses(_run(tiny, tmp_path / "fsdp", "fsdp"))
    assert ds[-1] == pytest.approx(fsdp[-1], rel=1e-3), (ds, fsdp)
