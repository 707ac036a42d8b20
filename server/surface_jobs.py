"""Job tools: submit a command, follow status and logs, wait, cancel, list; and jobs://{id}/log.

Only wiring: the logic is :class:`runners.engine.JobEngine`, built lazily on first
use and kept in ``state.services["engine"]`` (closed with the server).
"""

from __future__ import annotations

import base64
from typing import Annotated, Literal

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent
from pydantic import BaseModel, Field, field_validator

from runners.engine import JobEngine, SubmitResult
from runners.errors import InvalidInput
from runners.logs import LogChunk
from runners.spec import ENV_NAME_RE, JobSpec, Resources, parse_time_limit, validate_argv
from runners.states import JobState
from runners.views import JobView
from server.registry import ToolSpec, add_tool
from server.state import AppState
from tools.plots import loss_curve_png, read_metrics_points

__all__ = ["get_engine", "register"]

JOB_ID = Field(description="The job's id, from a submit or list_jobs.", pattern=r"^[a-z][a-z0-9-]{2,79}$")
MAX_LOG_BYTES = 1 << 20
MAX_WAIT_S = 110.0
# Some MCP clients cancel a tool call after about 60 s: a wait returns well before that unless asked.
DEFAULT_WAIT_S = 45.0


async def get_engine(state: AppState) -> JobEngine:
    """The server's one engine, created on first use (opening the catalog is not free)."""
    engine = state.services.get("engine")
    if engine is None:
        engine = JobEngine(state.config, state.state_dir)
        state.services["engine"] = engine
    await engine.ensure_started()
    return engine  # type: ignore[no-any-return]


# -- inputs / outputs -------------------------------------------------------------------
class SubmitCommandInput(BaseModel):
    argv: list[str] = Field(description="Program and arguments, as a list (no shell): ['python', 'train.py'].")
    host: str | None = Field(None, description="Host name from list_hosts; default host when omitted.")
    env: dict[str, str] | None = Field(None, description="Extra environment variables (not secrets).")
    time_limit: str | None = Field(None, description="Stop the job after this long: HH:MM:SS, D-HH:MM:SS or minutes.")
    name: str | None = Field(None, max_length=120, description="A short label for list_jobs.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Same key returns the same job instead of a second one."
    )
    dry_run: bool = Field(False, description="Show run.sh and job.json without starting anything.")

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


# -- registration -----------------------------------------------------------------------
def register(app: MCPServer, state: AppState) -> None:
    async def submit_command(p: SubmitCommandInput) -> SubmitResult:
        host = state.config.host(p.host)
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
            resources=Resources(time_limit_s=parse_time_limit(p.time_limit)),
        )
        engine = await get_engine(state)
        return await engine.submit(spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run)

    add_tool(
        app,
        ToolSpec(
            "submit_command",
            "Run a command (argv list, no shell) as a job on a host; returns a job_id at once.",
            open_world=True,
        ),
        SubmitCommandInput,
        submit_command,
        SubmitResult,
    )

    async def get_job_status(p: GetJobStatusInput) -> CallToolResult:
        engine = await get_engine(state)
        view = await engine.status(p.job_id)
        content: list[TextContent | ImageContent] = [TextContent(type="text", text=view.summary)]
        if p.plot:
            train, evals = await read_metrics_points(engine.transport(view.host), f"{view.job_dir}/metrics.jsonl")
            png = loss_curve_png(f"{view.job_id} ({view.name or view.kind})", train, evals)
            content.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
        return CallToolResult(content=content, structured_content=view.model_dump(mode="json"))

    add_tool(
        app,
        ToolSpec(
            "get_job_status",
            "A job's state, exit code, metrics, progress/ETA, failure cause; plot=true: loss PNG.",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        GetJobStatusInput,
        get_job_status,
        Annotated[CallToolResult, JobView],
    )

    async def get_job_logs(p: GetJobLogsInput) -> GetJobLogsOutput:
        engine = await get_engine(state)
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

    add_tool(
        app,
        ToolSpec(
            "get_job_logs",
            "Read a job's log: the tail, or from offset on (follow with next_offset). Redacted.",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        GetJobLogsInput,
        get_job_logs,
        GetJobLogsOutput,
    )

    async def wait_for_job(p: WaitForJobInput, ctx: Context) -> WaitForJobOutput:
        engine = await get_engine(state)

        async def progress(done: float, total: float | None, message: str) -> None:
            await ctx.report_progress(done, total, message)

        view, reached = await engine.wait(p.job_id, p.until, p.timeout_s, progress)
        timed_out = not reached and not view.terminal
        if reached:
            summary = f"Reached {p.until}: {view.summary}"
        elif timed_out:
            summary = f"Still waiting after {p.timeout_s:g} s (call again to keep waiting): {view.summary}"
        else:
            summary = f"Finished without reaching {p.until}: {view.summary}"
        return WaitForJobOutput(job=view, reached=reached, timed_out=timed_out, summary=summary)

    add_tool(
        app,
        ToolSpec(
            "wait_for_job",
            "Wait (45 s by default, up to 110 s, with progress) until a job is finished, running or ready.",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        WaitForJobInput,
        wait_for_job,
        WaitForJobOutput,
    )

    async def cancel_job(p: CancelJobInput) -> JobView:
        return await (await get_engine(state)).cancel(p.job_id, p.grace_s)

    add_tool(
        app,
        ToolSpec(
            "cancel_job",
            "Stop a job and everything it started (SIGTERM, then SIGKILL after grace_s).",
            destructive=True,
            idempotent=True,
            open_world=True,
        ),
        CancelJobInput,
        cancel_job,
        JobView,
    )

    async def list_jobs(p: ListJobsInput) -> ListJobsOutput:
        if p.host is not None:
            state.config.host(p.host)  # an unknown host is an error, not an empty list
        jobs = await (await get_engine(state)).list_jobs(state=p.state, kind=p.kind, host=p.host, limit=p.limit)
        counts: dict[str, int] = {}
        for j in jobs:
            counts[j.state.value] = counts.get(j.state.value, 0) + 1
        detail = ", ".join(f"{n} {s}" for s, n in counts.items())
        return ListJobsOutput(
            jobs=jobs, count=len(jobs), summary=f"{len(jobs)} job(s)" + (f": {detail}." if detail else ".")
        )

    add_tool(
        app,
        ToolSpec(
            "list_jobs",
            "Jobs in the catalog, newest first, filtered by state, kind or host.",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        ListJobsInput,
        list_jobs,
        ListJobsOutput,
    )

    @app.resource(
        "jobs://{job_id}/log",
        name="job_log",
        mime_type="text/plain",
        description="The last 200 lines of a job's log (redacted).",
    )
    async def job_log(job_id: str) -> str:
        chunk = await (await get_engine(state)).read_log(job_id)
        return chunk.text
