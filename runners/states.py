"""Job states, which moves between them are legal, and which states are final.

The state machine is small on purpose: every runner (direct, SLURM) maps what it
sees on the host onto these seven states, so an agent reads one vocabulary.
``lost`` means the process is gone without an exit code (host reboot, node
failure, SIGKILL of the job's shell) — never guessed as success. ``lost`` is the
one terminal state that may still be corrected: if an exit code turns up later on
the host (the host's directory is the truth), the job moves to what it says.
"""

from __future__ import annotations

from enum import StrEnum

from runners.errors import Conflict

__all__ = ["ACTIVE", "LEGAL", "TERMINAL", "JobState", "can_transition", "transition"]


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    READY = "ready"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    LOST = "lost"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL: frozenset[JobState] = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST})
ACTIVE: frozenset[JobState] = frozenset({JobState.QUEUED, JobState.RUNNING, JobState.READY})

_ENDS = {JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST}
LEGAL: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.READY, *_ENDS}),
    # A scheduler may requeue a running job (node failure, preemption): running -> queued is legal.
    JobState.RUNNING: frozenset({JobState.QUEUED, JobState.READY, *_ENDS}),
    # A server can stop answering its health check and come back: ready -> running is legal.
    JobState.READY: frozenset({JobState.RUNNING, *_ENDS}),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
    # An exit code found after we declared the job lost wins: the host is the truth.
    JobState.LOST: frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}),
}


def can_transition(old: JobState, new: JobState) -> bool:
    """True when ``old -> new`` is a legal move (staying put is always legal)."""
    return old == new or new in LEGAL[old]


def transition(old: JobState, new: JobState) -> JobState:
    """Return ``new`` or raise :class:`Conflict` when the move is illegal."""
    if not can_transition(old, new):
        raise Conflict(
            f"A job cannot go from {old.value} to {new.value}.",
            "Read the job's status again; it has already finished." if old.terminal else None,
        )
    return new
