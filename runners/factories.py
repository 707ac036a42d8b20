"""A host's config becomes its Transport and its Launcher here (a host picks one of each).

The one module that knows every transport and launcher class, so that the protocol
modules (``runners/transport.py``, ``runners/launchers/base.py``) and the classes that
implement them (``runners/ssh.py``, ``runners/launchers/*.py``) import no factory and
no circle forms; the engine receives the factories and knows nothing about SSH or SLURM.
"""

from __future__ import annotations

from importlib import import_module

from runners.config import HostConfig
from runners.errors import ConfigError
from runners.launchers.base import Launcher
from runners.transport import LocalTransport, Transport

__all__ = ["make_launcher", "make_transport"]


def make_launcher(host: HostConfig) -> Launcher:
    """The launcher a host's config names."""
    if host.launcher == "direct":
        from runners.launchers.direct import DirectLauncher

        return DirectLauncher(host)
    if host.launcher == "slurm":
        try:
            mod = import_module("runners.launchers.slurm")
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"Host {host.name!r} uses launcher 'slurm', which this build does not have yet.",
                'Use launcher = "direct" for now.',
            ) from e
        return mod.SlurmLauncher(host)  # type: ignore[no-any-return]
    raise ConfigError(f"Host {host.name!r}: unknown launcher {host.launcher!r}.", "Use 'direct' or 'slurm'.")


def make_transport(host: HostConfig) -> Transport:
    """The transport a host's config names. ``ssh`` lives in ``runners/ssh.py`` (class ``SSHTransport``)."""
    if host.transport == "local":
        return LocalTransport(host)
    if host.transport == "ssh":
        try:
            mod = import_module("runners.ssh")
        except ModuleNotFoundError as e:
            raise ConfigError(
                f"Host {host.name!r} uses transport 'ssh', which this build does not have yet.",
                "Use a local host for now.",
            ) from e
        return mod.SSHTransport(host)  # type: ignore[no-any-return]
    raise ConfigError(f"Host {host.name!r}: unknown transport {host.transport!r}.", "Use 'local' or 'ssh'.")
