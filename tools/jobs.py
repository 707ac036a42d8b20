"""The job tools: submit a command, follow a job's status and log, wait for it, cancel it, list jobs.

Plain functions over the :class:`~tools.context.ToolContext` and pydantic models; the logic
under them is :class:`runners.engine.JobEngine`. What each adds is the agent's view: one
``summary`` line to quote, the loss curve of a fine-tune, and the order that makes a log
read safe to stop on (the state before the read, the log after it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, field_validator

from runners.engine import SubmitResult
from runners.errors import InvalidInput
from runners.logs import LogChunk
from runners.spec import ENV_NAME_RE, JobSpec, Resources, validate_argv
from runners.states import JobState
from runners.views import JobView
from tools.plots import loss_curve_png, read_metrics_points
from tools.submit import TimedSubmitOptions, submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "DEFAULT_WAIT_S",
    "MAX_WAIT_S",
    "CancelJobInput",
    "GetJobLogsInput",
    "GetJobLogsOutput",
    "GetJobStatusInput",
    "JobIdInput",
    "ListJobsInput",
    "ListJobsOutput",
    "SubmitCommandInput",
    "WaitForJobInput",
    "WaitForJobOutput",
    "cancel_job",
    "get_job_logs",
    "get_job_status",
    "job_log_tail",
    "list_jobs",
    "submit_command",
    "wait_for_job",
]

JOB_ID = Field(description="The job's id, from a submit or list_jobs.", pattern=r"^[a-z][a-z0-9-]{2,79}$")
MAX_LOG_BYTES = 1 << 20
MAX_WAIT_S = 110.0
# Some MCP clients cancel a tool call after about 60 s: a wait returns well before that unless asked.
DEFAULT_WAIT_S = 45.0
Progress = Callable[[float, float | None, str], Awaitable[None]]


# -- inputs / outputs -------------------------------------------------------------------
class SubmitCommandInput(TimedSubmitOptions):
    argv: list[str] = Field(description="Program and arguments, as a list (no shell): ['python', 'train.py'].")
    env: dict[str, str] | None = Field(None, description="Extra environment variables (not secrets).")
    name: str | None = Field(None, max_length=120, description="A short label for list_jobs.")

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        return validate_argv(v)

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for k, val in (v or {}).items():
            if not ENV_NAME_RE.match(k):
                raise ValueError(f"{k!r} is not a valid environment variable name")
            if "\x00" in val:
                raise ValueError(f"env {k} contains a NUL byte")
        return v


class JobIdInput(BaseModel):
    job_id: str = JOB_ID


class GetJobStatusInput(BaseModel):
    job_id: str = JOB_ID
    plot: bool = Field(False, description="Also return the loss curve as a PNG image (fine-tunes).")


class CancelJobInput(BaseModel):
    job_id: str = JOB_ID
    grace_s: float = Field(10.0, ge=0, le=60, description="Seconds between SIGTERM and SIGKILL.")


class GetJobLogsInput(BaseModel):
    job_id: str = JOB_ID
    offset: int | None = Field(
        None, ge=0, description="Byte offset to continue from (a previous next_offset); omit for the tail."
    )
    tail_lines: int = Field(200, ge=1, le=10_000, description="Lines of the tail (only without offset).")
    max_bytes: int = Field(65_536, ge=1, le=MAX_LOG_BYTES, description="At most this many bytes are read.")
    grep: str | None = Field(None, max_length=200, description="Only lines matching this regular expression.")


class GetJobLogsOutput(LogChunk):
    job_id: str = Field(description="The job.")
    state: JobState = Field(
        description="The job's state just before the read; terminal + eof means the whole log was read."
    )
    summary: str = Field(description="One line an agent can quote.")


class WaitForJobInput(BaseModel):
    job_id: str = JOB_ID
    until: Literal["finished", "running", "ready"] = Field(
        "finished", description="finished (any end state), running, or ready (serve jobs: endpoint answers)."
    )
    timeout_s: float = Field(
        DEFAULT_WAIT_S,
        gt=0,
        le=MAX_WAIT_S,
        description="Return after this long at most: 45 s by default (some clients cancel calls after ~60 s), "
        "up to 110 s. Progress is reported meanwhile; call again while timed_out.",
    )


class WaitForJobOutput(BaseModel):
    job: JobView = Field(description="The job's status when the wait ended.")
    reached: bool = Field(description="True when the job reached `until`.")
    timed_out: bool = Field(description="True when timeout_s ran out first (call again to keep waiting).")
    summary: str = Field(description="One line an agent can quote.")


class ListJobsInput(BaseModel):
    state: JobState | None = Field(None, description="Only jobs in this state.")
    kind: Literal["finetune", "serve", "quantize", "download", "script", "command"] | None = Field(
        None, description="Only jobs of this kind."
    )
    host: str | None = Field(None, description="Only jobs on this host.")
    limit: int = Field(50, ge=1, le=1000, description="Newest first, at most this many.")


class ListJobsOutput(BaseModel):
    jobs: list[JobView] = Field(description="Newest first.")
    count: int = Field(description="How many jobs are listed.")
    summary: str = Field(description="One line an agent can quote.")


# -- the tools --------------------------------------------------------------------------
async def submit_command(ctx: ToolContext, p: SubmitCommandInput) -> SubmitResult:
    """An argv as a job; only on hosts whose config allows arbitrary commands (a dry run shows it anywhere)."""
    host = ctx.host(p.host)
    if not host.allow_scripts and not p.dry_run:
        raise InvalidInput(
            f"Host {host.name!r} does not allow arbitrary commands.",
            f"Set allow_scripts = true in [hosts.{host.name}] of the config to allow submit_command there.",
        )
    spec = JobSpec(
        kind="command",
        name=p.name,
        argv=p.argv,
        env=p.env or {},
        resources=Resources(time_limit_s=p.time_limit_s),
    )
    return await submit(ctx, host, spec, p)


async def get_job_status(ctx: ToolContext, p: GetJobStatusInput) -> tuple[JobView, bytes | None]:
    """The job's view, and with ``plot`` its loss curve as PNG bytes."""
    engine = await ctx.engine()
    view = await engine.status(p.job_id)
    if not p.plot:
        return view, None
    train, evals = await read_metrics_points(engine.transport(view.host), f"{view.job_dir}/metrics.jsonl")
    return view, loss_curve_png(f"{view.job_id} ({view.name or view.kind})", train, evals)


async def get_job_logs(ctx: ToolContext, p: GetJobLogsInput) -> GetJobLogsOutput:
    engine = await ctx.engine()
    # State first, log second: a job that was finished before the read has nothing left to
    # write, so eof + a terminal state means the log is drained (a follower can stop).
    st = (await engine.status(p.job_id, with_details=False)).state
    chunk = await engine.read_log(
        p.job_id, offset=p.offset, max_bytes=p.max_bytes, tail_lines=p.tail_lines, grep=p.grep
    )
    more = "more to read" if not chunk.eof else ("end of log" if st.terminal else "end of log so far")
    return GetJobLogsOutput(
        **chunk.model_dump(),
        job_id=p.job_id,
        state=st,
        summary=f"{len(chunk.text)} characters of {p.job_id}'s log (bytes {chunk.offset}-{chunk.next_offset} "
        f"of {chunk.size}, {more}); job is {st.value}.",
    )


async def wait_for_job(ctx: ToolContext, p: WaitForJobInput, progress: Progress) -> WaitForJobOutput:
    """Wait up to ``timeout_s`` for ``until``; ``progress`` receives the engine's progress points meanwhile."""
    view, reached = await (await ctx.engine()).wait(p.job_id, p.until, p.timeout_s, progress)
    timed_out = not reached and not view.terminal
    if reached:
        summary = f"Reached {p.until}: {view.summary}"
    elif timed_out:
        summary = f"Still waiting after {p.timeout_s:g} s (call again to keep waiting): {view.summary}"
    else:
        summary = f"Finished without reaching {p.until}: {view.summary}"
    return WaitForJobOutput(job=view, reached=reached, timed_out=timed_out, summary=summary)


async def cancel_job(ctx: ToolContext, p: CancelJobInput) -> JobView:
    return await (await ctx.engine()).cancel(p.job_id, p.grace_s)


async def list_jobs(ctx: ToolContext, p: ListJobsInput) -> ListJobsOutput:
    if p.host is not None:
        ctx.host(p.host)  # an unknown host is an error, not an empty list
    jobs = await (await ctx.engine()).list_jobs(state=p.state, kind=p.kind, host=p.host, limit=p.limit)
    counts: dict[str, int] = {}
    for j in jobs:
        counts[j.state.value] = counts.get(j.state.value, 0) + 1
    detail = ", ".join(f"{n} {s}" for s, n in counts.items())
    return ListJobsOutput(
        jobs=jobs, count=len(jobs), summary=f"{len(jobs)} job(s)" + (f": {detail}." if detail else ".")
    )


async def job_log_tail(ctx: ToolContext, job_id: str) -> str:
    """The last 200 lines of a job's log, redacted (the ``jobs://{id}/log`` resource)."""
    return (await (await ctx.engine()).read_log(job_id)).text
