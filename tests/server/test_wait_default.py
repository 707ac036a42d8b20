"""wait_for_job returns within 45 s unless asked for more (some MCP clients cancel a call after ~60 s).

Through a real in-memory MCP client against a real job: the default wait on a job that runs
longer comes back at 45 s, timed out and with progress notifications on the way; the ceiling
stays 110 s for a client that asks.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio


async def test_default_wait_is_45_s_with_progress(tmp_path: Path) -> None:
    host = HostConfig(name="local", workdir=str(tmp_path / "work"), allow_scripts=True)
    config = Config(hosts={"local": host}, default_host="local")
    app = build_server(state=ToolContext(config=config, state_dir=tmp_path / "state"))
    async with Client(app) as c:
        schema = {t.name: t for t in (await c.list_tools()).tools}["wait_for_job"].input_schema
        field = schema["properties"]["timeout_s"]
        assert field["default"] == 45.0 and field["maximum"] == 110.0
        sub = await c.call_tool("submit_command", {"argv": ["sleep", "120"]})
        job_id = sub.structured_content["job_id"]
        notes: list[str | None] = []

        async def on_progress(_p: float, _total: float | None, message: str | None) -> None:
            notes.append(message)

        t0 = time.monotonic()
        r = await c.call_tool("wait_for_job", {"job_id": job_id}, progress_callback=on_progress)
        took = time.monotonic() - t0
        assert not r.is_error and r.structured_content["timed_out"] and not r.structured_content["reached"]
        assert 44.0 <= took < 50.0, took
        assert len(notes) >= 10 and all(m and job_id in m for m in notes)
        assert "110" in (await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": 111})).content[0].text
        await c.call_tool("cancel_job", {"job_id": job_id, "grace_s": 1})
