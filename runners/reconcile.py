"""Decide a job's state from its catalog record and what the host shows: a pure function.

``reconcile(record, observation, now)`` is called at start-up (every active job)
and on every status call. It never guesses success: a process that is gone
without an exit code is ``lost`` (or ``cancelled`` when a cancel was asked for,
``failed`` when its time limit fired). Only an exit code written by run.sh's trap
makes a job ``succeeded``.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass

from runners.launchers.base import Observation
from runners.states import JobState, can_transition
from runners.store import JobRecord

__all__ = ["START_GRACE_S", "Outcome", "describe_exit", "reconcile"]

# How long a submitted job may show no pid before we stop waiting for it to appear.
START_GRACE_S = 120.0


@dataclass(frozen=True)
class Outcome:
    state: JobState
    exit_code: int | None
    reason: str | None
    native_id: str | None
    changed: bool


def describe_exit(code: int) -> str:
    """``exit code 137 (SIGKILL)`` — shells report death by signal N as 128+N."""
    if code > 128:
        try:
            return f"exit code {code} ({signal.Signals(code - 128).name})"
        except ValueError:
            pass
    return f"exit code {code}"


def _out(rec: JobRecord, state: JobState, exit_code: int | None, reason: str | None, native_id: str | None) -> Outcome:
    if not can_transition(rec.state, state):
        return Outcome(rec.state, rec.exit_code, rec.reason, rec.native_id, False)
    native_id = native_id or rec.native_id
    changed = (state, exit_code, reason, native_id) != (rec.state, rec.exit_code, rec.reason, rec.native_id)
    return Outcome(state, exit_code, reason, native_id, changed)


def _same(rec: JobRecord) -> Outcome:
    return Outcome(rec.state, rec.exit_code, rec.reason, rec.native_id, False)


def reconcile(rec: JobRecord, obs: Observation | None, now: float, *, start_grace_s: float = START_GRACE_S) -> Outcome:
    """The state ``rec`` should move to given ``obs`` (None: the host did not answer)."""
    if rec.state.terminal and rec.state is not JobState.LOST:
        return _same(rec)
    if obs is None:
        return _same(rec)
    young = now - rec.created_at < start_grace_s
    if obs.exists and obs.verdict is not None:  # a scheduler's own end verdict (SLURM), with its sentence
        return _out(rec, obs.verdict, obs.exit_code, obs.detail, obs.native_id)
    cancel = obs.cancel_requested or rec.cancel_requested
    if not obs.exists:
        if rec.state is JobState.LOST:
            return _same(rec)
        if rec.phase == "intent" and young:
            return _same(rec)  # the submit is still writing the directory
        why = (
            "the submit was interrupted before the job directory was written"
            if rec.phase == "intent"
            else "its job directory is gone from the host"
        )
        return _out(rec, JobState.LOST, None, why, None)
    if obs.exit_code is not None:
        code = obs.exit_code
        if cancel:
            return _out(rec, JobState.CANCELLED, code, f"cancelled ({describe_exit(code)})", obs.native_id)
        if obs.timed_out:
            return _out(rec, JobState.FAILED, code, f"time limit reached ({describe_exit(code)})", obs.native_id)
        if code == 0:
            return _out(rec, JobState.SUCCEEDED, 0, None, obs.native_id)
        return _out(rec, JobState.FAILED, code, f"the command failed with {describe_exit(code)}", obs.native_id)
    if rec.state is JobState.LOST:
        return _same(rec)
    if obs.pending:
        return _out(rec, JobState.QUEUED, None, obs.detail, obs.native_id)
    if obs.alive:
        if obs.ready and rec.kind == "serve":
            return _out(rec, JobState.READY, None, None, obs.native_id)
        return _out(rec, JobState.RUNNING, None, obs.detail, obs.native_id)  # SLURM: "running on <node>"
    if obs.alive is None:
        return _same(rec)
    # Dead, and no exit code.
    if obs.native_id is None and young:
        return _same(rec)  # launched, but run.sh has not written its pid yet
    if cancel:
        return _out(
            rec, JobState.CANCELLED, None, "cancelled (killed before it could write an exit code)", obs.native_id
        )
    if obs.timed_out:
        return _out(rec, JobState.FAILED, None, "time limit reached (killed)", obs.native_id)
    if obs.native_id is None:
        why = "the job never started (run.sh wrote no pid)"
    else:
        why = (
            "its process is gone without an exit code (killed with SIGKILL, the host rebooted, "
            "or the OOM killer took the job's shell)"
        )
    return _out(rec, JobState.LOST, None, why, obs.native_id)
