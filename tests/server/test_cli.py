"""The scripted client (`llm-ops-mcp call` / `tools`) and the stdio server it starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters

pytestmark = pytest.mark.anyio


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], capture_output=True, text=True, timeout=120, env=env
    )


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    p = tmp_path / "config.toml"
    p.write_text(f'[hosts.box]\ntransport = "local"\nworkdir = "{tmp_path / "work"}"\ngpus = "RTX5090:2"\n')
    return p


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "LLM_OPS_MCP_STATE_DIR": str(tmp_path / "state")}


async def test_stdio_client_talks_to_real_server(config_file, env):
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve", "--config", str(config_file)], env=env
    )
    for mode in ("auto", "legacy"):
        async with Client(params, mode=mode) as c:
            names = {t.name for t in (await c.list_tools()).tools}
            assert "list_hosts" in names
            r = await c.call_tool("list_hosts", {})
            h = r.structured_content["hosts"][0]
            assert (h["name"], h["gpu_type"], h["gpu_count"]) == ("box", "RTX5090", 2)


def test_call_prints_structured_content(config_file, env):
    p = _cli("call", "list_hosts", "--config", str(config_file), env=env)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["hosts"][0]["name"] == "box"
    assert out["config_source"] == str(config_file)


def test_call_tool_error_exits_1_with_text_on_stderr(config_file, env):
    p = _cli("call", "list_gpu_tiers", "--json", '{"min_memory_gib": -1}', "--config", str(config_file), env=env)
    assert p.returncode == 1
    assert p.stdout == ""
    assert "min_memory_gib" in p.stderr


def test_call_rejects_bad_json(config_file, env):
    p = _cli("call", "list_hosts", "--json", "{nope", env=env)
    assert p.returncode == 2 and "not valid JSON" in p.stderr


def test_tools_lists_one_line_each(config_file, env):
    p = _cli("tools", "--config", str(config_file), env=env)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.strip().splitlines()
    assert any(line.startswith("list_gpu_tiers ") for line in lines)
    assert all(line.split()[0].isidentifier() for line in lines)


def test_serve_with_bad_config_names_file_and_key(tmp_path, env):
    bad = tmp_path / "bad.toml"
    bad.write_text('[hosts.x]\ntransport = "local"\nworkdri = "/tmp"\n')
    p = _cli("serve", "--config", str(bad), env=env)
    assert p.returncode == 2
    assert str(bad) in p.stderr and "hosts.x.workdri" in p.stderr


def test_call_with_a_misspelt_argument_exits_1_naming_the_right_one(config_file, env):
    p = _cli("call", "list_gpu_tiers", "--json", '{"min_memory_gb": 40}', "--config", str(config_file), env=env)
    assert p.returncode == 1 and p.stdout == ""
    assert "list_gpu_tiers has no argument 'min_memory_gb' (did you mean 'min_memory_gib'?)" in p.stderr, p.stderr
