"""estimate_memory through a real in-memory MCP client, both protocol modes."""

from __future__ import annotations

import pytest
from mcp import Client

from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio


@pytest.fixture
def app(local_config, tmp_path):
    return build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "state"))


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_estimate_memory_structured(app, mode):
    async with Client(app, mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        t = tools["estimate_memory"]
        assert t.annotations.read_only_hint and t.annotations.idempotent_hint
        r = await c.call_tool("estimate_memory", {"model": "meta-llama/Llama-3.1-70B", "gpu": "H100", "seq_len": 8192})
        assert not r.is_error
        sc = r.structured_content
        assert sc["fits"]["H100"]["min_gpus"] == 2
        assert sc["recommendation"]["tensor_parallel_size"] == 2
        assert set(sc["breakdown_gib"]) >= {
            "weights",
            "kv_cache",
            "activations",
            "logits",
            "gradients",
            "optimizer_states",
            "adapter",
            "cuda_context",
            "allocator_overhead",
        }
        assert sc["summary"]


@pytest.mark.parametrize(
    "args,needle",
    [
        ({"model": "nobody/nothing-7b"}, "catalog"),
        ({"model": "llama-3.1-8b", "seq_len": 0}, "seq_len"),
        ({"model": "llama-3.1-8b", "tensor_parallel_size": 3}, "divide"),
        ({"model": "llama-3.1-8b", "task": "full", "zero_stage": 3}, "num_gpus"),
        ({"model": "llama-3.1-8b", "task": "lora", "quantization": "awq"}, "AWQ"),
    ],
)
async def test_bad_input_is_a_tool_error(app, args, needle, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    async with Client(app, mode="auto") as c:
        r = await c.call_tool("estimate_memory", args)
        assert r.is_error
        text = r.content[0].text
        assert needle.lower() in text.lower() and "Traceback" not in text
