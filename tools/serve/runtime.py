"""A serving MCP server's runtime state: the way to each server job's endpoint, and its API key.

:class:`ServeRuntime` resolves a server job's endpoint *from the controller*: direct on a
local host, through an SSH port forward for SSH hosts, through the login node to the
compute node for SLURM (the node name comes from the job's ``endpoint.json``, written by
the serve payload on the node). Forwards live as long as the MCP server and are rebuilt
lazily after a restart.

The API key is read from the job's 0600 env file when a request needs it; it is never
returned, logged or stored elsewhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from runners.config import HostConfig
from runners.engine import JobEngine
from runners.errors import HostError
from runners.jobdir import parse_env
from runners.transports.base import Transport

__all__ = ["ServeRuntime"]


@dataclass
class _Endpoint:
    url: str
    forward: Any | None = None


class ServeRuntime:
    """Per-server-process state of serving: tunnels and API keys, keyed by job (one per server: ``ToolContext.serve_runtime``)."""

    def __init__(self, engine: JobEngine) -> None:
        self.engine = engine
        self._endpoints: dict[tuple[str, str, int], _Endpoint] = {}
        self._keys: dict[str, str | None] = {}

    async def endpoint_doc(self, host: str, job_dir: str) -> dict[str, Any] | None:
        """The job's endpoint.json (host name, port), once the payload has written it."""
        t = self.engine.transport(host)
        data = await t.read_range(f"{job_dir}/endpoint.json", 0, 65536)
        if not data:
            return None
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None

    async def url_for(self, host: HostConfig, node: str, port: int) -> str:
        """A URL the controller can open for ``node:port`` as seen from ``host`` (tunnelled if needed)."""
        key = (host.name, node, port)
        ep = self._endpoints.get(key)
        if ep is not None:
            return ep.url
        t: Transport = self.engine.transport(host.name)
        if host.transport == "local":
            ep = _Endpoint(url=f"http://{node}:{port}")
        else:
            forward = getattr(t, "forward_local_port", None)
            if forward is None:
                raise HostError(
                    f"The transport of host {host.name!r} cannot forward ports.",
                    "Use an SSH host (runners/transports/ssh.py) for remote servers.",
                )
            fwd = await forward(node, port)
            ep = _Endpoint(url=fwd.url, forward=fwd)
        self._endpoints[key] = ep
        return ep.url

    async def api_key(self, host: str, job_id: str, job_dir: str, name: str = "VLLM_API_KEY") -> str | None:
        """The key (``VLLM_API_KEY``, or the secret ``name``) from the job's 0600 env file; None if absent."""
        if job_id in self._keys:
            return self._keys[job_id]
        data = await self.engine.transport(host).read_range(f"{job_dir}/env", 0, 1 << 20)
        key = parse_env(data.decode("utf-8", errors="replace")).get(name)
        if key is not None:
            self._keys[job_id] = key
        return key

    async def aclose(self) -> None:
        for ep in self._endpoints.values():
            if ep.forward is not None:
                await ep.forward.aclose()
        self._endpoints.clear()
        self._keys.clear()
