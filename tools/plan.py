"""Fit a workload to a GPU tier: TP size, quantization, context, micro-batch, checkpointing.

Pure functions over :mod:`tools.memory`'s core. Preference order keeps quality and
speed first and changes only what must change: the requested settings as they are;
then more GPUs (the smallest tensor-parallel size that fits *and* divides the
attention and KV heads, as vLLM requires); then quantization (FP8 where the tier has
it, else NF4); then a shorter ``max_model_len``. For training: no gradient
checkpointing if it fits (faster), then checkpointing, then a smaller micro-batch
with gradient accumulation to keep the effective batch, then an 8-bit optimizer,
QLoRA, and ZeRO-3 across GPUs (HF only; Unsloth runs on one GPU).
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import BaseModel, Field

from runners.errors import InvalidInput
from tools.gpus import TIERS, GpuTier
from tools.memory import GIB, HF_STACK, Settings, TierFit, breakdown_bytes, fits_on, tp_is_valid
from tools.models import ModelArch

__all__ = ["Plan", "plan_inference", "plan_training", "recommend"]

TRAIN_RESERVE = 0.05  # keep 5% of the card free for fragmentation and stray buffers


class Plan(BaseModel):
    """A concrete configuration for one GPU tier, and how much room it leaves."""

    gpu: str
    num_gpus: int
    tensor_parallel_size: int = 1
    quantization: str
    max_model_len: int | None = None
    micro_batch_size: int | None = None
    gradient_accumulation_steps: int | None = None
    gradient_checkpointing: bool | None = None
    zero_stage: int | None = None
    optimizer: str | None = None
    task: str
    estimated_gib: float = Field(description="Peak per GPU for this plan.")
    headroom_gib: float
    fits: bool
    notes: list[str] = []
    summary: str


def _inference_quants(s: Settings, tier: GpuTier) -> list[str]:
    if s.quantization != "none":
        return [s.quantization]
    return ["none", "fp8" if tier.fp8 else "bnb-8bit", "bnb-4bit"]


def plan_inference(arch: ModelArch, s: Settings, tier: GpuTier, max_gpus: int | None = None) -> Plan:
    """Smallest TP (dividing heads and KV heads) that serves ``s`` on ``tier``, quantizing only if needed."""
    max_gpus = max_gpus or tier.typical_max_per_node
    tps = [t for t in (1, 2, 4, 8, 16) if t <= max_gpus and tp_is_valid(arch, t)]
    if not tps:
        raise InvalidInput(f"No tensor-parallel size up to {max_gpus} divides {arch.name}'s heads.", "Allow more GPUs.")
    notes: list[str] = []
    for quant in _inference_quants(s, tier):
        qs = replace(s, quantization=quant)
        for tp in tps:
            ok, head = fits_on(arch, qs, tier, tp)
            if ok:
                if quant != s.quantization:
                    notes.append(f"Quantized to {quant}: the 16-bit weights don't fit {max_gpus}x {tier.id}.")
                return _inf_plan(arch, qs, tier, tp, s.seq_len, head, True, notes)
    # Nothing fits at this context: keep the best layout and shorten max_model_len.
    qs = replace(s, quantization=_inference_quants(s, tier)[-1])
    tp = tps[-1]
    parts = breakdown_bytes(arch, qs, tp=tp, num_gpus=tp, gpu_gib=tier.memory_gib)
    per_seq = parts.kv_cache / max(parts.kv_per_token, 1) / qs.batch_size
    if per_seq >= 256:
        mml = int(per_seq // 16 * 16)
        notes.append(f"max_model_len cut from {s.seq_len} to {mml} to fit {qs.batch_size} sequence(s).")
        return _inf_plan(arch, replace(qs, seq_len=mml), tier, tp, mml, 0.0, True, notes)
    notes.append(f"Does not fit {max_gpus}x {tier.id} even at {qs.quantization}; use a larger tier or more nodes.")
    return _inf_plan(
        arch, qs, tier, tp, s.seq_len, -(parts.non_kv - tier.memory_gib * GIB * qs.util) / GIB, False, notes
    )


def _inf_plan(
    arch: ModelArch, s: Settings, tier: GpuTier, tp: int, mml: int, head: float, ok: bool, notes: list[str]
) -> Plan:
    parts = breakdown_bytes(arch, s, tp=tp, num_gpus=tp, gpu_gib=tier.memory_gib)
    est = parts.total() / GIB
    kv_tokens = int(parts.kv_cache // parts.kv_per_token) if parts.kv_per_token else 0
    summary = (
        f"{tp}x {tier.id}, TP {tp}, {s.quantization if s.quantization != 'none' else s.dtype}, "
        f"max_model_len {mml}: KV {kv_tokens:,} tokens ({kv_tokens / mml:.1f} sequences)"
        + ("" if ok else " — does not fit")
    )
    return Plan(
        gpu=tier.id,
        num_gpus=tp,
        tensor_parallel_size=tp,
        quantization=s.quantization,
        max_model_len=mml,
        task=s.task,
        estimated_gib=round(est, 2),
        headroom_gib=round(head, 2),
        fits=ok,
        notes=notes,
        summary=summary,
    )


def plan_training(
    arch: ModelArch, s: Settings, tier: GpuTier, target_batch: int | None = None, max_gpus: int | None = None
) -> Plan:
    """Micro-batch, accumulation, checkpointing (and if needed 8-bit Adam, QLoRA, ZeRO-3) for ``tier``."""
    target = target_batch or s.batch_size * s.num_gpus
    max_gpus = max_gpus or tier.typical_max_per_node
    mem = tier.memory_gib * GIB
    limit = mem * (1 - TRAIN_RESERVE)
    gpu_counts = [s.num_gpus] + ([n for n in (2, 4, 8) if s.num_gpus < n <= max_gpus] if s.backend in HF_STACK else [])
    variants: list[tuple[Settings, str | None]] = [(s, None)]
    if s.optimizer == "adamw":
        variants.append((replace(s, optimizer="adamw_8bit"), "8-bit AdamW to shrink optimizer states."))
    if s.task == "lora":
        variants.append((replace(s, task="qlora", quantization="bnb-4bit"), "QLoRA: NF4 base weights."))
    for n in gpu_counts:
        for v, why in variants:
            zero = v.zero_stage if n == s.num_gpus else 3
            if v.optimizer != s.optimizer and n > 1 and zero >= 1:
                continue  # bitsandbytes' 8-bit Adam over FSDP / ZeRO shards is not verified: offload or GPUs instead
            for ckpt in [False, True] if not v.gradient_checkpointing else [True]:
                mb = v.batch_size
                while mb >= 1:
                    cand = replace(v, gradient_checkpointing=ckpt, batch_size=mb, num_gpus=n, zero_stage=zero)
                    tot = breakdown_bytes(arch, cand, num_gpus=n, zero_stage=zero).total()
                    if tot <= limit:
                        notes = [why] if why else []
                        if n != s.num_gpus:
                            notes.append(f"{n} GPUs with ZeRO-3 to shard weights, gradients and states.")
                        if mb < s.batch_size:
                            notes.append(f"Micro-batch {mb} with accumulation keeps the effective batch {target}.")
                        return _train_plan(cand, tier, n, zero, mb, target, tot, mem, True, notes)
                    mb //= 2
    worst = replace(s, gradient_checkpointing=True, batch_size=1)
    tot = breakdown_bytes(arch, worst).total()
    return _train_plan(
        worst,
        tier,
        s.num_gpus,
        s.zero_stage,
        1,
        target,
        tot,
        mem,
        False,
        [f"Does not fit {tier.id} even at micro-batch 1 with checkpointing; shorten seq_len or use a larger tier."],
    )


def _train_plan(
    s: Settings,
    tier: GpuTier,
    n: int,
    zero: int,
    mb: int,
    target: int,
    tot: float,
    mem: float,
    ok: bool,
    notes: list[str],
) -> Plan:
    ga = max(1, math.ceil(target / (mb * n)))
    summary = (
        f"{n}x {tier.id}, {s.task} {s.quantization if s.quantization != 'none' else s.dtype}, micro-batch "
        f"{mb} x GA {ga} (effective {mb * ga * n}), seq {s.seq_len}, checkpointing "
        f"{'on' if s.gradient_checkpointing else 'off'}: {tot / GIB:.1f} of {mem / GIB:.0f} GiB"
        + ("" if ok else " — does not fit")
    )
    return Plan(
        gpu=tier.id,
        num_gpus=n,
        quantization=s.quantization,
        micro_batch_size=mb,
        gradient_accumulation_steps=ga,
        gradient_checkpointing=s.gradient_checkpointing,
        zero_stage=zero if n > 1 else None,
        optimizer=s.optimizer,
        task=s.task,
        estimated_gib=round(tot / GIB, 2),
        headroom_gib=round((mem - tot) / GIB, 2),
        fits=ok,
        notes=notes,
        summary=summary,
    )


def recommend(arch: ModelArch, s: Settings, tier: GpuTier | None, fits: dict[str, TierFit]) -> Plan:
    """The plan for ``tier``, or (no tier given) for the smallest single GPU that fits, else H100."""
    if tier is None:
        single = [t for t in TIERS.values() if fits[t.id].min_gpus == 1]
        tier = min(single, key=lambda t: t.memory_gib) if single else TIERS["H100"]
    if s.task == "inference":
        if s.backend != "vllm":
            parts = breakdown_bytes(arch, s)
            tot = parts.total()
            mem = tier.memory_gib * GIB
            return Plan(
                gpu=tier.id,
                num_gpus=1,
                quantization=s.quantization,
                max_model_len=s.seq_len,
                task=s.task,
                estimated_gib=round(tot / GIB, 2),
                headroom_gib=round((mem - tot) / GIB, 2),
                fits=tot <= mem,
                summary=f"1x {tier.id}: {tot / GIB:.1f} GiB of {mem / GIB:.0f}",
            )
        return plan_inference(arch, s, tier, max_gpus=max(s.num_gpus, tier.typical_max_per_node))
    return plan_training(arch, s, tier)
