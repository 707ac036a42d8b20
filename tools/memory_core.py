"""The estimator's fast core: per-GPU bytes for one configuration, and whether it fits a tier.

``breakdown_bytes`` is what tools/plan.py calls many times (pure, no I/O, about 20 us);
training physics is in tools/memory_training.py, serving in tools/memory_serving.py.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from runners.accelerators import GpuTier
from tools.memory_arch import Parts, weight_bytes
from tools.memory_serving import inference_parts, vllm_server_budget
from tools.memory_settings import GIB, Settings, tp_is_valid
from tools.memory_training import training_parts
from tools.models import ModelArch

__all__ = [
    "CUDA_CONTEXT_GIB",
    "UNSLOTH_EXTRA_CONTEXT_GIB",
    "TierFit",
    "breakdown_bytes",
    "context_bytes",
    "fits_on",
    "min_gpus",
]

SERVING_CONTEXT_GIB = 0.55  # vLLM's start-up log: torch + CUDA context beside its budget (tools/serve/vllm_memory.py)
# torch + CUDA kernels (loaded lazily) + cuBLAS handles: device used - allocator reserved. Read before
# the first kernel, as every transformers and TRL row in bench/data was: 0.60 GiB on an H200; read after
# a training step (the rows of 7ed3cb3's script): 0.75. The first reading is used, so that the estimate
# and those rows mean the same thing; the 0.15 GiB lies inside the band of every transformers row read
# the new way (their reserved - allocated gaps are 1-8 GiB).
CUDA_CONTEXT_GIB = 0.60
# Unsloth's Triton kernels: 0.82 GiB in all, read after the step. (The 1.31 GiB of the older rows counted
# the measuring script's own parent process, which had opened a CUDA context by importing unsloth.)
UNSLOTH_EXTRA_CONTEXT_GIB = 0.22


def context_bytes(s: Settings) -> float:
    """The CUDA context per GPU (outside the caching allocator)."""
    if s.task == "inference":
        return SERVING_CONTEXT_GIB * GIB
    return (CUDA_CONTEXT_GIB + (UNSLOTH_EXTRA_CONTEXT_GIB if s.backend == "unsloth" else 0.0)) * GIB


class TierFit(BaseModel):
    fits: bool = Field(description="Fits on at most the tier's usual GPUs per node.")
    min_gpus: int | None = Field(description="Fewest GPUs of this tier that fit; null if none up to 8.")
    headroom_gib: float = Field(description="Free GiB per GPU at min_gpus (negative: short by that much on 1).")


def breakdown_bytes(
    arch: ModelArch,
    s: Settings,
    *,
    tp: int | None = None,
    num_gpus: int | None = None,
    zero_stage: int | None = None,
    gpu_gib: float | None = None,
    gpu_name: str | None = None,
) -> Parts:
    """Per-GPU bytes for one configuration. Fast (no allocation beyond one dataclass)."""
    tp = s.tp if tp is None else tp
    n = s.num_gpus if num_gpus is None else num_gpus
    zero = s.zero_stage if zero_stage is None else zero_stage
    out = Parts(cuda_context=context_bytes(s))
    weights = weight_bytes(arch, s)
    if s.task == "inference":
        inference_parts(arch, s, tp, weights, out, gpu_gib, gpu_name)
    else:
        training_parts(arch, s, weights, n, zero, out)
    return out


def fits_on(arch: ModelArch, s: Settings, tier: GpuTier, n: int) -> tuple[bool, float]:
    """(fits, headroom GiB per GPU) for ``n`` GPUs of ``tier`` using the settings' own parallelism."""
    mem = tier.memory_gib * GIB
    if s.task == "inference":
        if s.backend == "vllm":
            # vLLM's own rule: it starts when ONE request of max_model_len fits the KV cache
            # (kv_cache_utils.check_enough_kv_cache_memory); max_num_seqs only caps the scheduler.
            b = vllm_server_budget(arch, s, tier, n)
            head = b.kv_available - b.one_request_bytes(s.seq_len)
            return b.fits_one(s.seq_len) and b.context_fits_outside(), head / GIB
        parts = breakdown_bytes(arch, s, tp=n, num_gpus=n)
    else:
        zero = s.zero_stage if n == s.num_gpus else (3 if n > 1 else 0)
        parts = breakdown_bytes(arch, s, num_gpus=n, zero_stage=zero)
    head = mem - parts.total()
    return head >= 0, head / GIB


def min_gpus(arch: ModelArch, s: Settings, tier: GpuTier) -> TierFit:
    """The fewest GPUs of ``tier`` (1, 2, 4, 8) that fit; Unsloth and transformers generate use one."""
    candidates = [1, 2, 4, 8]
    first_head = None
    for n in candidates:
        if s.task == "inference" and s.backend == "vllm" and not tp_is_valid(arch, n):
            continue
        if s.task == "inference" and s.backend != "vllm" and n > 1:
            break
        if s.task != "inference" and s.backend == "unsloth" and n > 1:
            break
        ok, head = fits_on(arch, s, tier, n)
        if first_head is None:
            first_head = head
        if ok:
            return TierFit(fits=n <= tier.typical_max_per_node, min_gpus=n, headroom_gib=round(head, 2))
    return TierFit(fits=False, min_gpus=None, headroom_gib=round(first_head or 0.0, 2))
