"""vLLM 0.26's own memory budget for ``vllm serve``, term by term as its code computes it.

Why a module of its own: the serving plan must say "fits" exactly when vLLM would serve,
and report the KV cache the way vLLM logs it. So each term follows the code that decides it
(vLLM 0.26.0, files under ``vllm/``):

* ``config/cache.py CacheConfig``: ``gpu_memory_utilization`` defaults to **0.92**.
* ``v1/worker/utils.py request_memory``: the budget is ``ceil(total x gpu_memory_utilization)``
  of the GPU's whole memory (not of what is free); the CUDA context, made before the
  snapshot, lives outside it — start-up refuses when less than the budget is free.
* ``v1/worker/gpu_worker.py determine_available_memory`` with ``utils/mem_utils.py
  memory_profiling``: available KV = budget - (weights + torch peak increase of the profile
  run + non-torch increase since the snapshot) - the runner's CUDA graph estimate.
* Which runner: ``config/vllm.py use_v2_model_runner`` picks Model Runner V2
  (``v1/worker/gpu/model_runner.py``) for every non-MoE generative model (and a few MoE
  architectures), V1 (``v1/worker/gpu_model_runner.py``) otherwise.
* V2: ``profile_run`` runs one forward of ``max_num_batched_tokens`` tokens (attention
  skipped) over ``min(max_num_seqs, tokens)`` requests, then its sampler on one row of
  bf16 logits per request, without top-k/top-p (``_dummy_sampler_run``);
  ``profile_cudagraph_memory`` returns 0, so the graphs, captured after the KV cache is
  allocated, take their memory from outside the budget.
* V1: ``profile_run`` the same forward, then ``_dummy_sampler_run`` with top-k/top-p (bf16
  logits, their fp32 copy in ``Sampler.forward``, fp32 probabilities and the exponential
  noise of ``random_sample``: 14 bytes per logit, plus the per-SM buffer of
  ``topk_topp_triton.py``); ``profile_cudagraph_memory`` estimates the graphs and the budget
  pays for them.
* ``engine/arg_utils.py get_batch_defaults``: ``vllm serve`` on a GPU of >= 70 GiB that is
  not an A100 defaults to 8192 batched tokens and 1024 sequences, else 2048 and 256.
* CUDA graphs: capture sizes from ``config/compilation.py`` (up to ``min(2 x max_num_seqs,
  512)``), PIECEWISE for each and FULL decode graphs up to ``max_num_seqs``, twice over with
  LoRA (``cudagraph_dispatcher.py _get_lora_cases``: graphs with and without adapters).
* ``v1/core/kv_cache_utils.py``: pages of 16 tokens; ``num_blocks = available // page //
  layers``; ``check_enough_kv_cache_memory`` needs ONE request of ``max_model_len`` to fit
  (``max_num_seqs`` is only the scheduler's cap); "GPU KV cache size" = ``int(concurrency x
  max_model_len)`` with concurrency = ``num_blocks / cdiv(max_model_len, 16)``
  (``get_max_concurrency_for_kv_cache_config``, ``get_kv_cache_capacity``).

The activation and graph terms are physics with the constants named below, checked against
vLLM 0.26's own log lines on an H200 (bench/serve_memory_gpu.py,
bench/data/serve_memory_gpu.jsonl, table in docs/serving.md): the KV estimate is within
0.4 % of vLLM's "Available KV cache memory" for Qwen2.5-7B, Llama-3.1-8B and Llama-3.2-1B
with LoRA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "BLOCK_SIZE",
    "VllmBudget",
    "batch_defaults",
    "cudagraph_capture_sizes",
    "uses_v2_runner",
]

GIB = 1024**3
MIB = 1024**2
BLOCK_SIZE = 16  # vLLM's default KV block (CacheConfig.block_size for CUDA attention backends)
DEFAULT_GPU_MEMORY_UTILIZATION = 0.92  # vllm/config/cache.py CacheConfig.gpu_memory_utilization
SAMPLER_BYTES_PER_LOGIT = 14.0  # V1: bf16 logits + fp32 copy + fp32 probs + fp32 noise (module docstring)
V2_SAMPLER_BYTES_PER_LOGIT = 2.0  # V2: the bf16 logits (no top-k/top-p in its warm-up; gumbel buffers are per block)
# Model Runner V2 serves these MoE architectures too (config/vllm.py DEFAULT_V2_MODEL_RUNNER_ARCHITECTURES).
V2_MOE_MODEL_TYPES = frozenset({"deepseek_v2", "granitemoe", "qwen2_moe", "longcat_flash_ngram", "inkling"})
TOPK_TOPP_PROGRAMS = 132  # topk_topp_triton: one fp32 vocab row per SM (H100/H200: 132 SMs)
NON_TORCH_GIB = 0.22  # after vLLM's snapshot, TP 1: measured 0.22 GiB for all three H200 rows
NON_TORCH_TP_GIB = 0.4  # with TP > 1: custom all-reduce buffers on top (vLLM #11251 logs 0.39 at TP 2)
CUDA_CONTEXT_GIB = 0.55  # made before the snapshot: must fit in (1 - gpu_memory_utilization)
# Per captured graph and decoder layer, beyond the largest graph: measured with vLLM 0.26 on an
# H200, 51 PIECEWISE + 51 FULL graphs: 0.89 GiB for 28 layers (Qwen2.5-7B), 0.98 GiB for 32
# (Llama-3.1-8B), i.e. 0.30 MiB per graph and layer (bench/data/serve_memory_gpu.jsonl).
GRAPH_PER_LAYER_MIB = 0.30
# What CUDA reports as the device's total (cudaMemGetInfo, which vLLM's budget multiplies), below
# nvidia-smi's figure by the driver's reservation; from vLLM's own "Free memory on device (free/total
# GiB)" lines: H200 139.8 (measured here, bench/data/serve_memory_gpu.jsonl; public logs 139.81),
# H100 80GB 79.18-79.19 (public logs); nvidia-smi shows 140.4 and 79.65.
CUDA_TOTAL_GIB = {"H200": 139.80, "H100": 79.18}
DRIVER_RESERVED_GIB = 0.5  # other tiers: nvidia-smi's total less about this much


def uses_v2_runner(is_moe: bool, model_type: str) -> bool:
    """vLLM 0.26's choice of model runner for a generative model (config/vllm.py use_v2_model_runner)."""
    return not is_moe or model_type in V2_MOE_MODEL_TYPES


def batch_defaults(gpu_memory_gib: float | None, gpu_name: str | None) -> tuple[int, int]:
    """(max_num_batched_tokens, max_num_seqs) that ``vllm serve`` picks for this GPU (arg_utils.get_batch_defaults)."""
    if gpu_memory_gib is not None and gpu_memory_gib >= 70 and "a100" not in (gpu_name or "").lower():
        return 8192, 1024
    return 2048, 256


def cuda_total_gib(gpu_gib: float, gpu_name: str | None, nvidia_smi_gib: float | None = None) -> float:
    """The total vLLM's budget is a share of, for a GPU whose nvidia-smi total is ``gpu_gib``.

    ``gpu_name`` None: ``gpu_gib`` already is CUDA's own figure (from a vLLM log). A tier whose
    memory was overridden in the host config (``nvidia_smi_gib`` differs) keeps the override.
    """
    if gpu_name is None:
        return gpu_gib
    known = CUDA_TOTAL_GIB.get(gpu_name)
    if known is not None and (nvidia_smi_gib is None or abs(nvidia_smi_gib - gpu_gib) < 0.01):
        return known
    return gpu_gib - DRIVER_RESERVED_GIB


def cudagraph_capture_sizes(max_num_seqs: int) -> list[int]:
    """vLLM's default capture sizes (config/compilation.py): 1, 2, 4, then by 8 to 256, by 16 beyond."""
    top = min(2 * max_num_seqs, 512)
    sizes = [1, 2, 4, *range(8, 256, 8), *range(256, top + 1, 16)]
    return [s for s in sizes if s <= top]


@dataclass(frozen=True)
class VllmBudget:
    """One GPU's budget as vLLM computes it (bytes), and what follows from it for the KV cache."""

    total: float
    util: float
    weights: float
    forward_peak: float  # the dummy forward of max_num_batched_tokens tokens
    sampler_peak: float  # the sampler warm-up on one row of logits per request
    non_torch: float
    cuda_graphs: float  # the runner's estimate, taken from the budget (V1); 0 for V2
    page_bytes: float  # one block of BLOCK_SIZE tokens over all full-attention layers
    graphs_outside: float = 0.0  # graphs captured after the KV cache, outside the budget (V2)
    slide_page_bytes: float = 0.0  # the same over sliding-window layers
    sliding_window: int | None = None
    max_num_batched_tokens: int = 8192
    max_num_seqs: int = 1024

    @property
    def requested(self) -> float:
        return float(math.ceil(self.total * self.util))

    @property
    def activation_peak(self) -> float:
        """vLLM's "peak activation" (torch peak increase of profile_run): the larger of its two phases."""
        return max(self.forward_peak, self.sampler_peak)

    @property
    def non_kv(self) -> float:
        return self.weights + self.activation_peak + self.non_torch + self.cuda_graphs

    @property
    def kv_available(self) -> float:
        """vLLM's "Available KV cache memory" (may be negative: then vLLM refuses to start)."""
        return self.requested - self.non_kv

    def _blocks(self) -> int:
        per_block = self.page_bytes + self.slide_page_bytes
        return max(0, int(self.kv_available // per_block)) if per_block else 0

    def _blocks_per_request(self, max_model_len: int) -> int:
        full = math.ceil(max_model_len / BLOCK_SIZE)
        if not self.slide_page_bytes:
            return full
        return full  # one pool for both groups: a request's full-attention pages bound it

    def one_request_bytes(self, max_model_len: int) -> float:
        """KV bytes one request of ``max_model_len`` needs (kv_cache_interface max_memory_usage_bytes)."""
        full = math.ceil(max_model_len / BLOCK_SIZE) * self.page_bytes
        if not self.slide_page_bytes or not self.sliding_window:
            return full + math.ceil(max_model_len / BLOCK_SIZE) * self.slide_page_bytes
        span = min(max_model_len, self.sliding_window - 1 + self.max_num_batched_tokens)
        return full + (math.ceil(span / BLOCK_SIZE) + 1) * self.slide_page_bytes

    def fits_one(self, max_model_len: int) -> bool:
        """vLLM's start-up check (kv_cache_utils._check_enough_kv_cache_memory)."""
        return self.kv_available > 0 and self.one_request_bytes(max_model_len) <= self.kv_available

    def max_concurrency(self, max_model_len: int) -> float:
        """ "Maximum concurrency for L tokens per request" (get_max_concurrency_for_kv_cache_config)."""
        return self._blocks() / self._blocks_per_request(max_model_len)

    def kv_tokens(self, max_model_len: int) -> int:
        """ "GPU KV cache size: N tokens" (get_kv_cache_capacity: int(concurrency x max_model_len))."""
        return int(self.max_concurrency(max_model_len) * max_model_len)

    def max_model_len_that_fits(self, limit: int) -> int:
        """The longest max_model_len up to ``limit`` whose one request fits (estimate_max_model_len's search)."""
        lo, hi, best = 1, limit, 0
        while lo <= hi:
            mid = (lo + hi) // 2
            if self.one_request_bytes(mid) <= self.kv_available:
                best, lo = mid, mid + 1
            else:
                hi = mid - 1
        return best

    def context_fits_outside(self) -> bool:
        """The CUDA context (and V2's graphs) must fit beside the budget: vLLM refuses to start when
        less than the budget is free, and V2 captures its graphs after the KV cache took its share."""
        return CUDA_CONTEXT_GIB * GIB + self.requested + self.graphs_outside <= self.total
