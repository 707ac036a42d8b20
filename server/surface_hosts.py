"""Hosts: what is configured (list_hosts, ``hosts://``), what their GPUs do now (get_gpu_status), and
building a pinned environment on one (setup_host).

Wiring only: the functions are ``tools/hosts.py``, ``tools/gpu_status.py`` and ``tools/setup_host.py``.
Registering also registers the config's SSH hosts by name (``proxy_jump`` may name another host of
the file), without importing asyncssh.
"""

from __future__ import annotations

from functools import partial

from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.gpu_status import GpuStatusInput, GpuStatusOutput, get_gpu_status
from tools.hosts import ListHostsInput, ListHostsOutput, list_hosts
from tools.setup_host import SetupHostInput, SetupHostOutput, setup_host

__all__ = ["register"]

LIST_HOSTS = ToolSpec(
    "list_hosts",
    "Configured hosts (transport, launcher, GPUs, workdir); check=true probes them.",
    read_only=True,
    idempotent=True,
    open_world=True,
)
GPU_STATUS = ToolSpec(
    "get_gpu_status",
    "Live GPUs of a host (nvidia-smi): memory used/free, utilization, temperature, processes.",
    read_only=True,
    open_world=True,
)
SETUP_HOST = ToolSpec(
    "setup_host",
    "Build a uv env of pinned vllm/unsloth (or llmcompressor) on a host; rerun when done to adopt it.",
    open_world=True,
    idempotent=True,
)


def register(app: MCPServer, ctx: ToolContext) -> None:
    if any(h.transport == "ssh" for h in ctx.config.hosts.values()):
        from runners.transports.ssh_hosts import register_hosts

        register_hosts(ctx.config)

    @app.resource(
        "hosts://",
        name="hosts",
        mime_type="application/json",
        description="The configured hosts (no probing; no secret values) as JSON.",
    )
    async def hosts_resource() -> str:
        return (await list_hosts(ctx, ListHostsInput(check=False))).model_dump_json(indent=1)

    add_tool(app, LIST_HOSTS, ListHostsInput, partial(list_hosts, ctx), ListHostsOutput)
    add_tool(app, GPU_STATUS, GpuStatusInput, partial(get_gpu_status, ctx), GpuStatusOutput)
    add_tool(app, SETUP_HOST, SetupHostInput, partial(setup_host, ctx), SetupHostOutput)
