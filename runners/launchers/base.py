"""How a job is started and watched on its host: the :class:`Launcher` protocol.

A launcher works *through* a :class:`~runners.transport.Transport`, so each of the
four pairs (local|ssh by direct|slurm) is just two objects. The engine calls:

* ``render_script(job)`` — the full run.sh (the launcher's header + the common body
  from :func:`runners.jobdir.render_body`);
* ``start(transport, job)`` — start it; returns the native id (pid, SLURM job id).
  Must be idempotent: starting a job whose directory shows it started already
  returns the same id instead of starting it twice;
* ``observe(transport, refs)`` — what every listed job looks like now, in ONE
  round trip per call (over SSH each round trip costs tens of milliseconds);
* ``cancel(transport, ref, grace_s)`` — stop it and everything it spawned.

``slurm`` lives in ``runners/launchers/slurm.py`` as ``SlurmLauncher(host)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import import_module
from typing import Protocol, runtime_checkable

from runners.config import HostConfig
from runners.errors import ConfigError
from runners.jobdir import PreparedJob
from runners.states import JobState
from runners.transport import Transport

__all__ = ["JobRef", "Launcher", "Observation", "make_launcher"]


@dataclass(frozen=True)
class JobRef:
    """Enough to find a job on its host again (from the catalog)."""

    job_id: str
    token: str
    job_dir: str
    native_id: str | None = None


@dataclass(frozen=True)
class Observation:
    """What the host shows for one job at one moment. ``alive`` is None when unknown."""

    exists: bool
    alive: bool | None = None
    exit_code: int | None = None
    native_id: str | None = None
    cancel_requested: bool = False
    timed_out: bool = False
    ready: bool = False
    pending: bool = False  # the scheduler holds it (SLURM PENDING); never true for direct jobs
    detail: str | None = None  # scheduler state or reason, for the agent
    # An end state the scheduler decided (SLURM TIMEOUT, OUT_OF_MEMORY, NODE_FAIL...); reconcile takes it
    # as is, with ``detail`` as the reason. Never set by the direct launcher.
    verdict: JobState | None = None


@runtime_checkable
class Launcher(Protocol):
    name: str

    def render_script(self, job: PreparedJob) -> str: ...

    async def start(self, transport: Transport, job: PreparedJob) -> str: ...

    async def observe(self, transport: Transport, refs: Sequence[JobRef]) -> dict[str, Observation]: ...

    async def cancel(self, transport: Transport, ref: JobRef, grace_s: float) -> str: ...


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
