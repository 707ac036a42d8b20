"""Distributed fine-tunes through the real MCP client and job engine, on the CPU (gloo).

Two ranks of the tiny Llama under torchrun: the loss goes down, rank 0 alone writes
metrics and outputs, every rank keeps its own log; a crash injected on rank 1 (the
payload honours LLM_OPS_TEST_CRASH_RANK) fails the job with rank 1's error in its
status. The planning cases (DDP vs FSDP chosen by the estimate, refusals) need no job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from runners.errors import DoesNotFit, InvalidInput
from server.app import build_server
from tests.helpers.tiny_model import build_tiny_model, finetune_args, make_dataset
from tools.context import ToolContext
from tools.finetune.inputs import FinetuneInput
from tools.finetune.plan import plan_finetune
from tools.finetune.spec import build_finetune_spec

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-ddp")
    return {"model": build_tiny_model(d / "model"), "alpaca": make_dataset(d / "alpaca.jsonl", "alpaca")}


def _app(tmp_path: Path, env: dict[str, str] | None = None):
    host = HostConfig(name="local", workdir=str(tmp_path / "work"), env={"HF_HUB_OFFLINE": "1", **(env or {})})
    return build_server(
        state=ToolContext(config=Config(hosts={"local": host}, default_host="local"), state_dir=tmp_path / "state")
    )


def _args(tiny: dict[str, Path], **kw: object) -> dict[str, object]:
    base = {"max_steps": 10, "save_steps": 0, "per_device_batch_size": 2, "gradient_accumulation_steps": 1,
            "gpus": 0, "processes_per_node": 2}  # fmt: skip
    return finetune_args(tiny["model"], tiny["alpaca"], **{**base, **kw})


async def _finish(c: Client, job_id: str) -> dict:
    for _ in range(8):
        r = await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 60})
        if r.structured_content["job"]["terminal"]:
            break
    return r.structured_content["job"]


async def test_cpu_ddp_two_ranks_loss_goes_down_rank0_writes(tiny, tmp_path: Path):
    async with Client(_app(tmp_path), mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny))
        assert not r.is_error, r.content[0].text
        out = r.structured_content
        plan = out["plan"]
        assert plan["world_size"] == 2 and plan["strategy"] == "ddp" and plan["backend"] == "trl"
        assert any("strategy auto -> ddp" in n for n in plan["notes"])
        view = await _finish(c, out["job_id"])
        assert view["state"] == "succeeded", view
    job_dir = Path(view["job_dir"])
    assert "torch.distributed.run" in (job_dir / "run.sh").read_text()
    rows = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["event"] == "start" and rows[0]["world_size"] == 2 and rows[0]["strategy"] == "ddp"
    assert {x.get("rank") for x in rows} == {0}  # metrics from rank 0 only
    losses = [x["loss"] for x in rows if x.get("loss") is not None]
    assert len(losses) == 10 and sum(losses[-3:]) < sum(losses[:3]), losses
    manifest = json.loads((job_dir / "outputs" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and manifest["steps"] == 10
    assert (job_dir / "outputs" / "adapter" / "adapter_config.json").exists()
    rank_logs = sorted(p.parent.name for p in (job_dir / "torchrun").rglob("stdout.log"))
    assert rank_logs == ["0", "1"]  # each rank's own log is kept
    log = (job_dir / "output.log").read_text()
    assert log.count("training: 10 steps") == 1  # progress printed once, by rank 0


async def test_crash_on_rank_1_fails_the_job_with_its_error(tiny, tmp_path: Path):
    async with Client(_app(tmp_path, {"LLM_OPS_TEST_CRASH_RANK": "1"}), mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny, max_steps=50))
        assert not r.is_error, r.content[0].text
        view = await _finish(c, r.structured_content["job_id"])
        assert view["state"] == "failed", view
        r = await c.call_tool("get_job_status", {"job_id": view["job_id"]})
        st = r.structured_content
        err = st["error"]
        assert "rank 1" in err["line"] and "injected crash on rank 1" in err["line"], err
        assert st["metrics"]["event"] == "error" and st["metrics"]["rank"] == 1
    log = (Path(view["job_dir"]) / "output.log").read_text()
    assert "Root Cause (first observed failure)" in log and "rank      : 1" in log


# ---- planning (no job) -------------------------------------------------------------------
def _plan(host: HostConfig, **kw: object):
    p = FinetuneInput(dataset="org/data", **kw)
    plan, _ = plan_finetune(p, host)
    return p, plan


def test_auto_picks_ddp_when_a_replica_fits_and_fsdp_when_not(tmp_path: Path):
    h = HostConfig(name="ws", workdir=str(tmp_path), gpus="H100:2")
    _, lora = _plan(h, model="meta-llama/Llama-3.2-1B", method="lora", gpus=2)
    assert lora.strategy == "ddp" and lora.zero_stage == 0 and lora.world_size == 2 and lora.backend == "trl"
    # 8B full fine-tune: FSDP's optimizer step holds 20 B/param/N (fp32 shards, gradients, Adam moments and
    # foreach AdamW's temporary; measured on 2 GPUs with the 3B shape), so 2x H100 is refused with the way out
    # (never a silent switch to an unverified 8-bit optimizer over shards), and 4x H100 fits.
    with pytest.raises(DoesNotFit) as refused:
        _plan(h, model="meta-llama/Llama-3.1-8B", method="full", gpus=2, max_seq_length=2048)
    assert "2x H100 (fsdp)" in str(refused.value) and "cpu_offload=true" in str(refused.value)
    assert "a larger GPU (H200, B200)" in str(refused.value)  # not the A100-80GB: 0.35 GiB more holds nothing
    h4 = HostConfig(name="ws4", workdir=str(tmp_path), gpus="H100:4")
    _, full = _plan(h4, model="meta-llama/Llama-3.1-8B", method="full", gpus=4, max_seq_length=2048)
    assert full.strategy == "fsdp" and full.zero_stage == 3 and full.optimizer == "adamw"
    assert any("does not fit one H100" in n and "zero_stage=3" in n for n in full.notes), full.notes
    assert full.estimated_peak_gib is not None and full.estimated_peak_gib < 80
    p, off = _plan(h, model="meta-llama/Llama-3.1-8B", method="full", gpus=2, max_seq_length=2048, cpu_offload=True)
    assert off.strategy == "fsdp" and off.cpu_offload and off.estimated_peak_gib < full.estimated_peak_gib
    spec = build_finetune_spec(p, h, off, "org/data", None)
    assert spec.payload_config["strategy"] == "fsdp" and spec.payload_config["cpu_offload"] is True
    assert spec.argv is not None and "--nproc-per-node=2" in spec.argv


def test_explicit_strategies_and_slurm_nodes(tmp_path: Path):
    h = HostConfig(name="cl", workdir=str(tmp_path), gpus="H100:4", launcher="slurm")
    p, plan = _plan(
        h,
        model="meta-llama/Llama-3.1-8B",
        method="full",
        gpus=4,
        nodes=2,
        max_seq_length=2048,
        strategy="deepspeed-zero3",
    )
    assert plan.strategy == "deepspeed-zero3" and plan.world_size == 8 and plan.nodes == 2
    assert any("pip install deepspeed" in n for n in plan.notes)
    spec = build_finetune_spec(p, h, plan, "org/data", None)
    assert spec.argv[0] == "srun" and "--nodes=2" in spec.argv and spec.resources.nodes == 2
    assert spec.resources.gpus == 4 and spec.resources.tasks_per_node == 1


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"gpus": 2, "backend": "unsloth"}, "Unsloth"),
        ({"gpus": 1, "nodes": 2}, "one machine"),
        ({"gpus": 1, "strategy": "fsdp"}, "one"),
        ({"gpus": 2, "method": "qlora", "strategy": "fsdp"}, "QLoRA"),
        ({"gpus": 2, "processes_per_node": 3}, "one process per GPU"),
    ],
)
def test_refusals(tmp_path: Path, kw: dict, match: str):
    h = HostConfig(name="ws", workdir=str(tmp_path), gpus="H100:2")
    with pytest.raises(InvalidInput, match=match):
        _plan(h, model="meta-llama/Llama-3.2-1B", **kw)


def test_cpu_offload_with_ddp_is_a_schema_error():
    with pytest.raises(ValueError, match="cpu_offload"):
        FinetuneInput(model="meta-llama/Llama-3.2-1B", dataset="org/data", strategy="ddp", cpu_offload=True)


async def test_cancel_stops_every_rank(tiny, tmp_path: Path):
    """torchrun starts its workers in their own sessions: cancelling the job's process group must
    still stop them (torchrun forwards the TERM to every rank before it exits)."""
    import asyncio
    import os

    async with Client(_app(tmp_path), mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny, max_steps=100000))
        job_id = r.structured_content["job_id"]
        job_dir = Path(r.structured_content["submit"]["job_dir"])
        for _ in range(120):  # until both ranks train (rank 0 has logged a step)
            m = job_dir / "metrics.jsonl"
            if m.exists() and '"event": "log"' in m.read_text():
                break
            await asyncio.sleep(0.5)

        def in_job_dir() -> list[int]:
            pids = []
            for p in Path("/proc").iterdir():
                if p.name.isdigit():
                    try:
                        if os.readlink(p / "cwd") == str(job_dir):
                            pids.append(int(p.name))
                    except OSError:
                        continue
            return pids

        assert len(in_job_dir()) >= 3  # bash run.sh, torchrun, 2 ranks
        r = await c.call_tool("cancel_job", {"job_id": job_id})
        assert not r.is_error
        for _ in range(40):
            if not in_job_dir():
                break
            await asyncio.sleep(0.25)
        assert in_job_dir() == []
        r = await c.call_tool("get_job_status", {"job_id": job_id})
        assert r.structured_content["state"] == "cancelled"
