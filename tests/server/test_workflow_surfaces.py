"""The workflow tools of the models, hosts and jobs surfaces through a real MCP client (in-memory, both
protocol modes): wiring, errors, the recorded host overrides."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from runners.host_overrides import load_overrides
from server.app import build_server
from tools.context import ToolContext
from tools.setup_host import MARKER

pytestmark = pytest.mark.anyio
MODES = ["auto", "legacy"]
TOOLS = {"quantize_model", "download_model", "list_cached_models", "setup_host", "submit_script"}


def app_for(tmp_path: Path, **host: object) -> object:
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path / "work"), **host)})  # type: ignore[arg-type]
    return build_server(state=ToolContext(config=cfg, state_dir=tmp_path / "state"))


@pytest.mark.parametrize("mode", MODES)
async def test_tools_are_listed_with_annotations(mode: str, tmp_path: Path) -> None:
    async with Client(app_for(tmp_path), mode=mode) as c:
        tools = {t.name: t for t in (await c.list_tools()).tools}
        assert set(tools) >= TOOLS
        assert tools["list_cached_models"].annotations.read_only_hint is True
        assert tools["quantize_model"].output_schema is not None


@pytest.mark.parametrize("mode", MODES)
async def test_bad_requests_are_tool_errors_that_say_what_to_do(mode: str, tmp_path: Path) -> None:
    async with Client(app_for(tmp_path), mode=mode) as c:
        r = await c.call_tool("quantize_model", {"model": "org/m", "method": "gptq"})
        assert r.is_error and "calibration_dataset" in r.content[0].text and "Fix:" in r.content[0].text
        r = await c.call_tool("submit_script", {"repo": "/srv/r", "script": "a.py"})
        assert r.is_error and "allow_scripts = true" in r.content[0].text
        r = await c.call_tool("submit_script", {"repo": "ext::sh -c id", "script": "a.py"})
        assert r.is_error and "repo" in r.content[0].text


@pytest.mark.parametrize("mode", MODES)
async def test_dry_runs_return_the_script_and_start_nothing(mode: str, tmp_path: Path) -> None:
    async with Client(app_for(tmp_path, allow_scripts=True), mode=mode) as c:
        for name, args in [
            ("quantize_model", {"model": "/m", "method": "bnb-nf4"}),
            ("download_model", {"model": "org/m"}),
            ("submit_script", {"repo": "/srv/r", "script": "a.py", "args": ["x y"]}),
            ("setup_host", {"components": ["vllm"]}),
        ]:
            r = await c.call_tool(name, {**args, "dry_run": True})
            assert not r.is_error, (name, r.content)
            sc = r.structured_content
            sub = sc.get("submit") or sc
            assert sub["dry_run"] is True and sub["run_script"], name
        r = await c.call_tool("list_jobs", {})
        assert not r.is_error and r.structured_content["count"] == 0


@pytest.mark.parametrize("mode", MODES)
async def test_setup_host_adopts_a_ready_env_as_the_hosts_python(mode: str, tmp_path: Path) -> None:
    env = tmp_path / "work" / "envs" / "probe"
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to("/usr/bin/python3")
    args = {"components": [], "extra_packages": ["six==1.17.0"], "python": "3.11", "env_name": "probe"}
    (env / MARKER).write_text(json.dumps({"requirements": ["six==1.17.0"], "python": "3.11"}))
    async with Client(app_for(tmp_path), mode=mode) as c:
        r = await c.call_tool("setup_host", args)
        assert not r.is_error, r.content
        assert r.structured_content["status"] == "ready" and r.structured_content["recorded_as_host_python"]
        hosts = (await c.call_tool("list_hosts", {})).structured_content["hosts"]
        assert hosts[0]["python"] == str(env / "bin" / "python")
    assert load_overrides(tmp_path / "state")["local"].python == str(env / "bin" / "python")
    # A new server (restart) keeps it.
    async with Client(app_for(tmp_path), mode=mode) as c:
        hosts = (await c.call_tool("list_hosts", {})).structured_content["hosts"]
        assert hosts[0]["python"] == str(env / "bin" / "python")
