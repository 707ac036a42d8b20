"""Fit a workload to a GPU tier: TP size, quantization, context, micro-batch, checkpointing.

Pure functions over the estimator's core (tools/memory_core.py). Preference order keeps quality and
speed first and changes only what must change. Serving follows vLLM's own rule (one
sequence of ``max_model_len`` must fit the KV cache; ``max_num_seqs`` is only a cap):
the requested settings as they are; then more GPUs (the smallest tensor-parallel size
that fits *and* divides the attention and KV heads, as vLLM requires); then a shorter
``max_model_len``; quantization (FP8 where the tier has it, else 4-bit bitsandbytes)
only when the weights leave no room for a useful context. For training: no gradient
checkpointing if it fits (faster), then checkpointing, then a smaller micro-batch
with gradient accumulation to keep the effective batch, then an 8-bit optimizer,
QLoRA, and ZeRO-3 across GPUs (HF only; Unsloth runs on one GPU).
"""

from __future__ import annotations

import math
from dataclasses import replace

from pydantic import BaseModel, Field

from runners.accelerators import TIERS, GpuTier
from runners.errors import InvalidInput
from tools.memory_core import TierFit, breakdown_bytes, fits_on
from tools.memory_serving import vllm_server_budget
from tools.memory_settings import GIB, HF_STACK, Settings, tp_is_valid
from tools.models import ModelArch
from tools.serve.vllm_memory import BLOCK_SIZE

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
    kv_cache_gib: float | None = Field(None, description="Serving: vLLM's 'Available KV cache memory' per GPU.")
    kv_tokens: int | None = Field(None, description="Serving: vLLM's 'GPU KV cache size' in tokens.")
    max_concurrency: float | None = Field(
        None, description="Serving: vLLM's 'Maximum concurrency' at max_model_len tokens per request."
    )
    weights_gib: float | None = Field(None, description="Serving: weights per GPU as vLLM loads them.")
    notes: list[str] = []
    summary: str


# The shortest context a plan shortens max_model_len to before it quantizes instead (or the
# model's own, when that is shorter): weights that leave room for less are weights that don't fit.
MIN_SERVE_CONTEXT = 4096
# Our plan's names for the in-flight methods vLLM can apply to a 16-bit checkpoint, and what the
# host needs for each: fp8 is built into vLLM (GPUs with fp8 support), bitsandbytes (4-bit only
# in vLLM) needs the package on the host's interpreter.
INFLIGHT_QUANT = {"fp8": "fp8", "bnb-4bit": "bitsandbytes"}


def _fallback_quants(s: Settings, tier: GpuTier, methods: frozenset[str] | None) -> list[str]:
    """In-flight quantizations to try, best first, that this tier (and host, when known) can run."""
    out = []
    for ours, method in INFLIGHT_QUANT.items():
        if ours == "fp8" and not tier.fp8:
            continue
        if methods is not None and method not in methods:
            continue
        out.append(ours)
    return out


def _longest(arch: ModelArch, s: Settings, tier: GpuTier, tps: list[int]) -> tuple[int, int]:
    """(TP, max_model_len) giving the longest context one sequence can have (ties: fewest GPUs)."""
    best = (tps[0], 0)
    for tp in tps:
        b = vllm_server_budget(arch, s, tier, tp)
        if not b.context_fits_outside():
            continue
        n = b.max_model_len_that_fits(s.seq_len) // BLOCK_SIZE * BLOCK_SIZE
        if n > best[1]:
            best = (tp, n)
    return best


def plan_inference(
    arch: ModelArch,
    s: Settings,
    tier: GpuTier,
    max_gpus: int | None = None,
    *,
    allow_quantization: bool = True,
    methods: frozenset[str] | None = None,
) -> Plan:
    """vLLM's own rules: the smallest TP (dividing heads and KV heads) where ONE sequence of
    ``s.seq_len`` fits the KV cache; else the longest context that fits (not under
    MIN_SERVE_CONTEXT); only then an in-flight quantization the host can run (``methods``:
    vLLM method names it has; None: every method the tier supports).
    """
    max_gpus = max_gpus or tier.typical_max_per_node
    tps = [t for t in (1, 2, 4, 8, 16) if t <= max_gpus and tp_is_valid(arch, t)]
    if not tps:
        raise InvalidInput(f"No tensor-parallel size up to {max_gpus} divides {arch.name}'s heads.", "Allow more GPUs.")
    floor = min(s.seq_len, MIN_SERVE_CONTEXT)
    candidates = [(s, None)]
    if allow_quantization and s.quantization == "none":
        candidates += [(replace(s, quantization=q), q) for q in _fallback_quants(s, tier, methods)]
    notes: list[str] = []
    for qs, q in candidates:
        for tp in tps:
            if fits_on(arch, qs, tier, tp)[0]:
                if q is not None:
                    notes.append(
                        f"Quantized to {q}: the 16-bit weights leave no room for a {floor}-token sequence on "
                        f"{max_gpus}x {tier.id}."
                    )
                return _inf_plan(arch, qs, tier, tp, s.seq_len, True, notes)
        tp, n = _longest(arch, qs, tier, tps)
        if n >= floor:
            if q is not None:
                notes.append(f"Quantized to {q}: the 16-bit weights don't fit {max_gpus}x {tier.id}.")
            notes.append(
                f"max_model_len cut from {s.seq_len} to {n}: one {s.seq_len}-token sequence does not fit the KV cache."
            )
            return _inf_plan(arch, replace(qs, seq_len=n), tier, tp, n, True, notes)
    qs = candidates[-1][0]
    notes.append(
        f"Does not fit {max_gpus}x {tier.id} even at {qs.quantization}"
        f"{'' if allow_quantization else ' (quantization not allowed)'}; use a larger tier or more GPUs."
    )
    return _inf_plan(arch, qs, tier, tps[-1], s.seq_len, False, notes)


def _inf_plan(arch: ModelArch, s: Settings, tier: GpuTier, tp: int, mml: int, ok: bool, notes: list[str]) -> Plan:
    parts = breakdown_bytes(arch, s, tp=tp, num_gpus=tp, gpu_gib=tier.memory_gib, gpu_name=tier.id)
    b = parts.budget
    assert b is not None
    est = parts.total() / GIB
    kv_tokens, conc = b.kv_tokens(mml), b.max_concurrency(mml)
    head = (b.kv_available - b.one_request_bytes(mml)) / GIB
    summary = (
        f"{tp}x {tier.id}, TP {tp}, {s.quantization if s.quantization != 'none' else s.dtype}, "
        f"max_model_len {mml}: KV cache {max(0.0, b.kv_available) / GIB:.1f} GiB = {kv_tokens:,} tokens, "
        f"maximum concurrency {conc:.2f}x at {mml:,} tokens per request" + ("" if ok else " — does not fit")
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
        kv_cache_gib=round(max(0.0, b.kv_available) / GIB, 2),
        kv_tokens=kv_tokens,
        max_concurrency=round(conc, 2),
        weights_gib=round(b.weights / GIB, 2),
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
                    ga = math.ceil(target / (mb * n)) > 1  # accumulation keeps a full fine-tune's gradients
                    cand = replace(
                        v, gradient_checkpointing=ckpt, batch_size=mb, num_gpus=n, zero_stage=zero, grad_accumulation=ga
                    )
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
