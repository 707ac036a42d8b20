"""How a job is started and watched on its host: the :class:`Launcher` protocol and what it reports.

In its own module so that the launchers, the engine and :mod:`runners.reconcile` share
:class:`Observation` without importing each other (``runners/factories.py`` picks a
host's launcher).

A launcher works *through* a :class:`~runners.transports.base.Transport`, so each of the
four pairs (local|ssh by direct|slurm) is just two objects. The engine calls:

* ``render_script(job)`` — the full run.sh (the launcher's header + the common body
  from :func:`runners.jobdir.render_body`);
* ``start(transport, job)`` — start it; returns the native id (pid, SLURM job id).
  Must be idempotent: starting a job whose directory shows it started already
  returns the same id instead of starting it twice;
* ``observe(transport, refs)`` — what every listed job looks like now, in ONE
  round trip per call (over SSH each round trip costs tens of milliseconds);
* ``cancel(transport, ref, grace_s)`` — stop it and everything it spawned.

The launchers: ``runners/launchers/direct.py`` (``DirectLauncher``) and
``runners/launchers/slurm/launcher.py`` (``SlurmLauncher``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from runners.jobdir import PreparedJob
from runners.states import JobState
from runners.transports.base import Transport

__all__ = ["JobRef", "Launcher", "Observation"]


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
