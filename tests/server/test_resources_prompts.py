"""Resources (gpus://tiers, hosts://, jobs://{id}/log) and the workflow prompt, through the real client."""

from __future__ import annotations

import json

import pytest
from mcp import Client

from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_resources_and_prompt(mode, local_config, tmp_path):
    app = build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "state"))
    async with Client(app, mode=mode) as c:
        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert {"gpus://tiers", "hosts://"} <= uris
        templates = {t.uri_template for t in (await c.list_resource_templates()).resource_templates}
        assert "jobs://{job_id}/log" in templates
        tiers = json.loads((await c.read_resource("gpus://tiers")).contents[0].text)
        assert any(t["id"] == "B200" and t["memory_vendor_gb"] == 192 for t in tiers)
        hosts = json.loads((await c.read_resource("hosts://")).contents[0].text)
        assert hosts["hosts"][0]["name"] == "local"
        prompts = {p.name for p in (await c.list_prompts()).prompts}
        assert "finetune_serve_evaluate" in prompts
        p = await c.get_prompt("finetune_serve_evaluate", {"model": "meta-llama/Llama-3.2-1B", "dataset": "d.jsonl"})
        text = p.messages[0].content.text
        assert "submit_finetune" in text and "start_vllm_server" in text and "d.jsonl" in text
