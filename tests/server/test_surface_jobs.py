"""The job tools through a real MCP client (in-memory, both protocol modes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest
from mcp import Client

from runners.config import Config, HostConfig
from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]


def app_for(config: Config, tmp_path: Path):
    return build_server(state=ToolContext(config=config, state_dir=tmp_path / "state"))


async def ok(c: Client, tool: str, args: dict[str, Any], **kw) -> dict[str, Any]:
    r = await c.call_tool(tool, args, **kw)
    assert not r.is_error, r.content[0].text if r.content else r
    assert r.structured_content and r.structured_content["summary"]
    return r.structured_content


async def err(c: Client, tool: str, args: dict[str, Any]) -> str:
    r = await c.call_tool(tool, args)
    assert r.is_error, r.structured_content
    text = r.content[0].text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("mode", MODES)
async def test_submit_follow_logs_and_wait(mode, job_config, tmp_path, monkeypatch):
    monkeypatch.setenv("LLM_OPS_TEST_SECRET", "s3cr3t-value-42")  # the host passes this secret to its jobs
    script = 'for i in $(seq 1 6); do echo "line $i"; sleep 0.15; done; echo "key=$LLM_OPS_TEST_SECRET"'
    async with Client(app_for(job_config, tmp_path), mode=mode) as c:
        sub = await ok(c, "submit_command", {"argv": ["bash", "-c", script], "name": "demo"})
        job_id = sub["job_id"]
        assert sub["created"] and sub["job"]["state"] in ("running", "succeeded")
        # Follow the log by offset until the job is done and the log drained.
        text, offset = "", 0
        for _ in range(200):
            chunk = await ok(c, "get_job_logs", {"job_id": job_id, "offset": offset, "max_bytes": 64})
            text += chunk["text"]
            offset = chunk["next_offset"]
            if chunk["eof"] and chunk["state"] in ("succeeded", "failed"):
                break
            await anyio.sleep(0.05)
        assert [f"line {i}" for i in range(1, 7)] == [ln for ln in text.splitlines() if ln.startswith("line")]
        assert "[REDACTED:LLM_OPS_TEST_SECRET]" in text
        progress: list[tuple[float, float | None, str | None]] = []

        async def on_progress(p: float, total: float | None, message: str | None) -> None:
            progress.append((p, total, message))

        done = await ok(c, "wait_for_job", {"job_id": job_id, "timeout_s": 30}, progress_callback=on_progress)
        assert done["reached"] and not done["timed_out"] and done["job"]["state"] == "succeeded"
        assert progress, "wait_for_job sends progress notifications"
        tail = await ok(c, "get_job_logs", {"job_id": job_id, "tail_lines": 2})
        assert tail["text"] == "line 6\nkey=[REDACTED:LLM_OPS_TEST_SECRET]\n" and tail["truncated"]
        grep = await ok(c, "get_job_logs", {"job_id": job_id, "offset": 0, "grep": "line [35]"})
        assert grep["text"] == "line 3\nline 5\n"
        res = await c.read_resource(f"jobs://{job_id}/log")
        assert "line 6" in res.contents[0].text and "s3cr3t" not in res.contents[0].text
        listed = await ok(c, "list_jobs", {"state": "succeeded", "kind": "command"})
        assert [j["job_id"] for j in listed["jobs"]] == [job_id]
        assert (await ok(c, "list_jobs", {"state": "running"}))["count"] == 0


@pytest.mark.parametrize("mode", MODES)
async def test_wait_times_out_with_status_and_cancel(mode, job_config, tmp_path):
    async with Client(app_for(job_config, tmp_path), mode=mode) as c:
        sub = await ok(c, "submit_command", {"argv": ["sleep", "60"], "idempotency_key": "k-1"})
        again = await ok(c, "submit_command", {"argv": ["sleep", "60"], "idempotency_key": "k-1"})
        assert again["job_id"] == sub["job_id"] and not again["created"]
        w = await ok(c, "wait_for_job", {"job_id": sub["job_id"], "timeout_s": 0.5})
        assert w["timed_out"] and not w["reached"] and w["job"]["state"] == "running"
        r = await ok(c, "wait_for_job", {"job_id": sub["job_id"], "until": "running", "timeout_s": 5})
        assert r["reached"]
        cancelled = await ok(c, "cancel_job", {"job_id": sub["job_id"], "grace_s": 2})
        assert cancelled["state"] == "cancelled" and cancelled["terminal"]
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert tools["cancel_job"].annotations.destructive_hint
        assert tools["get_job_logs"].annotations.read_only_hint


@pytest.mark.parametrize("mode", MODES)
async def test_bad_input_is_a_clear_error(mode, job_config, tmp_path):
    async with Client(app_for(job_config, tmp_path), mode=mode) as c:
        sub = await ok(c, "submit_command", {"argv": ["true"]})
        job_id = sub["job_id"]
        await ok(c, "wait_for_job", {"job_id": job_id, "timeout_s": 10})
        assert "No job" in await err(c, "get_job_status", {"job_id": "command-unknown-1"})
        assert "offset" in await err(c, "get_job_logs", {"job_id": job_id, "offset": -1})
        assert "past the end" in await err(c, "get_job_logs", {"job_id": job_id, "offset": 10**9})
        assert "max_bytes" in await err(c, "get_job_logs", {"job_id": job_id, "max_bytes": 10**9})
        assert "serve jobs" in await err(c, "wait_for_job", {"job_id": job_id, "until": "ready"})
        assert "timeout_s" in await err(c, "wait_for_job", {"job_id": job_id, "timeout_s": 500})
        assert "argv" in await err(c, "submit_command", {"argv": []})
        assert "argv" in await err(c, "submit_command", {"argv": ["--rm"]})
        assert "Unknown host" in await err(c, "submit_command", {"argv": ["true"], "host": "nope"})
        assert "Unknown host" in await err(c, "list_jobs", {"host": "nope"})
        assert "time_limit" in await err(c, "submit_command", {"argv": ["true"], "time_limit": "soon"})
        assert "job_id" in await err(c, "cancel_job", {"job_id": "../../etc"})


async def test_commands_need_allow_scripts(tmp_path):
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path / "w"))})
    async with Client(app_for(cfg, tmp_path)) as c:
        assert "allow_scripts" in await err(c, "submit_command", {"argv": ["true"]})
        dry = await ok(c, "submit_command", {"argv": ["echo", "hi"], "dry_run": True})
        assert dry["dry_run"] and "echo hi" in dry["run_script"]
        assert (await ok(c, "list_jobs", {}))["count"] == 0
