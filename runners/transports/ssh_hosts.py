"""The config's hosts by name, for SSH ``proxy_jump = "login"`` (another host of the file).

Its own module so that the server can register them at start without importing
``runners/transports/ssh.py`` and with it asyncssh, which takes a second or two on a small machine
and is needed only when the first SSH connection is made.
"""

from __future__ import annotations

from runners.config import Config, HostConfig

__all__ = ["HOSTS", "register_hosts"]

HOSTS: dict[str, HostConfig] = {}


def register_hosts(config: Config) -> None:
    """Make the config's hosts known by name for ``proxy_jump`` (called once by the server)."""
    HOSTS.update(config.hosts)
