"""What a model's shapes put on a GPU, before any software's behaviour: parameter counts,
weight bytes by precision, LoRA adapter sizes, MLP widths, KV bytes per token; and
``Parts``, the per-GPU byte breakdown every estimate fills in.
"""

from __future__ import annotations

from dataclasses import dataclass

from tools.memory_settings import HF_STACK, Settings, dtype_bytes
from tools.models import ModelArch
from tools.serve.vllm_memory import VllmBudget

__all__ = ["Parts", "kv_per_token", "lora_params", "mlp_act_width", "param_counts", "weight_bytes"]

_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + int8 absmax per 64 + fp32 per 256 blocks (double quant)
_INT8_BYTES = 1.0 + 4 / 4096  # LLM.int8 row statistics
_GROUP_BYTES = 2.5 / 128  # AWQ/GPTQ: fp16 scale + 4-bit zero per group of 128


@dataclass
class Parts:
    """Bytes per GPU (floats), plus counts; the core's result before rounding into models."""

    weights: float = 0.0
    kv_cache: float = 0.0
    activations: float = 0.0
    logits: float = 0.0
    gradients: float = 0.0
    optimizer_states: float = 0.0
    adapter: float = 0.0
    cuda_context: float = 0.0
    allocator_overhead: float = 0.0
    kv_per_token: float = 0.0  # bytes per token per GPU, all layers
    non_kv: float = 0.0  # vLLM: weights + profile peak + non-torch (its budget minus KV)
    graphs: float = 0.0
    trainable: int = 0
    budget: VllmBudget | None = None  # vLLM serving on a known GPU: its start-up budget

    def total(self) -> float:
        return (
            self.weights
            + self.kv_cache
            + self.activations
            + self.logits
            + self.gradients
            + self.optimizer_states
            + self.adapter
            + self.cuda_context
            + self.allocator_overhead
        )


def param_counts(arch: ModelArch) -> tuple[int, int, int]:
    total, active, linear = arch.param_counts()
    if arch.checkpoint_params and arch.stored_quantization == "none":
        scale = arch.checkpoint_params / total
        return arch.checkpoint_params, int(active * scale), int(linear * min(scale, 1.0))
    return total, active, linear


def weight_bytes(arch: ModelArch, s: Settings) -> float:
    """Whole-model weight bytes as loaded (before sharding)."""
    total, _, linear = param_counts(arch)
    other = total - linear  # embeddings, lm_head, norms, vision tower: kept in 16-bit
    q = s.quantization
    if q == "none":
        return total * dtype_bytes(s.dtype)
    if q in ("awq", "gptq", "fp8") and arch.stored_quantization == q and arch.checkpoint_bytes:
        return float(arch.checkpoint_bytes)
    other_b = 4 if (s.task == "qlora" and s.backend in HF_STACK) else 2  # prepare_model_for_kbit_training
    per = {"bnb-4bit": _NF4_BYTES, "bnb-8bit": _INT8_BYTES, "fp8": 1.0 + 4 / 4096}.get(
        q, (arch.quant_bits or 4) / 8 + _GROUP_BYTES
    )
    return linear * per + other * other_b


def lora_params(arch: ModelArch, s: Settings) -> int:
    """Trainable LoRA parameters: r x (in + out) per adapted module; routed experts are not targeted."""
    h, r = arch.hidden_size, s.lora_r
    dims = {
        "q_proj": (h, arch.q_dim),
        "k_proj": (h, arch.kv_dim),
        "v_proj": (h, arch.kv_dim),
        "o_proj": (arch.q_dim, h),
    }
    if arch.is_mla:
        dims["k_proj"] = (h, (arch.kv_lora_rank or 0) + (arch.qk_rope_head_dim or 0))
        dims["v_proj"] = (
            arch.kv_lora_rank or 0,
            arch.num_heads * ((arch.qk_nope_head_dim or 0) + (arch.v_head_dim or 0)),
        )
        dims["o_proj"] = (arch.num_heads * (arch.v_head_dim or 128), h)
    attn = sum(r * sum(dims[t]) for t in s.targets if t in dims)
    total = arch.num_layers * attn
    mlp_t = [t for t in s.targets if t in ("gate_proj", "up_proj", "down_proj")]
    dense = arch.first_dense_layers if arch.is_moe else arch.num_layers
    shared = arch.shared_experts * (arch.moe_intermediate_size or 0) + arch.shared_expert_intermediate_size
    total += dense * len(mlp_t) * r * (h + arch.intermediate_size)
    if shared:
        total += (arch.num_layers - dense) * len(mlp_t) * r * (h + shared)
    return total


def mlp_act_width(arch: ModelArch) -> float:
    """Average MLP intermediate width a token passes through (top-k experts for MoE)."""
    if not arch.is_moe:
        return float(arch.intermediate_size)
    im = arch.moe_intermediate_size or arch.intermediate_size
    moe = arch.experts_per_token * im + arch.shared_experts * im + arch.shared_expert_intermediate_size
    dense = arch.first_dense_layers
    return (dense * arch.intermediate_size + (arch.num_layers - dense) * moe) / arch.num_layers


def kv_per_token(arch: ModelArch, s: Settings, tp: int) -> tuple[float, float]:
    """(bytes per token over full-attention layers, over sliding-window layers) per GPU."""
    if arch.is_mla:
        per_layer = ((arch.kv_lora_rank or 0) + (arch.qk_rope_head_dim or 64)) * s.kv_bytes
    else:
        heads = max(1, arch.num_kv_heads // tp)
        per_layer = 2 * heads * arch.head_dim * s.kv_bytes
    n_slide = round(arch.num_layers * arch.sliding_fraction) if arch.sliding_window else 0
    return per_layer * (arch.num_layers - n_slide), per_layer * n_slide
