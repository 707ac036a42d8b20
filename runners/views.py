"""What the engine hands out about a job: pydantic models an agent can read.

These are the outputs of the job tools too (server/surface_jobs.py only wires), so
they carry a one-line ``summary`` and, where useful, a ``next_action``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

from runners.diagnosis import ErrorExcerpt
from runners.states import JobState
from runners.store import JobRecord

__all__ = ["JobView", "job_view"]


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


class JobView(BaseModel):
    """One job as an agent sees it."""

    job_id: str = Field(description="The job's id; pass it to the other job tools.")
    host: str = Field(description="The host the job runs on.")
    kind: str = Field(description="finetune, serve, quantize, download, script, command or evaluate.")
    name: str | None = Field(None, description="The job's label, if any.")
    state: JobState = Field(description="queued, running, ready, succeeded, failed, cancelled or lost.")
    terminal: bool = Field(description="True once the job has finished (its state will not change).")
    exit_code: int | None = Field(None, description="The command's exit code, once finished (none if lost).")
    reason: str | None = Field(None, description="Why it is in this state, when not obvious.")
    native_id: str | None = Field(None, description="pid (direct launcher) or SLURM job id.")
    job_dir: str = Field(description="The job directory on the host (job.json, output.log, outputs/).")
    command: list[str] | None = Field(None, description="What the job runs.")
    created_at: datetime | None = Field(None, description="When it was submitted (UTC).")
    started_at: datetime | None = Field(None, description="When it was first seen running (UTC).")
    ended_at: datetime | None = Field(None, description="When it was first seen finished (UTC).")
    duration_s: float | None = Field(None, description="Run time so far, or in total once finished.")
    cancel_requested: bool = Field(False, description="A cancel was asked for.")
    metrics: dict[str, Any] | None = Field(None, description="The latest line of metrics.jsonl (step, loss, ...).")
    progress_percent: float | None = Field(None, description="Progress from the metrics, when known.")
    eta_s: float | None = Field(None, description="Estimated seconds left, when known.")
    error: ErrorExcerpt | None = Field(None, description="For failed or lost jobs: the likely cause and a hint.")
    stale: bool = Field(False, description="True when the host could not be asked: the state is the last known.")
    note: str | None = Field(None, description="Why the state is stale, or other remarks.")
    summary: str = Field(description="One line an agent can quote.")
    next_action: str | None = Field(None, description="What to do next, if anything.")


def _summary(v: JobView) -> tuple[str, str | None]:
    head = f"Job {v.job_id} ({v.kind} on {v.host}): {v.state.value}"
    if v.state is JobState.SUCCEEDED:
        return head + f" after {v.duration_s or 0:.1f} s.", "Read its outputs in job_dir/outputs or its log."
    if v.state is JobState.FAILED:
        cause = v.error.line or v.error.kind if v.error else v.reason
        return head + f": {cause}.", v.error.hint if v.error else "Read the end of its log with get_job_logs."
    if v.state is JobState.LOST:
        return head + f": {v.reason}.", "Read its log (get_job_logs); resubmit if the work is still needed."
    if v.state is JobState.CANCELLED:
        return head + ".", None
    pct = f", {v.progress_percent:.0f}% done" if v.progress_percent is not None else ""
    eta = f", about {v.eta_s:.0f} s left" if v.eta_s is not None else ""
    if v.state is JobState.QUEUED:
        return head + (f" ({v.reason})" if v.reason else "") + ".", "wait_for_job(until='running')."
    return head + pct + eta + ".", "Follow it with get_job_logs (by offset) or wait_for_job."


def job_view(rec: JobRecord, now: float, **extra: Any) -> JobView:
    """Build the agent's view of a catalog record (plus metrics/error/stale extras)."""
    try:
        spec = json.loads(rec.spec_json)
    except ValueError:
        spec = {}
    command = spec.get("argv") or ([f"payload:{spec['payload']}"] if spec.get("payload") else None)
    duration = None
    if rec.started_at is not None:
        duration = round((rec.ended_at or now) - rec.started_at, 3)
    v = JobView(
        job_id=rec.job_id,
        host=rec.host,
        kind=rec.kind,
        name=rec.name,
        state=rec.state,
        terminal=rec.state.terminal,
        exit_code=rec.exit_code,
        reason=rec.reason,
        native_id=rec.native_id,
        job_dir=rec.job_dir,
        command=command,
        created_at=_ts(rec.created_at),
        started_at=_ts(rec.started_at),
        ended_at=_ts(rec.ended_at),
        duration_s=duration,
        cancel_requested=rec.cancel_requested,
        summary="",
        **extra,
    )
    v.summary, v.next_action = _summary(v)
    if v.stale and v.note:
        v.summary += f" (last known; {v.note})"
    return v
