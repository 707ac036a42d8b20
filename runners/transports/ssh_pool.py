"""The SSH connection pool: one asyncssh connection per host and event loop, shared by every transport.

Opening an SSH connection costs a TCP and a key exchange (tens of ms on a LAN, far
more over a jump host); a status call must not pay it. A :class:`Slot` holds one host's
connection, its one SFTP session and its channel limit, keyed by everything that decides
*who* we talk to and *how we verify it* (address, port, user, keys, known_hosts, jump),
so two configs that differ in their known_hosts never share a verified connection. A
dropped connection is noticed (keepalive, ``connection_lost``) and the next call
reconnects with backoff; ``runners/transports/ssh.py`` decides what may be retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncssh

from runners.config import HostConfig
from runners.errors import AuthError, ConfigError, HostError, HostKeyError
from runners.transports.ssh_errors import address_of, keyscan_hint, known_hosts_path, translate_errors
from runners.transports.ssh_hosts import HOSTS as _HOSTS  # by name, for proxy_jump (no asyncssh there)

__all__ = [
    "KEEPALIVE_COUNT_MAX",
    "KEEPALIVE_INTERVAL_S",
    "Slot",
    "close_all",
    "connection_count",
    "current_pool",
    "pool_key",
]

log = logging.getLogger("llm_ops_mcp.ssh")

KEEPALIVE_INTERVAL_S = 15.0
KEEPALIVE_COUNT_MAX = 3
# Reconnect delays after a working connection dropped; bounded by the host's connect_timeout_s.
_BACKOFF_S = (0.0, 0.2, 0.5, 1.0, 2.0, 4.0)


def _identity_files(host: HostConfig) -> tuple[str, ...]:
    """The configured key files, ``~`` expanded (none: the agent and default keys)."""
    ids = host.identity_file
    if ids is None:
        return ()
    return tuple(str(Path(i).expanduser()) for i in ([ids] if isinstance(ids, str) else ids))


def pool_key(host: HostConfig) -> tuple[Any, ...]:
    """Everything that decides who we talk to and how we verify it: two hosts share a connection only if all match."""
    return (
        host.address,
        host.port,
        host.user,
        _identity_files(host),
        str(known_hosts_path(host)),
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

    def __init__(self, slot: Slot) -> None:
        self._slot = weakref.ref(slot)

    def connection_lost(self, exc: Exception | None) -> None:
        slot = self._slot()
        if slot is not None:
            slot.mark_dead(self)


@dataclass(eq=False)
class Slot:
    """One host's pooled connection, its SFTP session and its channel limit."""

    host: HostConfig
    sem: asyncio.Semaphore
    conn: asyncssh.SSHClientConnection | None = None
    client: _Client | None = None
    sftp: asyncssh.SFTPClient | None = None
    jump: Slot | None = None
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
        kh = known_hosts_path(host)
        if not kh.exists():
            raise HostKeyError(
                f"known_hosts file {kh} does not exist, so the key of {host.name} cannot be verified.",
                f"Create it with the host's key: {keyscan_hint(host)}.",
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
        log.info("ssh %s: connected (%s, connection #%d)", host.name, address_of(host), self.connects)
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
        self.slots: dict[tuple[Any, ...], Slot] = {}

    def slot(self, host: HostConfig) -> Slot:
        key = pool_key(host)
        s = self.slots.get(key)
        if s is None:
            jump = self.slot(_parse_jump(host.proxy_jump, host)) if host.proxy_jump else None
            s = Slot(host=host, sem=asyncio.Semaphore(host.max_channels), jump=jump)
            self.slots[key] = s
        return s


_POOLS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Pool] = weakref.WeakKeyDictionary()


def current_pool() -> _Pool:
    loop = asyncio.get_running_loop()
    p = _POOLS.get(loop)
    if p is None:
        p = _POOLS[loop] = _Pool()
    return p


def connection_count(host: HostConfig) -> int:
    """How many SSH connections this event loop has opened to ``host`` so far (tests, bench)."""
    s = current_pool().slots.get(pool_key(host))
    return s.connects if s is not None else 0


async def close_all() -> None:
    """Close every pooled connection of the running loop (server shutdown, test teardown)."""
    pool = current_pool()
    slots = list(pool.slots.values())
    pool.slots.clear()
    # Close targets before the jump hosts they tunnel through.
    for s in sorted(slots, key=lambda s: s.jump is None):
        await s.close()
