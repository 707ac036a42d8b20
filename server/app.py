"""Builds the MCP server: one ``MCPServer`` whose tools come from ``server/surface_*.py``.

Each ``surface_*`` module has ``register(app, state)``; this file only lists them.
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
from server.state import AppState
from server.tool_cache import listing_key, load_listing, save_listing

__all__ = ["SURFACES", "build_server"]

SURFACES = [
    "server.surface_info",
    "server.surface_memory",
    "server.surface_gpu",
    "server.surface_jobs",
    "server.surface_serve",
    "server.surface_finetune",
    "server.surface_workflow",
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


def build_server(config: Config | None = None, state: AppState | None = None) -> MCPServer:
    _configure_logging()
    if state is None:
        state = AppState(config=config or load_config())

    @asynccontextmanager
    async def lifespan(_app: MCPServer) -> AsyncIterator[AppState]:
        try:
            yield state
        finally:
            for svc in list(state.services.values()):
                close = getattr(svc, "aclose", None)
                if close is not None:
                    await close()
            state.services.clear()

    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("llm-ops-mcp")
    except PackageNotFoundError:
        ver = "0.0.0"
    app = OpsServer("llm-ops-mcp", version=ver, instructions=INSTRUCTIONS, lifespan=lifespan, log_level="WARNING")

    def register_all() -> None:
        for mod in SURFACES:
            import_module(mod).register(app, state)

    # A stored listing of this exact code and config answers tools/list; the tools are built on the
    # first request that needs them (server/tool_cache.py says why).
    key = listing_key(state.config.model_dump_json())
    listing = load_listing(state.state_dir, key)
    if listing is not None:
        app.defer_registration(register_all, listing)
    else:
        register_all()
        app.on_listed = lambda tools: save_listing(state.state_dir, key, tools)
    return app
