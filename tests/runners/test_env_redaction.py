"""A secret made on the host (a serve payload's generated VLLM_API_KEY, appended to the job's 0600
env file) is redacted from returned logs, though the controller never saw its value."""

from __future__ import annotations

import pytest

from runners.engine import JobEngine
from runners.jobdir import parse_env, render_env
from runners.spec import JobSpec

pytestmark = pytest.mark.anyio
KEY = "hostmade-key-4f7c9a1b2e"


def test_parse_env_inverts_render_env():
    values = {"A": "plain", "B": "with space and 'quote'", "C": "$(not run)"}
    assert parse_env(render_env(values) + "export torn='unterminated\n") == values


async def test_host_made_key_is_redacted_in_logs(engine: JobEngine, job_host):
    script = f"printf 'export VLLM_API_KEY=%s\\n' {KEY} >> env; echo \"server key is {KEY}\"; touch ready; sleep 30"
    r = await engine.submit(JobSpec(kind="serve", argv=["bash", "-c", script]), job_host.name)
    try:
        view, reached = await engine.wait(r.job_id, "ready", 30)
        assert reached, view
        chunk = await engine.read_log(r.job_id)
        assert "server key is" in chunk.text and KEY not in chunk.text, chunk.text
    finally:
        await engine.cancel(r.job_id, grace_s=1)
    chunk = await engine.read_log(r.job_id)
    assert KEY not in chunk.text
