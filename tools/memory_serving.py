"""Serving memory: vLLM's start-up budget (tools/serve/vllm_memory.py says which vLLM code each
term follows) and a transformers ``generate`` prefill, per GPU.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from runners.accelerators import TIERS, GpuTier
from tools.memory_arch import Parts, kv_per_token, mlp_act_width, weight_bytes
from tools.memory_settings import GIB, Settings, dtype_bytes
from tools.models import ModelArch
from tools.serve import vllm_memory as vm
from tools.serve.vllm_memory import VllmBudget

__all__ = ["VllmServing", "gib", "inference_parts", "vllm_budget", "vllm_server_budget", "vllm_serving"]


class VllmServing(BaseModel):
    """vLLM's own start-up budget for one GPU, as its log reports it (GiB unless said)."""

    requested_gib: float = Field(description="ceil(total x gpu_memory_utilization): vLLM's whole budget.")
    weights_gib: float = Field(description='"Model loading took X GiB" (LoRA buffers included).')
    activation_peak_gib: float = Field(description="Peak of the profile run (forward or sampler warm-up).")
    non_torch_gib: float = Field(description="Non-torch memory allocated after vLLM's memory snapshot.")
    cuda_graphs_gib: float = Field(description="CUDA graph memory taken from the budget (Model Runner V1's estimate).")
    cuda_graphs_captured_gib: float = Field(
        description="What capturing the graphs takes; with Model Runner V2 outside the budget, after the KV cache."
    )
    kv_cache_gib: float = Field(description='"Available KV cache memory".')
    kv_tokens: int = Field(description='"GPU KV cache size: N tokens".')
    max_model_len: int
    max_concurrency: float = Field(description='"Maximum concurrency for max_model_len tokens per request".')
    fits_one_sequence: bool = Field(description="vLLM starts: one max_model_len sequence fits the KV cache.")
    max_model_len_that_fits: int = Field(description="Longest context one sequence can have (vLLM's estimate).")
    max_num_batched_tokens: int
    max_num_seqs: int


def _lora_buffer_bytes(arch: ModelArch, s: Settings, tp: int) -> float:
    """vLLM's stacked LoRA buffers (--enable-lora): A [max_loras, r, in] and B [max_loras, out, r] per slice.

    vllm/lora/layers: every linear layer of the decoder gets them (q, k, v of the packed qkv,
    o, gate and up of the packed gate_up, down) in the model dtype; column-parallel layers
    shard B, row-parallel ones shard A (fully_sharded_loras off, vLLM's default).
    """
    r = s.serve_lora_rank
    if not r:
        return 0.0
    h, q, kv = arch.hidden_size, arch.q_dim, arch.kv_dim
    inter = arch.intermediate_size if not arch.is_moe else arch.shared_expert_intermediate_size
    column = [(h, q), (h, kv), (h, kv), (h, inter), (h, inter)]  # q, k, v, gate, up
    row = [(q, h), (inter, h)]  # o, down
    per_layer = sum(i + o / tp for i, o in column if o) + sum(i / tp + o for i, o in row if i)
    return s.max_loras * r * per_layer * arch.num_layers * dtype_bytes(s.dtype)


def vllm_budget(
    arch: ModelArch, s: Settings, tp: int, weights: float, gpu_gib: float, gpu_name: str | None = None
) -> VllmBudget:
    """One GPU's ``vllm serve`` budget (tools/serve/vllm_memory.py says which vLLM code each term follows).

    ``weights`` are the whole model's bytes as loaded; they are split over ``tp`` ranks.
    """
    h, V = arch.hidden_size, arch.vocab_size
    ab = dtype_bytes(s.dtype)
    mnbt_default, seqs_default = vm.batch_defaults(gpu_gib, gpu_name)
    tokens = s.mnbt or mnbt_default
    seqs = s.max_num_seqs or seqs_default
    reqs = min(seqs, tokens)  # profile_run: max_num_batched_tokens spread over min(max_num_seqs, tokens) requests
    inter = mlp_act_width(arch) / tp
    moe_extra = arch.experts_per_token * h if arch.is_moe else 0
    # The largest live set of one decoder layer, per token: residual + normed input + the
    # MLP's gate_up output and its activation (or the attention's q, k, v and output).
    per_tok = ab * (2 * h + max(3 * inter + moe_extra, (2 * arch.q_dim + 2 * arch.kv_dim) / tp))
    if arch.is_moe:
        per_tok += arch.num_experts * 4 * 2  # router logits (fp32) and their softmax
    forward = tokens * per_tok
    # _dummy_sampler_run: full-vocab logits on every rank (the logits processor gathers them),
    # while the forward's hidden states are still held.
    v2 = vm.uses_v2_runner(arch.is_moe, arch.model_type)
    if v2:
        sampler = reqs * V * vm.V2_SAMPLER_BYTES_PER_LOGIT + tokens * h * ab
    else:
        sampler = reqs * V * vm.SAMPLER_BYTES_PER_LOGIT + vm.TOPK_TOPP_PROGRAMS * V * 4 + tokens * h * ab
    full_kv, slide_kv = kv_per_token(arch, s, tp)
    graphs = _cudagraph_bytes(arch, s, tp, seqs, per_tok)
    smi = TIERS[gpu_name].memory_gib if gpu_name in TIERS else None
    return VllmBudget(
        total=vm.cuda_total_gib(gpu_gib, gpu_name, smi) * GIB,
        util=s.util,
        weights=weights / tp + _lora_buffer_bytes(arch, s, tp),
        forward_peak=forward,
        sampler_peak=sampler,
        non_torch=(vm.NON_TORCH_TP_GIB if tp > 1 else vm.NON_TORCH_GIB) * GIB,
        cuda_graphs=0.0 if v2 else graphs,
        graphs_outside=graphs if v2 else 0.0,
        page_bytes=vm.BLOCK_SIZE * full_kv,
        slide_page_bytes=vm.BLOCK_SIZE * slide_kv,
        sliding_window=arch.sliding_window,
        max_num_batched_tokens=tokens,
        max_num_seqs=seqs,
    )


def _cudagraph_bytes(arch: ModelArch, s: Settings, tp: int, seqs: int, per_tok: float) -> float:
    """vLLM's CUDA graph estimate (gpu_model_runner.profile_cudagraph_memory).

    The largest graph of a mode is captured for real (its pool holds one forward's live set at the
    largest capture size), every further graph costs a per-graph amount that grows with the layers
    (piecewise graphs are split at each attention). PIECEWISE graphs for every capture size and
    FULL decode graphs for sizes up to max_num_seqs (FULL_AND_PIECEWISE, the default), all twice
    with LoRA (graphs with and without adapters).
    """
    sizes = vm.cudagraph_capture_sizes(seqs)
    graphs = len(sizes) + len([x for x in sizes if x <= seqs])
    if s.serve_lora_rank:
        graphs *= 2
    first = sizes[-1] * per_tok
    return first + (graphs - 2) * arch.num_layers * vm.GRAPH_PER_LAYER_MIB * vm.MIB


def inference_parts(
    arch: ModelArch,
    s: Settings,
    tp: int,
    weights: float,
    out: Parts,
    gpu_gib: float | None,
    gpu_name: str | None = None,
) -> None:
    h, V = arch.hidden_size, arch.vocab_size
    ab = dtype_bytes(s.dtype)
    full_kv, slide_kv = kv_per_token(arch, s, tp)
    out.kv_per_token = full_kv + slide_kv
    window = min(s.seq_len, arch.sliding_window or s.seq_len)
    kv_needed = s.batch_size * (s.seq_len * full_kv + window * slide_kv)
    out.weights = weights / tp
    if s.backend == "vllm":
        # Without a GPU the budget is sized as on an H100-class card (vLLM's larger batch defaults).
        b = vllm_budget(arch, s, tp, weights, gpu_gib if gpu_gib is not None else 80.0, gpu_name)
        out.adapter = b.weights - out.weights
        # The peak is the forward's or the sampler warm-up's (shown as logits, beside the held hidden states).
        held = b.max_num_batched_tokens * h * ab
        out.activations = b.forward_peak if b.forward_peak >= b.sampler_peak else held
        out.logits = b.activation_peak - out.activations
        out.graphs = b.cuda_graphs + b.graphs_outside
        out.non_kv = b.non_kv
        out.allocator_overhead = b.non_torch + b.cuda_graphs + b.graphs_outside
        if gpu_gib is not None:  # vLLM takes its whole budget for KV
            out.budget = b
            out.kv_cache = max(0.0, b.kv_available)
        else:
            out.kv_cache = kv_needed
    else:  # transformers generate: KV as a DynamicCache, prefill activations, last-token logits
        tokens = s.batch_size * s.seq_len
        out.kv_cache = kv_needed
        out.activations = tokens * ab * (4 * h + 3 * mlp_act_width(arch))
        out.logits = s.batch_size * V * 4 * 2
        out.allocator_overhead = 0.06 * (out.activations + out.kv_cache) + 0.1 * GIB


# ------------------------------------------------------------------------------ tool level
def gib(x: float) -> float:
    return round(x / GIB, 2)


def vllm_server_budget(arch: ModelArch, s: Settings, tier: GpuTier, tp: int) -> VllmBudget:
    """vLLM's start-up budget for ``s`` on one GPU of ``tier`` at tensor-parallel size ``tp``."""
    return vllm_budget(arch, s, tp, weight_bytes(arch, s), tier.memory_gib, tier.id)


def vllm_serving(b: VllmBudget, max_model_len: int) -> VllmServing:
    """The budget as vLLM's start-up log reports it."""
    return VllmServing(
        requested_gib=gib(b.requested),
        weights_gib=gib(b.weights),
        activation_peak_gib=gib(b.activation_peak),
        non_torch_gib=gib(b.non_torch),
        cuda_graphs_gib=gib(b.cuda_graphs),
        cuda_graphs_captured_gib=gib(b.cuda_graphs + b.graphs_outside),
        kv_cache_gib=gib(b.kv_available),
        kv_tokens=b.kv_tokens(max_model_len),
        max_model_len=max_model_len,
        max_concurrency=round(b.max_concurrency(max_model_len), 2),
        fits_one_sequence=b.fits_one(max_model_len),
        max_model_len_that_fits=b.max_model_len_that_fits(max_model_len),
        max_num_batched_tokens=b.max_num_batched_tokens,
        max_num_seqs=b.max_num_seqs,
    )
