"""submit_finetune: wiring only. The logic is tools/finetune.py; the job runs through the engine."""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from runners.engine import SubmitResult
from runners.errors import InvalidInput
from runners.spec import JOB_ID_RE
from server.registry import ToolSpec, add_tool
from server.state import AppState
from server.surface_jobs import get_engine
from tools.finetune import UPLOAD_NAME, FinetuneInput, FinetunePlan, build_finetune_spec, plan_finetune
from tools.gpu_status import query_gpu_status

__all__ = ["SubmitFinetuneOutput", "register"]


class SubmitFinetuneOutput(BaseModel):
    job_id: str = Field(description="Follow it with get_job_status / get_job_logs / wait_for_job.")
    plan: FinetunePlan
    submit: SubmitResult = Field(description="What the engine did (with dry_run: the script it would run).")
    summary: str
    next_action: str | None = None


def register(app: MCPServer, state: AppState) -> None:
    async def submit_finetune(p: FinetuneInput) -> SubmitFinetuneOutput:
        host = state.config.host(p.host)
        engine = await get_engine(state)
        detected = None
        if host.accelerator is None and host.launcher == "direct":
            gpus, _note = await query_gpu_status(engine.transport(host.name))
            detected = [(g.name, g.memory_total_mib / 1024) for g in gpus if g.memory_total_mib]
        plan, upload = plan_finetune(p, host, detected)
        resume_path = None
        if p.resume_from:
            if JOB_ID_RE.match(p.resume_from):
                prev = await engine.status(p.resume_from, with_details=False)
                if prev.kind != "finetune" or prev.host != host.name:
                    raise InvalidInput(
                        f"resume_from {p.resume_from} is a {prev.kind} job on {prev.host}.",
                        f"Give a fine-tune job of host {host.name}, or a checkpoint path on it.",
                    )
                resume_path = prev.job_dir
            else:
                resume_path = p.resume_from
        uploads: dict[str, bytes] = {}
        dataset_ref = p.dataset
        if upload is not None:
            dataset_ref = f"{UPLOAD_NAME}{upload.suffix.lower()}"
            uploads[dataset_ref] = upload.read_bytes()
        spec = build_finetune_spec(p, host, plan, dataset_ref, resume_path)
        res = await engine.submit(
            spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run, uploads=uploads
        )
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
        what = (
            f"{p.method} of {p.model} with {plan.backend} on {host.name} "
            f"({where}): micro-batch {plan.per_device_batch_size} x GA "
            f"{plan.gradient_accumulation_steps}{mem}"
        )
        if p.dry_run:
            return SubmitFinetuneOutput(
                job_id=res.job_id,
                plan=plan,
                submit=res,
                summary=f"Dry run: {what}.",
                next_action="Submit again without dry_run to start it.",
            )
        return SubmitFinetuneOutput(
            job_id=res.job_id,
            plan=plan,
            submit=res,
            summary=f"Submitted {res.job_id}: {what}.",
            next_action=f"wait_for_job(job_id='{res.job_id}') or get_job_status to follow loss and ETA.",
        )

    add_tool(
        app,
        ToolSpec(
            "submit_finetune",
            "Start a LoRA/QLoRA/full fine-tune (Unsloth, or TRL+PEFT) planned to fit the GPU.",
            open_world=True,
        ),
        FinetuneInput,
        submit_finetune,
        SubmitFinetuneOutput,
    )
