"""SSH transport: the same jobs on remote hosts, over one pooled asyncssh connection per host.

Why it looks like this:

* **One connection per host, shared.** Opening an SSH connection costs a TCP and a
  key exchange (tens of ms on a LAN, far more over a jump host); a status call
  must not pay it. :class:`SSHTransport` objects are cheap views on a per-event-loop
  pool keyed by everything that decides *who* we talk to and *how we verify it*
  (address, port, user, keys, known_hosts, jump), so two configs that differ in
  their known_hosts never share a verified connection.
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
* **Errors are translated once**, in :func:`translate_errors`.
* **Channels are bounded** per host (``max_channels``): sshd refuses sessions past
  ``MaxSessions`` (10 by default); a semaphore keeps us under it. SFTP (one
  long-lived channel) carries all file access.

Port forwarding (:meth:`SSHTransport.forward_local_port`) listens on the
controller's loopback and opens a direct-tcpip channel per accepted connection
through the *current* pooled connection, so a forward survives reconnects. The
destination is resolved on the host: ``forward_local_port("node123", 8000)`` on a
login node reaches a compute node the controller cannot see.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import posixpath
import shlex
import signal
import socket
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import asyncssh

from runners.config import HostConfig
from runners.errors import AuthError, CommandFailed, ConfigError, HostError, HostKeyError, HostUnreachable
from runners.ssh_hosts import HOSTS as _HOSTS  # by name, for proxy_jump (no asyncssh there)
from runners.ssh_hosts import register_hosts
from runners.transport import CommandResult, FileStat

__all__ = [
    "KEEPALIVE_COUNT_MAX",
    "KEEPALIVE_INTERVAL_S",
    "PortForward",
    "SSHTransport",
    "close_all",
    "connection_count",
    "register_hosts",
    "translate_errors",
]

log = logging.getLogger("llm_ops_mcp.ssh")

KEEPALIVE_INTERVAL_S = 15.0
KEEPALIVE_COUNT_MAX = 3
# Reconnect delays after a working connection dropped; bounded by the host's connect_timeout_s.
_BACKOFF_S = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)
T = TypeVar("T")

# --------------------------------------------------------------------------- errors


def _known_hosts_path(host: HostConfig) -> Path:
    return Path(host.known_hosts or "~/.ssh/known_hosts").expanduser()


def _where(host: HostConfig) -> str:
    return f"{host.address}:{host.port}"


def _keyscan(host: HostConfig) -> str:
    kh = host.known_hosts or "~/.ssh/known_hosts"
    port = f"-p {host.port} " if host.port != 22 else ""
    addr = shlex.quote(host.address or "")
    login = f"{host.user}@{addr}" if host.user else addr
    return (
        f"`ssh-keyscan {port}{addr} >> {kh}` (then compare the fingerprint with the host's admin), "
        f"or log in once with `ssh {port}{login}` and accept the key"
    )


def _has_pinned_key(host: HostConfig) -> bool:
    """True when known_hosts already holds a key for this host: a mismatch is then a *changed* key."""
    try:
        kh = asyncssh.read_known_hosts(str(_known_hosts_path(host)))
        port = host.port if host.port != 22 else None
        trusted = kh.match(host.address or "", "", port)[0]
        return bool(trusted)
    except (OSError, ValueError, asyncssh.Error):
        return False


@contextlib.contextmanager
def translate_errors(host: HostConfig, what: str) -> Iterator[None]:
    """The one place where asyncssh/socket errors become :mod:`runners.errors` types, each with a fix."""
    where = _where(host)
    try:
        yield
    except (HostError, ConfigError):
        raise
    except asyncssh.HostKeyNotVerifiable as e:
        if _has_pinned_key(host):
            raise HostKeyError(
                f"The SSH host key of {host.name} ({where}) does not match the one in "
                f"{_known_hosts_path(host)}: it changed, or someone is in between. Refused.",
                f"If the host was reinstalled, confirm the new fingerprint with its admin, remove the old "
                f"entry with `ssh-keygen -R '[{host.address}]:{host.port}' -f {_known_hosts_path(host)}`, "
                f"then add the new one: {_keyscan(host)}.",
            ) from e
        raise HostKeyError(
            f"The SSH host key of {host.name} ({where}) is not in {_known_hosts_path(host)}; "
            "host keys are always verified.",
            f"Add it: {_keyscan(host)}.",
        ) from e
    except asyncssh.PermissionDenied as e:
        ident = host.identity_file or "the SSH agent / default keys"
        raise AuthError(
            f"{host.user or 'the user'}@{where} refused our key ({ident}).",
            "Check that identity_file is right and that its public key is in the host's "
            "~/.ssh/authorized_keys (ssh-copy-id), and that 'user' is right.",
        ) from e
    except asyncssh.KeyImportError as e:
        raise AuthError(
            f"Cannot load the SSH key for {host.name}: {e}.",
            "identity_file must be an unencrypted OpenSSH private key; or leave it unset to use the SSH agent.",
        ) from e
    except ConnectionRefusedError as e:
        raise HostUnreachable(
            f"{host.name} ({where}) refused the connection: nothing listens on port {host.port}.",
            "Check address and port in the config and that sshd runs on the host.",
        ) from e
    except socket.gaierror as e:
        raise HostUnreachable(
            f"Cannot resolve {host.address!r} for host {host.name}: {e.strerror}.",
            "Check 'address' (a typo?) and this machine's DNS / VPN.",
        ) from e
    except asyncssh.ProcessError as e:  # asyncssh.TimeoutError of a command; before TimeoutError (a subclass)
        raise CommandFailed(f"{what} on {host.name} did not finish in time.", "The host may be overloaded.") from e
    except TimeoutError as e:  # asyncio.TimeoutError is TimeoutError; also asyncssh's connect_timeout
        raise HostUnreachable(
            f"{host.name} ({where}) did not answer within {host.connect_timeout_s:g} s ({what}).",
            "Check that the host is up and reachable from here (VPN, firewall, proxy_jump).",
        ) from e
    except (
        asyncssh.ChannelOpenError,
        asyncssh.DisconnectError,
        asyncssh.ConnectionLost,
        asyncssh.SFTPConnectionLost,
        asyncssh.SFTPNoConnection,
        BrokenPipeError,
        ConnectionError,
    ) as e:
        raise HostUnreachable(
            f"The SSH connection to {host.name} ({where}) dropped during {what}: {e}.",
            "Retry: the next call reconnects. Jobs already started keep running on the host.",
        ) from e
    except asyncssh.SFTPError as e:
        raise HostError(f"{what} on {host.name} failed: {e.reason}.", "Check the path and its permissions.") from e
    except OSError as e:
        if isinstance(e, FileNotFoundError) and e.filename:
            raise ConfigError(
                f"Host {host.name}: {e.filename} does not exist.",
                "Fix identity_file / known_hosts in the config.",
            ) from e
        raise HostUnreachable(
            f"Cannot reach {host.name} ({where}): {e.strerror or e}.",
            "Check the network path to the host (VPN, firewall, proxy_jump).",
        ) from e


# --------------------------------------------------------------------------- connection pool


def _identity_files(host: HostConfig) -> tuple[str, ...]:
    ids = host.identity_file
    if ids is None:
        return ()
    return tuple(str(Path(i).expanduser()) for i in ([ids] if isinstance(ids, str) else ids))


def _pool_key(host: HostConfig) -> tuple[Any, ...]:
    return (
        host.address,
        host.port,
        host.user,
        _identity_files(host),
        str(_known_hosts_path(host)),
        host.proxy_jump,
    )


def _parse_jump(spec: str, via: HostConfig) -> HostConfig:
    """``proxy_jump``: a host of the config by name, or ``[user@]host[:port]`` using ``via``'s keys."""
    if spec in _HOSTS:
        jump = _HOSTS[spec]
        if jump.transport != "ssh":
            raise ConfigError(f"Host {via.name}: proxy_jump {spec!r} is not an ssh host.", "Name an ssh host.")
        return jump
    user, _, rest = spec.rpartition("@")
    addr, port = rest, 22
    if rest.startswith("["):  # [v6addr]:port
        addr, _, p = rest[1:].partition("]")
        port = int(p[1:]) if p.startswith(":") else 22
    elif rest.count(":") == 1:
        addr, p = rest.split(":")
        port = int(p)
    if not addr or addr.startswith("-"):
        raise ConfigError(f"Host {via.name}: proxy_jump {spec!r} is not user@host[:port].", "Fix proxy_jump.")
    return via.model_copy(
        update={
            "name": f"{via.name}-jump",
            "address": addr,
            "port": port,
            "user": user or via.user,
            "proxy_jump": None,
        }
    )


class _Client(asyncssh.SSHClient):
    """Tells the pool the moment a connection dies, so the next call reconnects instead of failing."""

    def __init__(self, slot: _Slot) -> None:
        self._slot = weakref.ref(slot)

    def connection_lost(self, exc: Exception | None) -> None:
        slot = self._slot()
        if slot is not None:
            slot.mark_dead(self)


@dataclass(eq=False)
class _Slot:
    """One host's pooled connection, its SFTP session and its channel limit."""

    host: HostConfig
    sem: asyncio.Semaphore
    conn: asyncssh.SSHClientConnection | None = None
    client: _Client | None = None
    sftp: asyncssh.SFTPClient | None = None
    jump: _Slot | None = None
    home: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sftp_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    connects: int = 0
    ever_connected: bool = False

    def mark_dead(self, client: _Client | None = None) -> None:
        if client is not None and client is not self.client:
            return  # an older connection's late notice
        conn = self.conn
        if conn is not None:
            log.info("ssh %s: connection lost; the next call reconnects", self.host.name)
            if client is None:
                conn.close()  # we gave up on it: do not leave a half-dead connection open
        self.conn = self.client = self.sftp = None

    async def connection(self) -> asyncssh.SSHClientConnection:
        conn = self.conn
        if conn is not None:
            return conn
        async with self.lock:
            if self.conn is not None:
                return self.conn
            return await self._connect_with_backoff()

    async def _connect_with_backoff(self) -> asyncssh.SSHClientConnection:
        # First contact fails fast (one attempt): a wrong address must say so at once.
        # After a drop, retry with backoff within connect_timeout_s (sshd restarting, a network blip).
        delays = _BACKOFF_S if self.ever_connected else (0.0,)
        deadline = time.monotonic() + self.host.connect_timeout_s
        last: Exception | None = None
        for delay in delays:
            if delay:
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay)
            try:
                return await self._connect_once()
            except (HostKeyError, AuthError, ConfigError):
                raise  # retrying cannot fix these
            except HostError as e:
                last = e
        assert last is not None
        raise last

    async def _connect_once(self) -> asyncssh.SSHClientConnection:
        host = self.host
        kh = _known_hosts_path(host)
        if not kh.exists():
            raise HostKeyError(
                f"known_hosts file {kh} does not exist, so the key of {host.name} cannot be verified.",
                f"Create it with the host's key: {_keyscan(host)}.",
            )
        tunnel: asyncssh.SSHClientConnection | None = None
        if self.jump is not None:
            tunnel = await self.jump.connection()
        ids = _identity_files(host)
        options: dict[str, Any] = {
            "port": host.port,
            "known_hosts": str(kh),
            "config": None,  # never read ~/.ssh/config: the TOML file is the whole truth
            "connect_timeout": host.connect_timeout_s,
            "keepalive_interval": KEEPALIVE_INTERVAL_S,
            "keepalive_count_max": KEEPALIVE_COUNT_MAX,
        }
        if host.user:
            options["username"] = host.user
        if ids:
            options["client_keys"] = list(ids)
            options["agent_path"] = None  # the configured key, and only it
        if tunnel is not None:
            options["tunnel"] = tunnel
        client = _Client(self)
        with translate_errors(host, "connect"):
            conn = await asyncssh.connect(host.address, client_factory=lambda: client, **options)
        self.conn, self.client, self.sftp = conn, client, None
        self.connects += 1
        self.ever_connected = True
        log.info("ssh %s: connected (%s, connection #%d)", host.name, _where(host), self.connects)
        return conn

    async def sftp_client(self) -> asyncssh.SFTPClient:
        """The connection's one SFTP session, opened by the first caller while the others wait.

        Why the lock: callers that arrive together while there is no session would each open
        one, and every SFTP session is a session channel that sshd counts against MaxSessions
        (10 by default): 24 concurrent submits over a fresh connection were refused
        ("Session request failed") by a stock sshd.
        """
        conn = await self.connection()
        if self.sftp is not None and self.conn is conn:
            return self.sftp
        async with self.sftp_lock:
            if self.sftp is not None and self.conn is conn:
                return self.sftp
            sftp = await conn.start_sftp_client()  # errors translated by the caller, which may retry
            if self.conn is conn:
                self.sftp = sftp
            return sftp

    async def close(self) -> None:
        conn, self.conn, self.client, self.sftp = self.conn, None, None, None
        if conn is not None:
            conn.close()
            with contextlib.suppress(Exception):
                await conn.wait_closed()


class _Pool:
    """The slots of one event loop (asyncssh objects belong to the loop that made them)."""

    def __init__(self) -> None:
        self.slots: dict[tuple[Any, ...], _Slot] = {}

    def slot(self, host: HostConfig) -> _Slot:
        key = _pool_key(host)
        s = self.slots.get(key)
        if s is None:
            jump = self.slot(_parse_jump(host.proxy_jump, host)) if host.proxy_jump else None
            s = _Slot(host=host, sem=asyncio.Semaphore(host.max_channels), jump=jump)
            self.slots[key] = s
        return s


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


def _pool() -> _Pool:
    loop = asyncio.get_running_loop()
    p = _POOLS.get(loop)
    if p is None:
        p = _POOLS[loop] = _Pool()
    return p


def connection_count(host: HostConfig) -> int:
    """How many SSH connections this event loop has opened to ``host`` so far (tests, bench)."""
    s = _pool().slots.get(_pool_key(host))
    return s.connects if s is not None else 0


async def close_all() -> None:
    """Close every pooled connection of the running loop (server shutdown, test teardown)."""
    pool = _pool()
    slots = list(pool.slots.values())
    pool.slots.clear()
    # Close targets before the jump hosts they tunnel through.
    for s in sorted(slots, key=lambda s: s.jump is None):
        await s.close()


# --------------------------------------------------------------------------- transport


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
    """:class:`runners.transport.Transport` over SSH. Cheap to create: the connection is pooled.

    Reads are retried once on a fresh connection when the old one turns out dead;
    commands only when the channel could not even be opened (so never run twice).
    """

    def __init__(self, host: HostConfig) -> None:
        if host.transport != "ssh" or not host.address:
            raise ConfigError(f"Host {host.name!r} is not an ssh host.", 'Set transport = "ssh" and address.')
        self.host = host

    @property
    def _slot(self) -> _Slot:
        return _pool().slot(self.host)

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
        slot = _pool().slots.get(_pool_key(self.host))
        if slot is not None:
            await slot.close()


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
        slot = self.transport._slot
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
