"""stop_vllm_server: a graceful stop of a server job, then a check that its GPU memory came back."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from runners.errors import InvalidInput
from runners.views import JobView
from tools.serve.connection import JOB_ID_PATTERN
from tools.serve.host import GpuRelease, check_gpu_release

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = ["StopServerInput", "StopServerOutput", "stop_vllm_server"]


class StopServerInput(BaseModel):
    job_id: str = Field(description="The server's job_id.", pattern=JOB_ID_PATTERN)
    grace_s: float = Field(30.0, ge=0, le=60, description="Seconds for vLLM to shut down before SIGKILL.")


class StopServerOutput(BaseModel):
    job: JobView
    gpu: GpuRelease = Field(description="Whether the job's GPU memory was released (nvidia-smi).")
    summary: str


async def stop_vllm_server(ctx: ToolContext, p: StopServerInput) -> StopServerOutput:
    """Graceful stop (SIGTERM to the job's process group, SIGKILL after ``grace_s``), then a GPU check."""
    engine = await ctx.engine()
    view = await engine.status(p.job_id, with_details=False)
    if view.kind != "serve":
        raise InvalidInput(f"Job {p.job_id} is a {view.kind} job, not a server.", "Use cancel_job for other jobs.")
    view = await engine.cancel(p.job_id, grace_s=p.grace_s)
    host = ctx.host(view.host)
    gpu = await check_gpu_release(engine, host, p.job_id)
    gpu_txt = (
        ("GPU memory released" if gpu.released else (gpu.note or "GPU memory still held"))
        if gpu.checked
        else (gpu.note or "GPU memory not checked")
    )
    return StopServerOutput(job=view, gpu=gpu, summary=f"{view.summary} {gpu_txt.rstrip('.')}.")
