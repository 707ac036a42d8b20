"""The bridge's argument checks, as an agent meets them through a real MCP client (both protocol modes).

Why: the SDK drops argument names a tool doesn't have, so a typo (``epochs=3`` for
``num_epochs``, ``seqlen`` for ``seq_len``) would silently run with the default; and its own
type errors carry pydantic's model names and URLs. Both must come back as one plain sentence.
"""

from __future__ import annotations

import pytest
from mcp import Client

from runners.config import Config
from server.app import build_server
from server.registry import unknown_arguments
from tools.context import ToolContext
from tools.memory_settings import MemoryInput

pytestmark = pytest.mark.anyio
MODEL = "meta-llama/Llama-3.1-8B"


@pytest.fixture(params=["auto", "legacy"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


async def test_unknown_argument_names_are_refused_with_the_closest_valid_ones(
    mode: str, local_config: Config, tmp_path
) -> None:
    async with Client(build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "s")), mode=mode) as c:
        r = await c.call_tool("estimate_memory", {"model": MODEL, "task": "lora", "seqlen": 2048})
        assert r.is_error
        text = r.content[0].text
        assert "estimate_memory has no argument 'seqlen' (did you mean 'seq_len'?)" in text, text
        assert "Fix: use only its arguments: model, task" in text
        r = await c.call_tool("submit_finetune", {"model": MODEL, "dataset": "d.jsonl", "epochs": 3})
        assert r.is_error and "'epochs' (did you mean 'num_epochs'?)" in r.content[0].text, r.content[0].text
        ok = await c.call_tool("estimate_memory", {"model": MODEL, "task": "lora", "seq_len": 2048})
        assert not ok.is_error and ok.structured_content["total_gib"] > 0


async def test_type_errors_are_one_line_per_field_without_pydantic_urls(
    mode: str, local_config: Config, tmp_path
) -> None:
    async with Client(build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "s")), mode=mode) as c:
        r = await c.call_tool("estimate_memory", {"model": MODEL, "task": "train", "seq_len": "abc"})
        assert r.is_error
        text = r.content[0].text
        assert text.startswith("Invalid arguments: "), text
        assert "task: Input should be 'inference', 'lora', 'qlora' or 'full'" in text
        assert "seq_len: Input should be a valid integer" in text
        assert "pydantic.dev" not in text and "Arguments" not in text


def test_unknown_arguments_text():
    assert unknown_arguments("t", MemoryInput, {"model": "x", "task": "lora"}) is None
    text = unknown_arguments("t", MemoryInput, {"zzzz": 1}) or ""
    assert text.startswith("t has no argument 'zzzz'. Fix:"), text
