"""SSH port forwarding: a loopback listener whose every client is tunnelled to an endpoint on the host.

Each accepted connection gets its own direct-tcpip channel, opened through the host's
*current* pooled connection (``ssh_pool.py``), so a forward survives reconnects: after
a drop, new clients simply use the new connection. Made by
:meth:`runners.transports.ssh.SSHTransport.forward_local_port`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

import asyncssh

from runners.errors import HostError
from runners.transports.ssh_pool import current_pool

if TYPE_CHECKING:
    from runners.transports.ssh import SSHTransport

__all__ = ["PortForward"]

log = logging.getLogger("llm_ops_mcp.ssh")


class PortForward:
    """A loopback listener whose every accepted client gets its own direct-tcpip channel.

    The channel is opened through the host's *current* connection, so after a
    reconnect new clients simply use the new one.
    """

    def __init__(self, transport: SSHTransport, remote_host: str, remote_port: int) -> None:
        self.transport = transport
        self.remote_host = remote_host
        self.remote_port = remote_port
        self.local_port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    async def start(self, local_port: int = 0) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", local_port)
        self.local_port = int(self._server.sockets[0].getsockname()[1])

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        slot = current_pool().slot(self.transport.host)
        try:
            # direct-tcpip channels are not sessions (MaxSessions does not count them), so a
            # busy forwarded endpoint never takes a slot that job commands need.
            conn = await slot.connection()
            rreader, rwriter = await conn.open_connection(self.remote_host, self.remote_port)

            async def pump(src: Any, dst: Any) -> None:
                try:
                    while data := await src.read(65536):
                        dst.write(data)
                        await dst.drain()
                finally:
                    with contextlib.suppress(Exception):
                        dst.write_eof()

            await asyncio.gather(pump(reader, rwriter), pump(rreader, writer), return_exceptions=True)
            rwriter.close()
        except asyncio.CancelledError:
            pass  # aclose() ends our own handler tasks; nothing to report
        except (asyncssh.Error, OSError, HostError) as e:
            log.warning(
                "ssh %s: forward to %s:%d failed: %s",
                self.transport.host.name,
                self.remote_host,
                self.remote_port,
                e,
            )
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def aclose(self) -> None:
        if self._server is not None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await self._server.wait_closed()
            self._server = None
