"""submit_finetune, the tool: plan against the host's GPUs, upload a local dataset into the job, submit."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from runners.config import HostConfig
from runners.engine import SubmitResult
from runners.errors import InvalidInput
from runners.spec import JOB_ID_RE
from tools.finetune.inputs import UPLOAD_NAME, FinetuneInput, FinetunePlan
from tools.finetune.plan import plan_finetune
from tools.finetune.spec import build_finetune_spec
from tools.hosts import detect_gpus, host_gpus
from tools.submit import submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = ["SubmitFinetuneOutput", "submit_finetune"]


class SubmitFinetuneOutput(BaseModel):
    job_id: str = Field(description="Follow it with get_job_status / get_job_logs / wait_for_job.")
    plan: FinetunePlan
    submit: SubmitResult = Field(description="What the engine did (with dry_run: the script it would run).")
    summary: str
    next_action: str | None = None


async def _resume_path(ctx: ToolContext, p: FinetuneInput, host: HostConfig) -> str | None:
    """``resume_from`` as a path on the host: a fine-tune job of the same host gives its job directory."""
    if not p.resume_from or not JOB_ID_RE.match(p.resume_from):
        return p.resume_from
    prev = await (await ctx.engine()).status(p.resume_from, with_details=False)
    if prev.kind != "finetune" or prev.host != host.name:
        raise InvalidInput(
            f"resume_from {p.resume_from} is a {prev.kind} job on {prev.host}.",
            f"Give a fine-tune job of host {host.name}, or a checkpoint path on it.",
        )
    return prev.job_dir


def _describe(p: FinetuneInput, host: HostConfig, plan: FinetunePlan) -> str:
    """The plan in one line: method, backend, where (ranks, strategy), batch arithmetic, memory."""
    mem = (
        f", estimated peak {plan.estimated_peak_gib:.1f} of {plan.gpu_memory_gib:.0f} GiB"
        if plan.estimated_peak_gib is not None and plan.gpu_memory_gib
        else ""
    )
    where = (
        f"{plan.nodes} node(s) x {plan.world_size // plan.nodes} rank(s), {plan.strategy}"
        if plan.world_size > 1
        else f"{plan.gpus}x {plan.gpu or 'CPU'}"
    )
    if plan.world_size > 1 and plan.gpu:
        where += f" on {plan.gpu}"
    return (
        f"{p.method} of {p.model} with {plan.backend} on {host.name} ({where}): micro-batch "
        f"{plan.per_device_batch_size} x GA {plan.gradient_accumulation_steps}{mem}"
    )


async def submit_finetune(ctx: ToolContext, p: FinetuneInput) -> SubmitFinetuneOutput:
    """The tool: plan against the host's GPUs (nvidia-smi's when its config names none), upload a local
    dataset into the job, submit."""
    host = ctx.host(p.host)
    plan, upload = plan_finetune(p, host, host_gpus(host, await detect_gpus(ctx, host)))
    resume_path = await _resume_path(ctx, p, host)
    uploads: dict[str, bytes] = {}
    dataset_ref = p.dataset
    if upload is not None:
        dataset_ref = f"{UPLOAD_NAME}{upload.suffix.lower()}"
        uploads[dataset_ref] = upload.read_bytes()
    spec = build_finetune_spec(p, host, plan, dataset_ref, resume_path)
    res = await submit(ctx, host, spec, p, uploads=uploads)
    what = _describe(p, host, plan)
    return SubmitFinetuneOutput(
        job_id=res.job_id,
        plan=plan,
        submit=res,
        summary=f"Dry run: {what}." if p.dry_run else f"Submitted {res.job_id}: {what}.",
        next_action="Submit again without dry_run to start it."
        if p.dry_run
        else f"wait_for_job(job_id='{res.job_id}') or get_job_status to follow loss and ETA.",
    )
