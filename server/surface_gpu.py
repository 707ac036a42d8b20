"""``get_gpu_status``: what a host's GPUs are doing now. Also wires the host prober.

Registering here (not in ``surface_info``) keeps the SSH side optional: the
prober that ``list_hosts(check=true)`` uses for remote hosts, and the SSH pool's
shutdown, are set up by the same module that needs a transport.
"""

from __future__ import annotations

import sys

from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from server.state import AppState
from tools.gpu_status import GpuStatusInput, GpuStatusOutput, get_gpu_status, probe_host

__all__ = ["register"]


class _SSHPoolCloser:
    """Closes pooled SSH connections at server shutdown (the lifespan calls ``aclose`` on services)."""

    async def aclose(self) -> None:
        # never loaded: no connection to close, and no asyncssh import
        pool = sys.modules.get("runners.transports.ssh_pool")
        if pool is not None:
            await pool.close_all()


def register(app: MCPServer, state: AppState) -> None:
    state.services.setdefault("host_prober", probe_host)
    if any(h.transport == "ssh" for h in state.config.hosts.values()):
        from runners.transports.ssh_hosts import register_hosts

        register_hosts(state.config)  # proxy_jump may name another host of the file
        state.services.setdefault("ssh_pool", _SSHPoolCloser())

    async def _get_gpu_status(params: GpuStatusInput) -> GpuStatusOutput:
        return await get_gpu_status(state.config, params)

    add_tool(
        app,
        ToolSpec(
            "get_gpu_status",
            "Live GPUs of a host (nvidia-smi): memory used/free, utilization, temperature, processes.",
            read_only=True,
            open_world=True,
        ),
        GpuStatusInput,
        _get_gpu_status,
        GpuStatusOutput,
    )
