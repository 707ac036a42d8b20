"""The one typed context every tool is handed: the configuration, the state directory, and
what the server builds lazily for the tools (the job engine, one transport per host, the
serving runtime).

Why a class and not a dict of services: a tool names what it needs as an attribute the type
checker sees (``await ctx.engine()``), nothing is looked up by a string, and the lifetimes are
in one place (:meth:`aclose` at server shutdown). Why lazily: opening the job catalog and
reconciling the active jobs is not free, and ``initialize`` / ``tools/list`` need none of it;
nothing here is built before the first tool call that asks for it.

Hosts are resolved once, by the tool, from its arguments (:meth:`host`); from then on the
:class:`~runners.config.HostConfig` is what is passed around, not its name.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runners.config import APP_NAME, Config, HostConfig

if TYPE_CHECKING:
    from runners.engine import JobEngine
    from runners.transports.base import Transport
    from tools.serve.runtime import ServeRuntime

__all__ = ["ToolContext", "default_state_dir"]


def default_state_dir() -> Path:
    """``$LLM_OPS_MCP_STATE_DIR`` or the platformdirs state dir (holds the job catalog and the stored tool listing)."""
    env = os.environ.get("LLM_OPS_MCP_STATE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # here, not at the top: only a start without $LLM_OPS_MCP_STATE_DIR needs it

    return Path(platformdirs.user_state_dir(APP_NAME))


@dataclass
class ToolContext:
    """What a running server holds for its tools (module docstring). Built once per server, never at import."""

    config: Config
    state_dir: Path = field(default_factory=default_state_dir)
    _engine: JobEngine | None = field(default=None, init=False, repr=False)
    _serve: ServeRuntime | None = field(default=None, init=False, repr=False)
    _transports: dict[str, Transport] = field(default_factory=dict, init=False, repr=False)

    # -- hosts --------------------------------------------------------------------------
    def host(self, name: str | None) -> HostConfig:
        """The host a tool's ``host`` argument names (the default host for None); unknown names raise."""
        return self.config.host(name)

    def transport(self, host: HostConfig) -> Transport:
        """The host's one transport, shared with the engine (so a probe and a job use one SSH connection)."""
        t = self._transports.get(host.name)
        if t is None:
            from runners.factories import make_transport

            t = self._transports[host.name] = make_transport(host)
        return t

    def set_config(self, config: Config) -> None:
        """Replace the configuration, for a running engine too."""
        self.config = config
        if self._engine is not None:
            self._engine.config = config

    def apply_host_overrides(self) -> None:
        """Lay the server's recorded host overrides (``runners/host_overrides.py``: the python that
        setup_host built) over the configuration; at the tools' registration and after each new record."""
        from runners.host_overrides import apply_overrides, load_overrides

        self.set_config(apply_overrides(self.config, load_overrides(self.state_dir)))

    # -- lazily built ---------------------------------------------------------------------
    async def engine(self) -> JobEngine:
        """The server's one job engine, created on first use; active jobs are reconciled once per process."""
        if self._engine is None:
            from runners.engine import JobEngine

            self._engine = JobEngine(self.config, self.state_dir, transport_factory=self.transport)
        await self._engine.ensure_started()
        return self._engine

    async def serve_runtime(self) -> ServeRuntime:
        """The serving runtime (tunnels to servers, their API keys), built on first use."""
        if self._serve is None:
            from tools.serve.runtime import ServeRuntime

            self._serve = ServeRuntime(await self.engine())
        return self._serve

    async def aclose(self) -> None:
        """Close what was built (server shutdown): servers' tunnels, the engine, pooled SSH connections."""
        serve, self._serve = self._serve, None
        engine, self._engine = self._engine, None
        transports = list(self._transports.values())
        self._transports.clear()
        if serve is not None:
            await serve.aclose()
        if engine is not None:
            await engine.aclose()
        for t in transports:  # those no job used (a GPU probe); closing one twice is harmless
            await t.aclose()
        pool = sys.modules.get("runners.transports.ssh_pool")  # never loaded: no connection, no asyncssh import
        if pool is not None:
            await pool.close_all()
