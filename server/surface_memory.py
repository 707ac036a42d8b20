"""The estimate_memory tool: wiring only; the model lives in tools/memory.py."""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from server.state import AppState
from tools.memory import MemoryInput, MemoryResult, estimate_memory

__all__ = ["register"]


async def _estimate(params: MemoryInput) -> MemoryResult:
    # A Hub lookup (online, model not cached) blocks on the network: keep it off the event loop.
    return await anyio.to_thread.run_sync(estimate_memory, params)


def register(app: MCPServer, state: AppState) -> None:
    add_tool(
        app,
        ToolSpec(
            "estimate_memory",
            "Peak GPU memory per device for vLLM serving or LoRA/QLoRA/full fine-tuning, fit per GPU tier, "
            "and a plan (TP, quantization, batch).",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        MemoryInput,
        _estimate,
        MemoryResult,
    )
