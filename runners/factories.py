"""A host's config becomes its Transport and its Launcher here (a host picks one of each).

The one module that knows every transport and launcher class, so that the protocol
modules (``runners/transports/base.py``, ``runners/launchers/base.py``) and the classes that
implement them (``runners/transports/*.py``, ``runners/launchers/*``) import no factory and
no circle forms; the engine receives the factories and knows nothing about SSH or SLURM.
"""

from __future__ import annotations

from runners.config import HostConfig
from runners.errors import ConfigError
from runners.launchers.base import Launcher
from runners.transports.base import Transport
from runners.transports.local import LocalTransport

__all__ = ["make_launcher", "make_transport"]


def make_launcher(host: HostConfig) -> Launcher:
    """The launcher a host's config names."""
    if host.launcher == "direct":
        from runners.launchers.direct import DirectLauncher

        return DirectLauncher(host)
    if host.launcher == "slurm":
        from runners.launchers.slurm.launcher import SlurmLauncher

        return SlurmLauncher(host)
    raise ConfigError(f"Host {host.name!r}: unknown launcher {host.launcher!r}.", "Use 'direct' or 'slurm'.")


def make_transport(host: HostConfig) -> Transport:
    """The transport a host's config names. ``ssh`` lives in ``runners/transports/ssh.py`` (class ``SSHTransport``)."""
    if host.transport == "local":
        return LocalTransport(host)
    if host.transport == "ssh":
        from runners.transports.ssh import SSHTransport  # asyncssh is imported only for a host that uses it

        return SSHTransport(host)
    raise ConfigError(f"Host {host.name!r}: unknown transport {host.transport!r}.", "Use 'local' or 'ssh'.")
