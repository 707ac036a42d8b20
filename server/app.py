"""Builds the MCP server: one ``MCPServer`` whose tools come from ``server/surface_*.py``.

Each ``surface_*`` module has ``register(app, ctx)`` and wires one domain's tools; this file only
lists them. Every tool is handed the one :class:`~tools.context.ToolContext` (configuration, state
directory, and the engine, transports and serving runtime it builds on first use).
The server module imports nothing heavy (a test checks it), and a start whose tool
listing is stored (``server/tool_cache.py``) imports no surface before ``tools/list``
is answered, so it starts about as fast as the SDK's bare server.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import import_module

from mcp.server.mcpserver import MCPServer

from runners.config import Config, load_config
from server.registry import OpsServer
from server.tool_cache import listing_key, load_listing, save_listing
from tools.context import ToolContext

__all__ = ["SURFACES", "build_server"]

SURFACES = [
    "server.surface_hosts",
    "server.surface_memory",
    "server.surface_jobs",
    "server.surface_models",
    "server.surface_finetune",
    "server.surface_serve",
    "server.surface_evaluate",
    "server.surface_prompts",
]

INSTRUCTIONS = (
    "llm-ops-mcp plans and runs LLM work on the user's GPU hosts. Start with list_hosts and "
    "estimate_memory; long work (fine-tunes, quantization, servers, downloads) returns a job_id at "
    "once: follow it with get_job_status, get_job_logs (by offset) and wait_for_job."
)


def _configure_logging() -> None:
    """Logs go to stderr only: on stdio, stdout carries the protocol."""
    root = logging.getLogger("llm_ops_mcp")
    if not root.handlers:
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(h)
        root.setLevel(logging.INFO)
        root.propagate = False  # the SDK configures the root logger too; one line per event is enough


def build_server(config: Config | None = None, state: ToolContext | None = None) -> MCPServer:
    """The server; ``state`` is the tools' context (built from ``config``, or the config file, when omitted)."""
    _configure_logging()
    ctx = state if state is not None else ToolContext(config=config or load_config())

    @asynccontextmanager
    async def lifespan(_app: MCPServer) -> AsyncIterator[ToolContext]:
        try:
            yield ctx
        finally:
            await ctx.aclose()

    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("llm-ops-mcp")
    except PackageNotFoundError:
        ver = "0.0.0"
    app = OpsServer("llm-ops-mcp", version=ver, instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING")

    def register_all() -> None:
        ctx.apply_host_overrides()  # the python setup_host recorded beats the config's (tools see it from here on)
        for mod in SURFACES:
            import_module(mod).register(app, ctx)

    # A stored listing of this exact code and config answers tools/list; the tools are built on the
    # first request that needs them (server/tool_cache.py says why).
    key = listing_key(ctx.config.model_dump_json())
    listing = load_listing(ctx.state_dir, key)
    if listing is not None:
        app.defer_registration(register_all, listing)
    else:
        register_all()
        app.on_listed = lambda tools: save_listing(ctx.state_dir, key, tools)
    return app
