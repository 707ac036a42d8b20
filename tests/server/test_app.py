"""The server through a real MCP client, in-memory, in both protocol modes."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mcp import Client

from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
HEAVY = ["torch", "transformers", "vllm", "unsloth", "trl", "peft", "bitsandbytes", "datasets"]


@pytest.mark.parametrize("mode", MODES)
async def test_lists_foundation_tools(mode, local_config, tmp_path):
    app = build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "state"))
    async with Client(app, mode=mode) as c:
        names = {t.name for t in (await c.list_tools()).tools}
        assert {"list_gpu_tiers", "list_hosts"} <= names


@pytest.mark.parametrize("mode", MODES)
async def test_list_hosts_and_check(mode, local_config, tmp_path):
    app = build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "state"))
    async with Client(app, mode=mode) as c:
        r = await c.call_tool("list_hosts", {})
        assert not r.is_error
        hosts = r.structured_content["hosts"]
        assert [h["name"] for h in hosts] == ["local"]
        assert hosts[0]["is_default"] and hosts[0]["reachable"] is None
        r = await c.call_tool("list_hosts", {"check": True})
        h = r.structured_content["hosts"][0]
        assert h["reachable"] is True
        assert h["detected_gpus"] is not None  # [] on a CPU machine, names on a GPU one
        if not h["detected_gpus"]:
            assert "nvidia-smi" in h["check_note"]


@pytest.mark.parametrize("mode", MODES)
async def test_gpu_tiers_filter_and_bad_input(mode, local_config, tmp_path):
    app = build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "state"))
    async with Client(app, mode=mode) as c:
        r = await c.call_tool("list_gpu_tiers", {"min_memory_gib": 100})
        ids = [t["id"] for t in r.structured_content["tiers"]]
        assert ids == ["H200", "B200"]
        b200 = r.structured_content["tiers"][1]
        assert b200["memory_vendor_gb"] == 192 and b200["fp4"] is True
        r = await c.call_tool("list_gpu_tiers", {"min_memory_gib": -5})
        assert r.is_error and "min_memory_gib" in r.content[0].text


def test_importing_the_server_loads_no_gpu_library():
    code = (
        "import sys; import server.app, server.cli, server.http; from server.app import build_server; build_server();"
        f"heavy={HEAVY!r}; loaded=[m for m in heavy if m in sys.modules]; print(loaded); sys.exit(1 if loaded else 0)"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
