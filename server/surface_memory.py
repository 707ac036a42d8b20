"""Sizing a workload: estimate_memory, and the GPU tiers it is fitted to (list_gpu_tiers, ``gpus://tiers``).

Wiring only: the estimator is ``tools/memory.py``, the catalog ``tools/gpu_tiers.py``.
"""

from __future__ import annotations

import anyio
from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.gpu_tiers import ListGpuTiersInput, ListGpuTiersOutput, list_gpu_tiers, tiers_json
from tools.memory import MemoryResult, estimate_memory
from tools.memory_settings import MemoryInput

__all__ = ["register"]

ESTIMATE = ToolSpec(
    "estimate_memory",
    "Peak GPU memory per device for vLLM serving or LoRA/QLoRA/full fine-tuning, fit per GPU tier, "
    "and a plan (TP, quantization, batch).",
    read_only=True,
    idempotent=True,
    open_world=True,
)
TIERS = ToolSpec(
    "list_gpu_tiers",
    "GPU tiers with memory, bf16/fp8/fp4 support, bandwidth and TFLOPS.",
    read_only=True,
    idempotent=True,
)


async def _estimate(params: MemoryInput) -> MemoryResult:
    # A Hub lookup (online, model not cached) blocks on the network: keep it off the event loop.
    return await anyio.to_thread.run_sync(estimate_memory, params)


def register(app: MCPServer, ctx: ToolContext) -> None:
    add_tool(app, TIERS, ListGpuTiersInput, list_gpu_tiers, ListGpuTiersOutput)
    app.resource(
        "gpus://tiers",
        name="gpu_tiers",
        mime_type="application/json",
        description="The GPU tier catalog (memory, bf16/fp8/fp4, bandwidth, TFLOPS) as JSON.",
    )(tiers_json)
    add_tool(app, ESTIMATE, MemoryInput, _estimate, MemoryResult)
