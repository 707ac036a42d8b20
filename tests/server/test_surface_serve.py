"""The serving tools through the real MCP client (in-memory, both protocol modes).

The host's ``vllm`` is the STAND-IN server (tests/standin_vllm_server.py); the rest —
planning, flag checks against vLLM 0.26.0's recorded help, the job engine, the serve
payload's readiness, the OpenAI client — is the real code, as an agent would drive it.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.spec import JobSpec
from server.app import build_server
from tests.standin_vllm_server import install_standin
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
MODEL = "Qwen/Qwen2.5-0.5B"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
async def serve_state(tmp_path: Path) -> AsyncIterator[ToolContext]:
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}
    host = HostConfig(name="gpubox", workdir=str(tmp_path / "work"), gpus="H100:1", env=env)
    state = ToolContext(config=Config(hosts={"gpubox": host}, default_host="gpubox"), state_dir=tmp_path / "state")
    yield state
    # A failed assertion must not leave a server running: stop whatever is still active.
    engine = JobEngine(state.config, state.state_dir)
    try:
        for v in await engine.list_jobs():
            if not v.terminal:
                await engine.cancel(v.job_id, grace_s=2)
    finally:
        await engine.aclose()


async def _call(c: Client, name: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await c.call_tool(name, args)
    assert not r.is_error, r.content[0].text
    assert r.structured_content is not None
    return r.structured_content


async def _error(c: Client, name: str, args: dict[str, Any]) -> str:
    r = await c.call_tool(name, args)
    assert r.is_error, r.structured_content
    text = r.content[0].text
    assert "Traceback" not in text
    return text


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_listed_with_annotations(mode: str, serve_state: ToolContext) -> None:
    async with Client(build_server(state=serve_state), mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        for name in ("start_vllm_server", "query_model", "benchmark_server", "stop_vllm_server"):
            assert name in tools and tools[name].output_schema, name
        assert tools["stop_vllm_server"].annotations.destructive_hint is True
        assert tools["start_vllm_server"].annotations.destructive_hint is False
        props = tools["start_vllm_server"].input_schema["properties"]
        assert {"model", "tensor_parallel_size", "lora_adapters", "extra_args", "idempotency_key", "dry_run"} <= set(
            props
        )


@pytest.mark.parametrize("mode", MODES)
async def test_agent_flow_start_wait_query_benchmark_stop(mode: str, serve_state: ToolContext) -> None:
    async with Client(build_server(state=serve_state), mode=mode) as c:
        dry = await _call(c, "start_vllm_server", {"model": MODEL, "dry_run": True, "max_num_seqs": 4})
        assert dry["dry_run"] and dry["command_line"].startswith(f"vllm serve {MODEL}")
        started = await _call(c, "start_vllm_server", {"model": MODEL, "max_num_seqs": 4, "idempotency_key": "k1"})
        job_id = started["job_id"]
        assert started["served_models"] == [MODEL] and started["plan"]["reasons"]
        assert started["endpoint"].startswith("http://127.0.0.1:")
        again = await _call(c, "start_vllm_server", {"model": MODEL, "max_num_seqs": 4, "idempotency_key": "k1"})
        assert again["job_id"] == job_id and again["created"] is False

        waited = await _call(c, "wait_for_job", {"job_id": job_id, "until": "ready", "timeout_s": 60})
        assert waited["reached"] and waited["job"]["state"] == "ready", waited["summary"]

        q = await _call(
            c,
            "query_model",
            {"server_job_id": job_id, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 4},
        )
        assert q["completion_tokens"] == 4 and q["text"]
        b = await _call(
            c,
            "benchmark_server",
            {"server_job_id": job_id, "num_prompts": 6, "input_len": 8, "output_len": 8, "concurrency": 3},
        )
        assert b["completed"] == 6 and b["output_tokens_per_s"] > 0 and b["ttft_ms"]["p50"] is not None
        assert "tok/s" in b["summary"]

        stopped = await _call(c, "stop_vllm_server", {"job_id": job_id, "grace_s": 5})
        assert stopped["job"]["state"] == "cancelled"
        text = await _error(c, "query_model", {"server_job_id": job_id, "prompt": "x"})
        assert "cancelled" in text


@pytest.mark.parametrize("mode", MODES)
async def test_bad_input_is_a_tool_error_that_says_what_to_do(mode: str, serve_state: ToolContext) -> None:
    async with Client(build_server(state=serve_state), mode=mode) as c:
        # a host seen for the first time: the call returns at once and the job checks the flags there
        first = await _call(c, "start_vllm_server", {"model": MODEL, "extra_args": {"max_num_batch_tokens": 1}})
        done = await _call(c, "wait_for_job", {"job_id": first["job_id"], "timeout_s": 60})
        assert done["job"]["state"] == "failed" and done["job"]["metrics"]["kind"] == "unknown_flag"
        assert "--max-num-batched-tokens" in done["job"]["metrics"]["hint"]
        # from then on the flags are known here: refused before anything starts
        text = await _error(c, "start_vllm_server", {"model": MODEL, "extra_args": {"max_num_batch_tokens": 1}})
        assert "has no flag --max-num-batch-tokens" in text and "--max-num-batched-tokens" in text
        text = await _error(c, "start_vllm_server", {"model": "Qwen/Qwen2.5-7B", "tensor_parallel_size": 8})
        assert "does not divide" in text and "[1, 2, 4]" in text
        text = await _error(c, "start_vllm_server", {"model": MODEL, "nodes": 2})
        assert "needs a SLURM host" in text and "nodes=1" in text
        text = await _error(c, "start_vllm_server", {"model": MODEL, "api_key": "sk-abc"})
        assert "api_key" in text and "sk-abc" not in text.split("api_key")[0]
        engine = await serve_state.engine()
        failed = await engine.submit(JobSpec(kind="finetune", argv=["false"]), "gpubox")
        await engine.wait(failed.job_id, until="finished", timeout_s=30)
        text = await _error(
            c, "start_vllm_server", {"model": MODEL, "lora_adapters": [{"name": "ad", "job_id": failed.job_id}]}
        )
        assert "which failed" in text and "rerun the fine-tune" in text
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            text = await _error(c, "start_vllm_server", {"model": MODEL, "port": port})
            assert f"Port {port} is already in use" in text and "port='auto'" in text
        text = await _error(c, "stop_vllm_server", {"job_id": failed.job_id})
        assert "not a server" in text
        listed = await _call(c, "list_jobs", {"kind": "serve"})
        assert listed["count"] == 1  # none of the refused requests started anything (the first was checked there)
