"""submit_finetune through the real MCP client: a tiny random-init Llama really trains on the CPU.

The model (~125k parameters) and its tokenizer are built by the test; the dataset is
a local JSONL file that the tool uploads into the job. What is checked is what an
agent relies on: the plan, the job's progress, a loss that goes down, the adapter
on disk, resume, cancel, and clear refusals before anything is submitted.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from server.app import build_server
from tests.helpers.tiny_model import build_tiny_model, finetune_args, make_dataset, write_jsonl
from tools.context import ToolContext

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny")
    return {
        "model": build_tiny_model(d / "model"),
        "alpaca": make_dataset(d / "alpaca.jsonl", "alpaca"),
        "messages": make_dataset(d / "messages.jsonl", "messages"),
        "dir": d,
    }


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path / "work"))}, default_host="local")
    return build_server(state=ToolContext(config=cfg, state_dir=tmp_path / "state"))


def _args(tiny: dict[str, Path], **kw: object) -> dict[str, object]:
    return finetune_args(tiny["model"], tiny["alpaca"], **{"max_steps": 20, "save_steps": 10, **kw})


async def test_dry_run_plans_without_submitting(app, tiny):
    async with Client(app, mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny, dry_run=True))
        assert not r.is_error, r.content[0].text
        out = r.structured_content
        plan = out["plan"]
        assert plan["backend"] == "trl" and plan["gpus"] == 0 and plan["dataset_source"] == "upload"
        assert plan["dataset_rows"] == 64 and plan["dataset_format"] == "alpaca"
        assert plan["effective_batch"] >= 16
        assert "finetune.py" in out["submit"]["run_script"]
        job = json.loads(out["submit"]["job_json"])
        assert job["spec"]["payload_config"]["dataset"] == "dataset.jsonl"
        r = await c.call_tool("list_jobs", {})
        assert r.structured_content["jobs"] == []


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_real_cpu_finetune_loss_goes_down_and_resume(app, tiny, mode):
    async with Client(app, mode=mode) as c:
        r = await c.call_tool("submit_finetune", _args(tiny, dataset=str(tiny["messages"]), idempotency_key="k1"))
        assert not r.is_error, r.content[0].text
        job_id = r.structured_content["job_id"]
        r2 = await c.call_tool("submit_finetune", _args(tiny, dataset=str(tiny["messages"]), idempotency_key="k1"))
        assert r2.structured_content["job_id"] == job_id  # same key, same job
        progress: list[float] = []

        async def on_progress(p: float, total: float | None, msg: str | None) -> None:
            progress.append(p)

        for _ in range(6):
            r = await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 60}, progress_callback=on_progress)
            if r.structured_content["job"]["terminal"]:
                break
        view = r.structured_content["job"]
        assert view["state"] == "succeeded", view
        assert view["metrics"] is not None
        r = await c.call_tool("get_job_status", {"job_id": job_id, "plot": True})
        job_dir = Path(r.structured_content["job_dir"])
        images = [b for b in r.content if b.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data)[:8] == b"\x89PNG\r\n\x1a\n"
        rows = [json.loads(x) for x in (job_dir / "metrics.jsonl").read_text().splitlines()]
        losses = [x["loss"] for x in rows if x.get("loss") is not None]
        assert len(losses) >= 10
        assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
        manifest = json.loads((job_dir / "outputs" / "manifest.json").read_text())
        assert manifest["backend"] == "trl"
        assert (job_dir / "outputs" / "adapter" / "adapter_config.json").exists() or any(
            job_dir.joinpath("outputs").rglob("adapter_config.json")
        )
        # resume from the finished job's checkpoints: continues, does not restart at step 0
        r = await c.call_tool(
            "submit_finetune", _args(tiny, dataset=str(tiny["messages"]), max_steps=30, resume_from=job_id)
        )
        assert not r.is_error, r.content[0].text
        job2 = r.structured_content["job_id"]
        for _ in range(6):
            r = await c.call_tool("wait_for_job", {"job_id": job2, "timeout_s": 60})
            if r.structured_content["job"]["terminal"]:
                break
        assert r.structured_content["job"]["state"] == "succeeded", r.structured_content
        dir2 = Path(r.structured_content["job"]["job_dir"])
        steps = [json.loads(x).get("step") for x in (dir2 / "metrics.jsonl").read_text().splitlines()]
        steps = [s for s in steps if isinstance(s, int)]
        assert steps and min(s for s in steps if s > 0) > 20, steps


async def test_cancel_mid_training(app, tiny):
    async with Client(app, mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny, max_steps=100000))
        job_id = r.structured_content["job_id"]
        r = await c.call_tool("wait_for_job", {"job_id": job_id, "until": "running", "timeout_s": 60})
        assert r.structured_content["job"]["state"] == "running"
        r = await c.call_tool("cancel_job", {"job_id": job_id})
        assert not r.is_error
        assert (
            r.structured_content["state"] == "cancelled"
            or r.structured_content.get("job", {}).get("state") == "cancelled"
        )


@pytest.mark.parametrize(
    ("kw", "words"),
    [
        ({"method": "full", "lora_r": 8}, "lora_r"),
        ({"method": "qlora"}, "CUDA GPU"),
        ({"backend": "unsloth"}, "Unsloth needs a CUDA GPU"),
        ({"max_steps": 5, "num_epochs": 1}, "not both"),
        ({"model": "--help"}, "not a Hub id"),
        ({"dataset": "$(touch /tmp/x)"}, "neither a Hub id"),
        ({"target_modules": ["q_proj; rm -rf /"]}, "not a module name"),
    ],
)
async def test_bad_combinations_are_refused_before_submission(app, tiny, kw, words):
    async with Client(app, mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny, **kw))
        assert r.is_error and words in r.content[0].text, r.content[0].text
        r = await c.call_tool("list_jobs", {})
        assert r.structured_content["jobs"] == []


async def test_malformed_dataset_is_refused_with_the_row(app, tiny, tmp_path):
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"instruction": "a", "output": "b"}, {"instruction": "c"}])
    async with Client(app, mode="auto") as c:
        r = await c.call_tool("submit_finetune", _args(tiny, dataset=str(bad), dataset_format="alpaca"))
        assert r.is_error
        assert "row" in r.content[0].text and "output" in r.content[0].text, r.content[0].text


async def test_model_too_big_for_the_gpu_is_refused(tmp_path, tiny, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    host = HostConfig(name="box", workdir=str(tmp_path / "w"), gpus="RTX4090:1")
    app = build_server(state=ToolContext(config=Config(hosts={"box": host}), state_dir=tmp_path / "s"))
    async with Client(app, mode="auto") as c:
        r = await c.call_tool(
            "submit_finetune", _args(tiny, model="meta-llama/Llama-3.1-70B", method="lora", max_seq_length=4096)
        )
        assert r.is_error and "does not fit" in r.content[0].text, r.content[0].text
        r = await c.call_tool(
            "submit_finetune",
            _args(tiny, model="meta-llama/Llama-3.1-8B", method="qlora", max_seq_length=2048, dry_run=True),
        )
        assert not r.is_error, r.content[0].text
        plan = r.structured_content["plan"]
        assert plan["gpu"] == "RTX4090" and plan["estimated_peak_gib"] < plan["gpu_memory_gib"]
        assert plan["backend"] == "unsloth"
