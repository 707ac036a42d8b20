"""estimate_memory: GPU memory per device for serving and fine-tuning, as a typed result.

The tool level over the pure core (tools/memory_core.py ``breakdown_bytes``): rounds the
parts into GiB, fits every GPU tier, adds a plan (tools/plan.py), the assumptions
(tools/memory_notes.py) and the regime the estimate is confident in or extrapolates to
(tools/memory_confidence.py). No torch import: the controller stays light.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from runners.accelerators import TIERS, GpuTier, parse_accelerator
from tools.memory_arch import param_counts
from tools.memory_confidence import Confidence, confidence
from tools.memory_core import TierFit, breakdown_bytes, min_gpus
from tools.memory_notes import assumptions
from tools.memory_serving import VllmServing, gib, vllm_serving
from tools.memory_settings import GIB, Backend, MemoryInput, Task, resolve_settings
from tools.models import resolve_model
from tools.plan import recommend

__all__ = ["Breakdown", "MemoryResult", "ParamCounts", "estimate_memory"]


class Breakdown(BaseModel):
    """GiB per GPU; the parts sum to total_gib."""

    weights: float = 0.0
    kv_cache: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    gradients: float = 0.0
    optimizer_states: float = 0.0
    adapter: float = 0.0
    cuda_context: float = 0.0
    allocator_overhead: float = 0.0


class ParamCounts(BaseModel):
    total: int
    trainable: int
    active: int = Field(description="Parameters used per token (differs from total for MoE).")


class MemoryResult(BaseModel):
    model: str
    model_source: str
    task: Task
    backend: Backend
    total_gib: float = Field(description="Peak per GPU as nvidia-smi shows it.")
    breakdown_gib: Breakdown
    params: ParamCounts
    fits: dict[str, TierFit]
    max_kv_tokens: int | None = Field(None, description="vLLM's KV cache size in tokens (inference with a gpu).")
    max_concurrency: float | None = Field(None, description="vLLM's maximum concurrency at seq_len tokens per request.")
    vllm: VllmServing | None = Field(None, description="vLLM's budget term by term (inference on a given gpu).")
    recommendation: dict | None = Field(None, description="A plan (tools/plan.py) that fits the workload.")
    assumptions: list[str]
    confidence: Confidence | None = Field(
        None, description="The measured regime this estimate falls in, and what it extrapolates beyond it."
    )
    summary: str


def estimate_memory(p: MemoryInput, *, with_plan: bool = True) -> MemoryResult:
    """Estimate peak memory per GPU for ``p``; raises InvalidInput / NotFound on bad input."""
    arch = resolve_model(p.model)
    tier: GpuTier | None = None
    if p.gpu:
        acc = parse_accelerator(p.gpu)
        tier = acc.tier
        if (p.num_gpus is None and ":" in p.gpu) or (p.num_gpus is None and acc.count > 1):
            p = p.model_copy(update={"num_gpus": acc.count})
    s = resolve_settings(p, arch)
    parts = breakdown_bytes(arch, s, gpu_gib=tier.memory_gib if tier else None, gpu_name=tier.id if tier else None)
    total, active, _ = param_counts(arch)
    trainable = parts.trainable if s.task != "inference" else 0
    bd = Breakdown(
        weights=gib(parts.weights),
        kv_cache=gib(parts.kv_cache),
        activations=gib(parts.activations),
        logits=gib(parts.logits),
        gradients=gib(parts.gradients),
        optimizer_states=gib(parts.optimizer_states),
        adapter=gib(parts.adapter),
        cuda_context=gib(parts.cuda_context),
        allocator_overhead=gib(parts.allocator_overhead),
    )
    total_gib = round(parts.total() / GIB, 2)
    fits = {tid: min_gpus(arch, s, t) for tid, t in TIERS.items()}
    max_kv = conc = None
    vllm = None
    if parts.budget is not None:
        vllm = vllm_serving(parts.budget, s.seq_len)
        max_kv, conc = vllm.kv_tokens, vllm.max_concurrency
    rec = None
    if with_plan:
        rec = recommend(arch, s, tier, fits).model_dump()
    where = f" on {tier.id}" if tier else ""
    summary = (
        f"{arch.name} {s.task} ({s.backend}, {s.quantization if s.quantization != 'none' else s.dtype}, "
        f"seq {s.seq_len} x batch {s.batch_size}{', TP ' + str(s.tp) if s.tp > 1 else ''}): "
        f"{total_gib:.1f} GiB per GPU{where}"
    )
    if vllm is not None:
        summary += (
            f"; vLLM's KV cache {vllm.kv_cache_gib:g} GiB = {vllm.kv_tokens:,} tokens, maximum concurrency "
            f"{vllm.max_concurrency:.2f}x at {s.seq_len:,} tokens per request"
            + (
                ""
                if vllm.fits_one_sequence
                else f" (one such request does not fit: at most {vllm.max_model_len_that_fits:,})"
            )
        )
    if tier is not None:
        f = fits[tier.id]
        summary += f"; fits {tier.id}: {'yes' if f.fits else 'no'}" + (
            f" with {f.min_gpus} GPU{'s' if f.min_gpus and f.min_gpus > 1 else ''}" if f.min_gpus else ""
        )
    else:
        smallest = min(
            (t for t in TIERS.values() if fits[t.id].min_gpus == 1), key=lambda t: t.memory_gib, default=None
        )
        summary += f"; smallest single GPU that fits: {smallest.id if smallest else 'none'}"
    return MemoryResult(
        model=arch.name,
        model_source=arch.source,
        task=s.task,
        backend=s.backend,  # type: ignore[arg-type]
        total_gib=total_gib,
        breakdown_gib=bd,
        params=ParamCounts(total=total, trainable=trainable, active=active),
        fits=fits,
        max_kv_tokens=max_kv,
        max_concurrency=conc,
        vllm=vllm,
        recommendation=rec,
        assumptions=assumptions(arch, s, tier),
        confidence=confidence(arch, s),
        summary=summary + ".",
    )
