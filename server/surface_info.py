"""Tools that describe the world: GPU tiers and configured hosts. All read-only."""

from __future__ import annotations

import json

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from runners.accelerators import TIERS, GpuTier
from server.registry import ToolSpec, add_tool
from server.state import AppState
from tools.hosts import ListHostsInput, ListHostsOutput, list_hosts

__all__ = ["register"]


class ListGpuTiersInput(BaseModel):
    min_memory_gib: float | None = Field(None, ge=0, description="Only tiers with at least this much memory.")


class ListGpuTiersOutput(BaseModel):
    tiers: list[GpuTier]
    summary: str


async def list_gpu_tiers(params: ListGpuTiersInput) -> ListGpuTiersOutput:
    tiers = [t for t in TIERS.values() if params.min_memory_gib is None or t.memory_gib >= params.min_memory_gib]
    return ListGpuTiersOutput(
        tiers=tiers, summary=f"{len(tiers)} GPU tiers: " + ", ".join(f"{t.id} {t.memory_gib:g} GiB" for t in tiers)
    )


def register(app: MCPServer, state: AppState) -> None:
    add_tool(
        app,
        ToolSpec(
            "list_gpu_tiers",
            "GPU tiers with memory, bf16/fp8/fp4 support, bandwidth and TFLOPS.",
            read_only=True,
            idempotent=True,
        ),
        ListGpuTiersInput,
        list_gpu_tiers,
        ListGpuTiersOutput,
    )

    @app.resource(
        "gpus://tiers",
        name="gpu_tiers",
        mime_type="application/json",
        description="The GPU tier catalog (memory, bf16/fp8/fp4, bandwidth, TFLOPS) as JSON.",
    )
    def gpu_tiers_resource() -> str:
        return json.dumps([t.model_dump() for t in TIERS.values()], indent=1)

    @app.resource(
        "hosts://",
        name="hosts",
        mime_type="application/json",
        description="The configured hosts (no probing; no secret values) as JSON.",
    )
    async def hosts_resource() -> str:
        out = await list_hosts(state.config, ListHostsInput(check=False))
        return out.model_dump_json(indent=1)

    async def _list_hosts(params: ListHostsInput) -> ListHostsOutput:
        prober = state.services.get("host_prober")
        return await list_hosts(state.config, params, prober)

    add_tool(
        app,
        ToolSpec(
            "list_hosts",
            "Configured hosts (transport, launcher, GPUs, workdir); check=true probes them.",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        ListHostsInput,
        _list_hosts,
        ListHostsOutput,
    )
