"""The stored tool listing (server/tool_cache.py): a second start answers tools/list from it, builds
the real tools on the first other request, and never trusts a listing of other code or config."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from server.app import build_server
from server.tool_cache import CACHE_FILE, listing_key, load_listing
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
ROOT = Path(__file__).resolve().parents[2]


def _dump(tools) -> list[dict]:
    return [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]


async def _first_start(config: Config, state_dir: Path) -> list[dict]:
    app = build_server(state=ToolContext(config=config, state_dir=state_dir))
    assert app.input_models, "no stored listing yet: the tools are built at start"
    async with Client(app) as c:
        listed = (await c.list_tools()).tools
    assert (state_dir / CACHE_FILE).exists()
    return _dump(listed)


async def test_second_start_lists_from_the_store_and_builds_on_first_call(local_config, tmp_path):
    state_dir = tmp_path / "state"
    first = await _first_start(local_config, state_dir)
    assert len(first) == 22

    app = build_server(state=ToolContext(config=local_config, state_dir=state_dir))
    assert app.input_models == {}, "with a stored listing nothing is built before tools/list"
    async with Client(app) as c:
        assert _dump((await c.list_tools()).tools) == first
        assert app.input_models == {}
        res = await c.call_tool("list_gpu_tiers", {"min_memory_gib": 100})
        assert not res.is_error and "B200" in res.structured_content["summary"]
        assert len(app.input_models) == 22
        assert _dump((await c.list_tools()).tools) == first  # the built tools list the same
        bad = await c.call_tool("list_gpu_tiers", {"min_memory": 100})  # the unknown-argument check is live
        assert bad.is_error and "did you mean 'min_memory_gib'" in bad.content[0].text


@pytest.mark.parametrize("first_request", ["resources", "prompts", "templates", "read"])
async def test_resources_and_prompts_build_the_tools_first(local_config, tmp_path, first_request):
    state_dir = tmp_path / "state"
    await _first_start(local_config, state_dir)
    app = build_server(state=ToolContext(config=local_config, state_dir=state_dir))
    async with Client(app) as c:
        if first_request == "resources":
            assert "gpus://tiers" in {str(r.uri) for r in (await c.list_resources()).resources}
        elif first_request == "prompts":
            assert "finetune_serve_evaluate" in {p.name for p in (await c.list_prompts()).prompts}
        elif first_request == "templates":
            templates = (await c.list_resource_templates()).resource_templates
            assert "jobs://{job_id}/log" in {t.uri_template for t in templates}
        else:
            assert json.loads((await c.read_resource("hosts://")).contents[0].text)["hosts"][0]["name"] == "local"
    assert len(app.input_models) == 22


async def test_a_listing_of_another_config_or_a_broken_file_is_not_used(local_config, tmp_path):
    state_dir = tmp_path / "state"
    await _first_start(local_config, state_dir)
    other = Config(
        hosts={"gpu": HostConfig(name="gpu", workdir=str(tmp_path / "w2"), gpus="H100:2")}, default_host="gpu"
    )
    assert build_server(state=ToolContext(config=other, state_dir=state_dir)).input_models  # built at once
    (state_dir / CACHE_FILE).write_text("{not json")
    assert build_server(state=ToolContext(config=local_config, state_dir=state_dir)).input_models
    assert load_listing(state_dir, "any") is None


def test_the_key_follows_every_source_file_and_the_config(tmp_path):
    for pkg in ("server", "tools", "runners"):
        (tmp_path / pkg).mkdir()
        (tmp_path / pkg / "a.py").write_text("x = 1\n")
    base = listing_key("{}", root=tmp_path)
    assert listing_key("{}", root=tmp_path) == base
    assert listing_key('{"hosts": 1}', root=tmp_path) != base
    (tmp_path / "runners" / "a.py").write_text("x = 2\n")
    assert listing_key("{}", root=tmp_path) != base
    (tmp_path / "runners" / "a.py").write_text("x = 1\n")
    (tmp_path / "tools" / "b.py").write_text("")
    assert listing_key("{}", root=tmp_path) != base


def test_over_stdio_the_stored_listing_answers_without_importing_a_surface(tmp_path):
    """A real second process: tools/list answered, and no surface module (nor httpx) loaded by then."""
    env = {**os.environ, "LLM_OPS_MCP_STATE_DIR": str(tmp_path / "state"), "PYTHONPATH": str(ROOT)}
    env["LLM_OPS_MCP_CONFIG"] = ""
    probe = (
        "import sys, anyio\n"
        "from server.app import build_server\n"
        "app = build_server()\n"
        "async def main():\n"
        "    tools = await app.list_tools()\n"
        "    loaded = sorted(m for m in sys.modules if m.startswith('server.surface_') or m == 'httpx')\n"
        "    print(len(tools), loaded)\n"
        "anyio.run(main)\n"
    )

    def start() -> str:
        return subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True).stdout

    first = start()
    assert first.startswith("22 [") and "'server.surface_serve'" in first, first  # the first start builds all
    second = start()
    if second.strip() != "22 []":  # a source file edited between the two starts (a live checkout) changes the key
        second = start()
    assert second.strip() == "22 []", second
