"""A host's config becomes its Launcher here (a host picks one Transport and one Launcher).

The one module that knows every launcher class, so that the protocol module
(``runners/launchers/base.py``) and the launchers themselves import no factory and no
circle forms; the engine receives the factory and knows nothing about SLURM.
"""

from __future__ import annotations

from importlib import import_module

from runners.config import HostConfig
from runners.errors import ConfigError
from runners.launchers.base import Launcher

__all__ = ["make_launcher"]


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
