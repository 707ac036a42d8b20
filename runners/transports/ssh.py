"""SSH transport: the same jobs on remote hosts, over one pooled asyncssh connection per host.

Why it looks like this:

* **One connection per host, shared.** :class:`SSHTransport` objects are cheap views
  on the per-event-loop pool of ``runners/transports/ssh_pool.py`` (why, and how it
  is keyed, is written there).
* **Reconnect, but never re-run.** A dropped connection is noticed (keepalive,
  ``connection_lost``) and the next call reconnects with backoff. An operation is
  retried only when it provably never started (the channel could not be opened)
  or is a read; a command whose connection dropped after it was sent raises
  :class:`HostUnreachable` instead, because running it again could submit a job twice.
* **Host keys are always verified** against known_hosts (the host's file, or
  ``~/.ssh/known_hosts``). There is no switch to turn that off; an unknown or changed
  key is a :class:`HostKeyError` that says how to add the key.
* **Nothing of the user's ssh setup leaks in implicitly**: ``config=None`` (no
  ``~/.ssh/config``), the agent only when no identity file is configured.
* **Errors are translated once**, in ``runners/transports/ssh_errors.py``
  (:func:`~runners.transports.ssh_errors.translate_errors`).
* **Channels are bounded** per host (``max_channels``): sshd refuses sessions past
  ``MaxSessions`` (10 by default); a semaphore keeps us under it. SFTP (one
  long-lived channel) carries all file access.

Port forwarding (:meth:`SSHTransport.forward_local_port`, the listener in
``runners/transports/forwarding.py``) tunnels a loopback port to an endpoint that is
resolved on the host: ``forward_local_port("node123", 8000)`` on a login node reaches
a compute node the controller cannot see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import shlex
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import asyncssh

from runners.config import HostConfig
from runners.errors import ConfigError
from runners.transports.base import CommandResult, FileStat
from runners.transports.forwarding import PortForward
from runners.transports.ssh_errors import translate_errors
from runners.transports.ssh_pool import Slot, current_pool, pool_key

__all__ = ["SSHTransport"]

log = logging.getLogger("llm_ops_mcp.ssh")
T = TypeVar("T")


def _is_unstarted(e: BaseException) -> bool:
    """The failure happened before a channel existed: the operation provably did not run."""
    return isinstance(e, asyncssh.ChannelOpenError | asyncssh.SFTPNoConnection)


async def _makedirs(sftp: asyncssh.SFTPClient, path: str, attrs: asyncssh.SFTPAttrs) -> None:
    """mkdir -p from the leaf up: one request when the parent exists (asyncssh's walks from /)."""
    try:
        await sftp.mkdir(path, attrs)
        return
    except asyncssh.SFTPNoSuchFile:
        parent = posixpath.dirname(path.rstrip("/"))
        if not parent or parent == path:
            raise
        await _makedirs(sftp, parent, attrs)
    except asyncssh.SFTPError:  # EEXIST arrives as a generic failure in SFTP v3
        if await sftp.isdir(path):
            return
        raise
    try:
        await sftp.mkdir(path, attrs)
    except asyncssh.SFTPError:
        if not await sftp.isdir(path):  # another process made it meanwhile: fine
            raise


class SSHTransport:
    """:class:`runners.transports.base.Transport` over SSH. Cheap to create: the connection is pooled.

    Reads are retried once on a fresh connection when the old one turns out dead;
    commands only when the channel could not even be opened (so never run twice).
    """

    def __init__(self, host: HostConfig) -> None:
        if host.transport != "ssh" or not host.address:
            raise ConfigError(f"Host {host.name!r} is not an ssh host.", 'Set transport = "ssh" and address.')
        self.host = host

    @property
    def _slot(self) -> Slot:
        return current_pool().slot(self.host)

    async def connect(self) -> None:
        """Open (or reuse) the pooled connection now; raises the translated error if it cannot."""
        await self._slot.connection()

    async def _retrying(self, what: str, op: Callable[[], Awaitable[T]], *, idempotent: bool) -> T:
        slot = self._slot
        for attempt in (1, 2):
            with translate_errors(self.host, what):
                try:
                    return await op()
                except (asyncssh.Error, OSError) as e:
                    retry = attempt == 1 and (
                        _is_unstarted(e)
                        or (
                            idempotent
                            and isinstance(e, asyncssh.DisconnectError | asyncssh.SFTPConnectionLost | ConnectionError)
                        )
                    )
                    if not retry:
                        raise
                    log.info("ssh %s: %s hit a dead connection (%s); reconnecting", self.host.name, what, e)
                    slot.mark_dead()
        raise AssertionError("unreachable")  # pragma: no cover

    # -- commands ----------------------------------------------------------------
    async def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 60.0) -> CommandResult:
        """Run argv on the host. The remote side is a shell, so argv is ``shlex.join``-ed, never pasted."""
        args = tuple(str(a) for a in argv)
        command = shlex.join(args)
        slot = self._slot

        async def op() -> CommandResult:
            async with slot.sem:  # a session channel: sshd caps them per connection (MaxSessions)
                conn = await slot.connection()
                res = await conn.run(command, input=input, encoding=None, check=False, timeout=timeout)
            rc = res.exit_status if res.exit_status is not None and res.exit_status >= 0 else -1
            if res.exit_signal:  # killed by a signal: -N, as LocalTransport (subprocess) reports it
                sig = getattr(signal.Signals, f"SIG{res.exit_signal[0]}", None)
                rc = -int(sig) if sig is not None else -1
            out = res.stdout if isinstance(res.stdout, bytes) else (res.stdout or "").encode()
            err = res.stderr if isinstance(res.stderr, bytes) else (res.stderr or "").encode()
            return CommandResult(args, rc, out, err)

        return await self._retrying(f"running {args[0]}", op, idempotent=False)

    # -- files (SFTP) ------------------------------------------------------------
    async def _sftp(self) -> asyncssh.SFTPClient:
        return await self._slot.sftp_client()

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Atomic: a temp file created narrow (a 0600 env file is never readable by others), then renamed."""
        tmp = f"{path}.tmp-{id(data):x}-{time.monotonic_ns():x}"

        async def op() -> None:
            sftp = await self._sftp()
            try:
                attrs = asyncssh.SFTPAttrs(permissions=mode & 0o600)  # narrow first, widen after the write
                f = await sftp.open(tmp, "wb", attrs)
                # Pipelined: sftp-server answers in order, so each pair costs one round trip, not two.
                try:
                    await asyncio.gather(f.write(data), f.chmod(mode))
                except BaseException:
                    await f.close()
                    raise
                await asyncio.gather(f.close(), sftp.posix_rename(tmp, path))
            except BaseException:
                with contextlib.suppress(Exception):
                    await sftp.remove(tmp)
                raise

        await self._retrying(f"writing {path}", op, idempotent=True)

    async def read_range(self, path: str, offset: int, max_bytes: int) -> bytes:
        async def op() -> bytes:
            sftp = await self._sftp()
            try:
                async with sftp.open(path, "rb") as f:
                    data = await f.read(max_bytes, offset)
                    return data if isinstance(data, bytes) else data.encode()
            except asyncssh.SFTPNoSuchFile:
                return b""

        return await self._retrying(f"reading {path}", op, idempotent=True)

    async def stat(self, path: str) -> FileStat | None:
        async def op() -> FileStat | None:
            sftp = await self._sftp()
            try:
                a = await sftp.stat(path)
            except asyncssh.SFTPNoSuchFile:
                return None
            perms = a.permissions or 0
            return FileStat(a.size or 0, float(a.mtime or 0), (perms & 0o170000) == 0o040000, perms & 0o7777)

        return await self._retrying(f"stat {path}", op, idempotent=True)

    async def file_size(self, path: str) -> int | None:
        st = await self.stat(path)
        return None if st is None else st.size

    async def list_dir(self, path: str) -> list[str]:
        async def op() -> list[str]:
            sftp = await self._sftp()
            names = await sftp.listdir(path)
            return sorted(str(n) for n in names if n not in (".", ".."))

        return await self._retrying(f"listing {path}", op, idempotent=True)

    async def exists(self, path: str) -> bool:
        async def op() -> bool:
            return bool(await (await self._sftp()).exists(path))

        return await self._retrying(f"checking {path}", op, idempotent=True)

    async def _home(self) -> str:
        slot = self._slot
        if slot.home is None:

            async def op() -> str:
                return str(await (await self._sftp()).realpath("."))

            slot.home = await self._retrying("finding the home directory", op, idempotent=True)
        return slot.home

    async def expand_path(self, path: str) -> str:
        """``~`` and relative paths resolve against the remote user's home (SFTP starts there)."""
        if path == "~" or path.startswith("~/"):
            path = (await self._home()) + path[1:]
        elif path.startswith("~"):
            raise ConfigError(
                f"Path {path!r}: '~user' is not supported on ssh hosts.", "Use '~/...' or an absolute path."
            )
        elif not path.startswith("/"):
            path = posixpath.join(await self._home(), path)
        return posixpath.normpath(path)

    async def mkdir(self, path: str, mode: int = 0o755, parents: bool = True) -> None:
        async def op() -> None:
            sftp = await self._sftp()
            attrs = asyncssh.SFTPAttrs(permissions=mode)
            if parents:
                await _makedirs(sftp, path, attrs)
            else:
                await sftp.mkdir(path, attrs)

        await self._retrying(f"creating {path}", op, idempotent=parents)

    async def remove(self, path: str, recursive: bool = False) -> None:
        async def op() -> None:
            sftp = await self._sftp()
            try:
                if recursive and await sftp.isdir(path) and not await sftp.islink(path):
                    await sftp.rmtree(path)
                else:
                    await sftp.remove(path)
            except asyncssh.SFTPNoSuchFile:
                return

        await self._retrying(f"removing {path}", op, idempotent=True)

    # -- port forwarding -----------------------------------------------------------
    async def forward_local_port(self, remote_host: str, remote_port: int, local_port: int = 0) -> PortForward:
        """Listen on 127.0.0.1:``local_port`` (0 = any), tunnel to ``remote_host:remote_port`` (host-side).

        ``remote_host`` is resolved *on the host*: ``127.0.0.1`` is the host itself,
        a compute node's name works through a login node.
        """
        if not (0 < remote_port < 65536) or not remote_host or remote_host.startswith("-"):
            raise ConfigError(
                f"Cannot forward to {remote_host!r}:{remote_port}.", "Give a host name and a port 1-65535."
            )
        await self.connect()  # fail now, with the real reason, rather than on the first client
        fwd = PortForward(self, remote_host, remote_port)
        await fwd.start(local_port)
        return fwd

    async def aclose(self) -> None:
        """Close the host's pooled connection (its owner is shutting down); any later call reconnects."""
        slot = current_pool().slots.get(pool_key(self.host))
        if slot is not None:
            await slot.close()
