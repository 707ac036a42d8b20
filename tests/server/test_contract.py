"""Every tool held to one contract, through the real in-memory client.

Annotations set, a short description, input and output schemas, a `summary` in
the output, and bad arguments answered with a tool error, never a crash.
New tools are picked up automatically.
"""

from __future__ import annotations

from typing import Any

import pytest
from mcp import Client

from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
MAX_DESCRIPTION = 200


def _resolve(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    ref = prop.get("$ref")
    if ref:
        return schema.get("$defs", {}).get(ref.rsplit("/", 1)[-1], prop)
    return prop


def _scalar_types(schema: dict[str, Any], prop: dict[str, Any]) -> set[str]:
    prop = _resolve(schema, prop)
    if "type" in prop:
        return {prop["type"]} if isinstance(prop["type"], str) else set(prop["type"])
    if "enum" in prop:
        return {"enum"}
    types: set[str] = set()
    for alt in prop.get("anyOf", []) + prop.get("oneOf", []):
        types |= _scalar_types(schema, alt)
    return types


def _bad_arguments(schema: dict[str, Any]) -> dict[str, Any] | None:
    """Arguments that no valid tool can accept: a nested object where only scalars fit."""
    for name, prop in schema.get("properties", {}).items():
        types = _scalar_types(schema, prop)
        if types and types <= {"string", "integer", "number", "boolean", "null", "enum"}:
            return {name: {"definitely": ["not", "valid"]}}
    return None


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_every_tool_meets_the_contract(mode, local_config, tmp_path):
    app = build_server(state=ToolContext(config=local_config, state_dir=tmp_path / "state"))
    async with Client(app, mode=mode) as c:
        tools = (await c.list_tools()).tools
        assert tools
        for t in tools:
            assert t.description and len(t.description) <= MAX_DESCRIPTION, t.name
            a = t.annotations
            assert a is not None, t.name
            assert a.read_only_hint is not None and a.destructive_hint is not None, t.name
            assert not (a.read_only_hint and a.destructive_hint), t.name
            assert t.input_schema.get("type") == "object", t.name
            assert t.output_schema and "summary" in t.output_schema.get("properties", {}), t.name
            if t.name.startswith(("cancel_", "stop_")):
                assert a.destructive_hint, f"{t.name} must be annotated destructive"
            if t.name.startswith("submit_") or t.name.startswith("start_"):
                assert "idempotency_key" in t.input_schema["properties"], t.name
            bad = _bad_arguments(t.input_schema)
            if bad is not None:
                r = await c.call_tool(t.name, bad)
                assert r.is_error, f"{t.name} accepted {bad}"
                assert r.content and r.content[0].text, t.name
                assert "Traceback" not in r.content[0].text, t.name
