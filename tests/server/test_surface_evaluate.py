"""evaluate_model and compare_runs through the real MCP client: fine-tune, evaluate base and tuned, compare.

A tiny random-init Llama really trains on the CPU (submit_finetune, LoRA, enough steps that
the tiny world's answer form is learnt every time), then evaluate_model runs the evaluate payload as a
job twice — the fine-tune's base and its output, on the fine-tune's own held-out split and on a
local lm-eval multiple-choice task uploaded with the job — and compare_runs puts the three jobs
side by side with a PNG of the losses. The errors an agent can cause are refused with a sentence.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from server.app import build_server
from tests.helpers.tiny_eval import TASK_NAME, write_colour_task
from tests.helpers.tiny_model import build_tiny_model, finetune_args, make_dataset
from tools.context import ToolContext

# Real training and two lm-eval jobs: minutes on a shared 2-core box, past the suite's 300 s default.
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("tiny-eval")
    return {
        "model": build_tiny_model(d / "model"),
        "alpaca": make_dataset(d / "alpaca.jsonl", "alpaca"),
        "task_files": [str(p) for p in write_colour_task(d / "task")],
    }


@pytest.fixture
def app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path / "work"))}, default_host="local")
    return build_server(state=ToolContext(config=cfg, state_dir=tmp_path / "state"))


async def call(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    assert not r.is_error, r.content[0].text
    return r.structured_content


async def finish(c: Client, job_id: str, rounds: int = 12) -> dict[str, Any]:
    for _ in range(rounds):
        view = (await call(c, "wait_for_job", {"job_id": job_id, "timeout_s": 60}))["job"]
        if view["terminal"]:
            return view
    raise AssertionError(f"{job_id} did not finish")


async def test_finetune_evaluate_base_and_tuned_then_compare(app, tiny):
    ft_args = finetune_args(tiny["model"], tiny["alpaca"], max_steps=40, lora_r=8, per_device_batch_size=8,
                            gradient_accumulation_steps=1, save_steps=0, eval_fraction=0.125, output_name="colours")  # fmt: skip
    evals = {"tasks": [TASK_NAME], "task_files": tiny["task_files"], "apply_chat_template": True}
    async with Client(app, mode="auto") as c:
        ft = (await call(c, "submit_finetune", ft_args))["job_id"]
        assert (await finish(c, ft))["state"] == "succeeded"

        dry = await call(c, "evaluate_model", {"finetune_job_id": ft, **evals, "dry_run": True})
        assert dry["held_out"] and "held-out" in dry["summary"] and dry["job"] is None

        tuned = await call(c, "evaluate_model", {"finetune_job_id": ft, **evals, "output_name": "tuned"})
        base = await call(c, "evaluate_model", {"finetune_job_id": ft, "use_adapter": False, **evals,
                                                "output_name": "base"})  # fmt: skip
        progress: list[tuple[float, float | None]] = []

        async def on_progress(p: float, total: float | None, msg: str | None) -> None:
            progress.append((p, total))

        for job in (tuned["job_id"], base["job_id"]):
            for _ in range(12):
                r = await c.call_tool("wait_for_job", {"job_id": job, "timeout_s": 60}, progress_callback=on_progress)
                if r.structured_content["job"]["terminal"]:
                    break
            assert r.structured_content["job"]["state"] == "succeeded", r.structured_content
        assert progress

        r = await c.call_tool("compare_runs", {"job_ids": [ft, base["job_id"], tuned["job_id"]]})
        assert not r.is_error, r.content[0].text
        out = r.structured_content
        rows = {row["job_id"]: row for row in out["rows"]}
        b, t, f = rows[base["job_id"]], rows[tuned["job_id"]], rows[ft]
        # the tuned model's loss on the held-out split is the fine-tune's own final eval loss
        assert t["eval_loss"] == pytest.approx(f["eval_loss"], rel=1e-5)
        assert t["perplexity"] < b["perplexity"] / 2, (b, t)
        key = f"{TASK_NAME} acc"
        assert t["scores"][key] >= 0.9 and t["scores"][key] >= b["scores"][key] + 0.3, (b["scores"], t["scores"])
        assert out["best"][key] == tuned["job_id"]
        assert f["tokens_per_s"] and f["final_loss"] and f["wall_time_s"]
        assert "| job |" in out["table"] and key in out["table"]
        images = [x for x in r.content if x.type == "image"]
        assert len(images) == 1 and base64.b64decode(images[0].data)[:8] == b"\x89PNG\r\n\x1a\n"

        status = await call(c, "get_job_status", {"job_id": tuned["job_id"]})
        assert status["metrics"]["event"] == "end" and key.split()[0] in status["metrics"]["summary"]


async def test_unknown_task_fails_the_job_with_the_reason(app, tiny):
    async with Client(app, mode="auto") as c:
        job = (await call(c, "evaluate_model", {"model": str(tiny["model"]), "tasks": ["tiny_colorus"],
                                                "task_files": tiny["task_files"]}))["job_id"]  # fmt: skip
        view = await finish(c, job, rounds=6)
        assert view["state"] == "failed" and view["exit_code"] == 2
        assert "unknown task 'tiny_colorus' (lm-eval 0.4.13); did you mean tiny_colours?" in view["summary"], view[
            "summary"
        ]


async def test_adapter_of_a_failed_finetune_is_refused(app, tiny):
    async with Client(app, mode="auto") as c:
        bad = finetune_args(tiny["model"], "/nonexistent/rows.jsonl", max_steps=2)
        ft = (await call(c, "submit_finetune", bad))["job_id"]
        assert (await finish(c, ft, rounds=6))["state"] == "failed"
        r = await c.call_tool("evaluate_model", {"finetune_job_id": ft, "tasks": [TASK_NAME]})
        assert r.is_error and f"Fine-tune {ft} is failed" in r.content[0].text, r.content[0].text
        assert "no finished adapter" in r.content[0].text


@pytest.mark.parametrize(
    ("args", "words"),
    [
        ({"dataset": "/nonexistent/rows.jsonl"}, "Dataset /nonexistent/rows.jsonl does not exist"),
        ({"tasks": ["x; rm -rf /"]}, "is not an lm-eval task name"),
        ({}, "nothing to evaluate"),
        ({"server_job_id": "serve-1-abc"}, "exactly one of"),
        ({"tasks": [TASK_NAME], "task_files": ["/nonexistent/t.yaml"]}, "Task file /nonexistent/t.yaml does not exist"),
        ({"model": None, "adapter": "/a", "tasks": [TASK_NAME]}, "exactly one of"),
    ],
)
async def test_bad_input_is_refused_before_submission(app, tiny, args, words):
    async with Client(app, mode="auto") as c:
        r = await c.call_tool("evaluate_model", {"model": str(tiny["model"]), **args})
        assert r.is_error and words in r.content[0].text, r.content[0].text
        assert (await call(c, "list_jobs", {}))["jobs"] == []


async def test_the_workflow_prompt_ends_with_evaluate_and_compare(app):
    async with Client(app, mode="auto") as c:
        p = await c.get_prompt("finetune_serve_evaluate", {"model": "m", "dataset": "d.jsonl"})
        text = p.messages[0].content.text
        assert "evaluate_model(finetune_job_id=" in text and "use_adapter=false" in text
        assert text.index("evaluate_model") < text.index("compare_runs(job_ids=")
