"""Job tools: submit a command or a repository's script, follow status and logs, wait, cancel, list;
and the ``jobs://{id}/log`` resource.

Wiring only: the functions are ``tools/jobs.py`` and ``tools/scripts.py``; the engine is the
context's (``ToolContext.engine``), shared by every surface.
"""

from __future__ import annotations

import base64
from functools import partial
from typing import Annotated

from mcp.server.mcpserver import Context, MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent

from runners.engine import SubmitResult
from runners.views import JobView
from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.jobs import (
    CancelJobInput,
    GetJobLogsInput,
    GetJobLogsOutput,
    GetJobStatusInput,
    ListJobsInput,
    ListJobsOutput,
    SubmitCommandInput,
    WaitForJobInput,
    WaitForJobOutput,
    cancel_job,
    get_job_logs,
    get_job_status,
    job_log_tail,
    list_jobs,
    submit_command,
    wait_for_job,
)
from tools.scripts import SubmitScriptInput, SubmitScriptOutput, submit_script

__all__ = ["register"]

_FOLLOW = {"read_only": True, "idempotent": True, "open_world": True}

# (spec, input, tools/ function called with the context first, output); get_job_status and wait_for_job
# are wired below: they speak MCP (an image block, progress notifications).
TOOLS = [
    (
        ToolSpec(
            "submit_command",
            "Run a command (argv list, no shell) as a job on a host; returns a job_id at once.",
            open_world=True,
        ),
        SubmitCommandInput,
        submit_command,
        SubmitResult,
    ),
    (
        ToolSpec(
            "submit_script",
            "Clone a git repo into a job and run `python script args` (hosts with allow_scripts only).",
            open_world=True,
        ),
        SubmitScriptInput,
        submit_script,
        SubmitScriptOutput,
    ),
    (
        ToolSpec(
            "get_job_logs",
            "Read a job's log: the tail, or from offset on (follow with next_offset). Redacted.",
            **_FOLLOW,
        ),
        GetJobLogsInput,
        get_job_logs,
        GetJobLogsOutput,
    ),
    (
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
    ),
    (
        ToolSpec("list_jobs", "Jobs in the catalog, newest first, filtered by state, kind or host.", **_FOLLOW),
        ListJobsInput,
        list_jobs,
        ListJobsOutput,
    ),
]
STATUS = ToolSpec(
    "get_job_status", "A job's state, exit code, metrics, progress/ETA, failure cause; plot=true: loss PNG.", **_FOLLOW
)
WAIT = ToolSpec(
    "wait_for_job",
    "Wait (45 s by default, up to 110 s, with progress) until a job is finished, running or ready.",
    **_FOLLOW,
)


def register(app: MCPServer, ctx: ToolContext) -> None:
    for spec, model, fn, out in TOOLS:
        add_tool(app, spec, model, partial(fn, ctx), out)

    async def _status(p: GetJobStatusInput) -> CallToolResult:
        view, png = await get_job_status(ctx, p)
        content: list[TextContent | ImageContent] = [TextContent(type="text", text=view.summary)]
        if png is not None:
            content.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
        return CallToolResult(content=content, structured_content=view.model_dump(mode="json"))

    add_tool(app, STATUS, GetJobStatusInput, _status, Annotated[CallToolResult, JobView])

    async def _wait(p: WaitForJobInput, mcp: Context) -> WaitForJobOutput:
        return await wait_for_job(ctx, p, mcp.report_progress)

    add_tool(app, WAIT, WaitForJobInput, _wait, WaitForJobOutput)

    @app.resource(
        "jobs://{job_id}/log",
        name="job_log",
        mime_type="text/plain",
        description="The last 200 lines of a job's log (redacted).",
    )
    async def job_log(job_id: str) -> str:
        return await job_log_tail(ctx, job_id)
