"""GPU memory per device for serving and fine-tuning: a pure, typed estimator.

The model adds what a GPU really holds at the peak (what ``nvidia-smi`` shows): the
CUDA context, then everything in PyTorch's caching allocator (weights, adapters,
gradients, optimizer states, saved activations, logits, the KV cache) plus the
allocator's own slack. Each term is physics from the architecture (GQA, head_dim,
tied embeddings, MoE, sliding windows, MLA) and the software's known behaviour:

* vLLM: KV memory = ceil(total x gpu_memory_utilization) - (weights + profile-run
  peak activations + non-torch memory + the CUDA graph estimate); bytes per token =
  2 x layers x kv_heads x head_dim x dtype / TP; one request of max_model_len must fit
  (vllm/v1/worker/gpu_worker.py ``determine_available_memory``,
  vllm/v1/core/kv_cache_utils.py ``check_enough_kv_cache_memory``; each term is in
  tools/serve/vllm_memory.py with the code it follows).
* HF (a plain transformers + PEFT loop): fp32 upcast of the logits and their gradient;
  RMSNorm's fp32 upcast; PEFT's fp32 adapters (``autocast_adapter_dtype``) whose
  inputs are saved per adapted module; ``prepare_model_for_kbit_training`` turning
  embeddings, lm_head and norms into fp32 for QLoRA (which makes the residual stream
  fp32); gradient checkpointing keeping one hidden state per layer.
* TRL (>= 1.15's SFTTrainer, what submit_finetune runs without Unsloth): the HF model
  with TRL's fused LM head (``add_fused_lm_head``, ``trl/kernels/chunked_logprob.py``):
  log-probs in [4096 tokens x 32768 vocab] tiles, fp32 gradient accumulators for the
  hidden states (and for a trainable lm_head, its weight) instead of full logits.
* Unsloth: offloaded gradient checkpointing (layer inputs go to CPU RAM), fused
  kernels, chunked fused cross-entropy that never materialises full logits.

No torch import: the controller stays light. ``estimate_memory`` is the tool-level
function; :func:`breakdown_bytes` is the fast core that ``tools/plan.py`` calls
many times.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from runners.accelerators import TIERS, GpuTier, parse_accelerator
from runners.errors import InvalidInput
from tools.models import ModelArch, resolve_model
from tools.serve import vllm_memory as vm
from tools.serve.vllm_memory import VllmBudget

__all__ = [
    "GIB",
    "Breakdown",
    "MemoryInput",
    "MemoryResult",
    "ParamCounts",
    "Settings",
    "TierFit",
    "breakdown_bytes",
    "estimate_memory",
    "fits_on",
    "resolve_settings",
    "tp_is_valid",
]

GIB = 1024**3
Task = Literal["inference", "lora", "qlora", "full"]
Backend = Literal["vllm", "hf", "trl", "unsloth"]
Quant = Literal["none", "bnb-4bit", "bnb-8bit", "awq", "gptq", "fp8"]
ALL_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_TARGET_ALIASES = {"all": ALL_TARGETS, "all-linear": ALL_TARGETS, "all_linear": ALL_TARGETS}
HF_STACK = ("hf", "trl")  # backends that train a transformers + PEFT model (they differ only in the loss head)

# Constants measured or documented elsewhere (see docs/memory.md for sources).
DS_SUB_GROUP_ELEMENTS = 1e9  # DeepSpeed ZeRO-3 sub_group_size default: the fp32 gradient copy is per group
CUDA_CONTEXT_GIB = 0.55  # torch + CUDA 12 lazy-loaded kernels + cuBLAS/cuDNN handles
# Unsloth loads Triton and its compiled kernels into the context as well: measured 1.31 GiB of
# non-allocator memory under Unsloth against 0.60 GiB under plain HF on the same H200
# (bench/data/memory_gpu.jsonl, context_gib).
UNSLOTH_EXTRA_CONTEXT_GIB = 0.5  # of the 0.7 measured; consumer cards load fewer kernels
UNSLOTH_WORKSPACE_GIB = 0.5  # dequantization buffers, fused-CE chunk, Triton workspaces
_NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)  # 4-bit + int8 absmax per 64 + fp32 per 256 blocks (double quant)
_INT8_BYTES = 1.0 + 4 / 4096  # LLM.int8 row statistics
_GROUP_BYTES = 2.5 / 128  # AWQ/GPTQ: fp16 scale + 4-bit zero per group of 128


class MemoryInput(BaseModel):
    """Arguments of estimate_memory; these names are the public interface."""

    model: str = Field(description="Hub id, local directory with config.json, or catalog name.")
    task: Task = Field("inference", description="inference | lora | qlora | full.")
    backend: Backend | None = Field(
        None,
        description="vllm | hf | trl | unsloth; default vllm for inference, unsloth for training. "
        "hf = a plain transformers + PEFT loop; trl = TRL's SFTTrainer (what submit_finetune runs without "
        "Unsloth, and for every multi-GPU job).",
    )
    seq_len: int = Field(
        4096,
        description="Tokens per sequence (max_model_len for inference). Positive.",
        json_schema_extra={"minimum": 1},
    )
    batch_size: int = Field(
        1,
        description="Concurrent sequences (inference) or per-device micro-batch. Positive.",
        json_schema_extra={"minimum": 1},
    )
    dtype: Literal["bfloat16", "float16", "float32"] = Field("bfloat16", description="Weights as loaded.")
    mixed_precision: Literal["bf16", "fp16", "none"] | None = Field(
        None, description="Autocast for training; default bf16 (fp16 where dtype is float16)."
    )
    quantization: Quant | None = Field(None, description="Default: as stored; bnb-4bit for qlora.")
    kv_cache_dtype: Literal["auto", "bfloat16", "float16", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    gradient_checkpointing: bool | None = Field(None, description="Default on for training.")
    optimizer: Literal["adamw", "adamw_8bit", "paged_adamw_8bit", "sgd"] = "adamw"
    lora_r: int = Field(16, ge=1, le=4096)
    lora_targets: list[str] | None = Field(None, description="Default: all linear layers.")
    num_gpus: int | None = Field(None, ge=1, le=1024, description="GPUs used; default from `gpu` or TP.")
    tensor_parallel_size: int | None = Field(None, ge=1, le=1024, description="vLLM TP; default num_gpus.")
    zero_stage: int | None = Field(
        None,
        ge=0,
        le=3,
        description="DeepSpeed ZeRO stage for multi-GPU training (FSDP full_shard = 3, shard_grad_op = 2, DDP = 0).",
    )
    cpu_offload: bool = Field(
        False,
        description="ZeRO-Offload / FSDP CPU offload: optimizer states (and with "
        "stage 3 the weights and gradients) live in CPU RAM.",
    )
    gpu: str | None = Field(None, description="GPU tier such as 'H100' or 'A100-80GB:2'.")
    gpu_memory_utilization: float = Field(
        vm.DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1, description="vLLM's share of GPU memory (vLLM 0.26: 0.92)."
    )
    max_num_batched_tokens: int | None = Field(
        None, ge=1, description="vLLM profile-run tokens; default vLLM's for the GPU (8192 on H100/H200, else 2048)."
    )
    max_num_seqs: int | None = Field(
        None,
        ge=1,
        le=65536,
        description="vLLM's cap on running sequences (sizes its sampler warm-up); default vLLM's for the GPU "
        "(1024 on H100/H200, else 256). A cap, not a demand: the KV cache only needs one max_model_len sequence.",
    )
    serve_lora_rank: int | None = Field(
        None, ge=1, le=512, description="vLLM --max-lora-rank when serving LoRA adapters (--enable-lora); none: off."
    )
    max_loras: int = Field(1, ge=1, le=256, description="vLLM --max-loras (adapters resident at once on the GPU).")


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


class TierFit(BaseModel):
    fits: bool = Field(description="Fits on at most the tier's usual GPUs per node.")
    min_gpus: int | None = Field(description="Fewest GPUs of this tier that fit; null if none up to 8.")
    headroom_gib: float = Field(description="Free GiB per GPU at min_gpus (negative: short by that much on 1).")


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
    summary: str


# ------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class Settings:
    """Validated, defaulted settings: what the core needs, nothing optional."""

    task: str
    backend: str
    seq_len: int
    batch_size: int
    dtype: str
    mixed_precision: str
    quantization: str
    kv_bytes: float
    gradient_checkpointing: bool
    optimizer: str
    lora_r: int
    targets: tuple[str, ...]
    num_gpus: int
    tp: int
    zero_stage: int
    util: float
    cpu_offload: bool
    mnbt: int | None  # None: vLLM's default for the GPU
    max_num_seqs: int | None = None  # None: vLLM's default for the GPU
    serve_lora_rank: int | None = None
    max_loras: int = 1
    notes: tuple[str, ...] = field(default=())


def _bytes(dtype: str) -> int:
    return 4 if dtype in ("float32", "none") else 2


def tp_is_valid(arch: ModelArch, tp: int) -> bool:
    """vLLM's rule: heads divisible by TP; KV heads divisible by TP, or TP divisible by KV heads."""
    if arch.num_heads % tp:
        return False
    if arch.is_mla:
        return True
    kv = arch.num_kv_heads
    return kv % tp == 0 or tp % kv == 0


def resolve_settings(p: MemoryInput, arch: ModelArch) -> Settings:
    """Apply defaults and cross-field rules; raise InvalidInput with what to change."""
    if p.seq_len <= 0 or p.batch_size <= 0:
        raise InvalidInput(
            f"seq_len ({p.seq_len}) and batch_size ({p.batch_size}) must be positive.",
            "Use seq_len >= 1 (e.g. 4096) and batch_size >= 1.",
        )
    training = p.task != "inference"
    backend = p.backend or ("unsloth" if training else "vllm")
    if training and backend == "vllm":
        raise InvalidInput("vLLM only serves models; it does not train.", "Use backend 'unsloth', 'trl' or 'hf'.")
    stored = arch.stored_quantization if arch.stored_quantization != "other" else "none"
    quant = p.quantization or ("bnb-4bit" if p.task == "qlora" else stored)
    if stored in ("awq", "gptq", "fp8") and quant != stored:
        quant = stored  # a pre-quantized checkpoint is loaded as it is stored
    if p.task == "qlora" and quant not in ("bnb-4bit", "bnb-8bit"):
        raise InvalidInput(
            f"qlora trains LoRA on a bitsandbytes-quantized base, not {quant}.",
            "Use quantization 'bnb-4bit' (or leave it unset) with task 'qlora'.",
        )
    if p.task == "lora" and quant in ("awq", "fp8"):
        raise InvalidInput(
            f"{quant.upper()} checkpoints can't be fine-tuned here.",
            "Train the 16-bit model (task 'lora'/'qlora') and quantize after merging.",
        )
    if p.task == "lora" and quant == "bnb-4bit":
        raise InvalidInput("LoRA on a 4-bit bitsandbytes base is QLoRA.", "Use task 'qlora'.")
    if p.task == "full" and quant != "none":
        raise InvalidInput(
            f"Full fine-tuning updates every weight; a {quant} base can't be trained.",
            "Use quantization 'none' for task 'full', or task 'qlora'/'lora'.",
        )
    tp = p.tensor_parallel_size
    num = p.num_gpus
    if training and tp not in (None, 1):
        raise InvalidInput(
            "tensor_parallel_size applies to vLLM serving.",
            "For multi-GPU training set num_gpus and zero_stage instead.",
        )
    if not training:
        if p.cpu_offload:
            raise InvalidInput("cpu_offload applies to training (ZeRO / FSDP).", "Leave cpu_offload off for serving.")
        tp = tp or num or 1
        num = num or tp
        if tp > num:
            raise InvalidInput(f"tensor_parallel_size {tp} exceeds num_gpus {num}.", f"Set num_gpus to at least {tp}.")
        if not tp_is_valid(arch, tp):
            ok = [t for t in (1, 2, 4, 8, 16) if tp_is_valid(arch, t)]
            raise InvalidInput(
                f"tensor_parallel_size {tp} does not divide {arch.name}'s {arch.num_heads} attention heads and "
                f"{arch.num_kv_heads} KV heads, which vLLM requires.",
                f"Use one of {ok}.",
            )
        if p.zero_stage is not None:
            raise InvalidInput("zero_stage applies to training.", "Leave zero_stage unset for inference.")
    else:
        tp, num = 1, num or 1
        if p.zero_stage not in (None, 0) and num == 1:
            raise InvalidInput(
                f"ZeRO stage {p.zero_stage} shards across GPUs; with one GPU it does nothing.",
                "Set num_gpus >= 2, or leave zero_stage unset.",
            )
        if p.cpu_offload and not (p.zero_stage or 0) >= 1:
            raise InvalidInput(
                "cpu_offload moves ZeRO/FSDP shards to CPU RAM; plain DDP has none to move.",
                "Set num_gpus >= 2 with zero_stage 2 or 3 (FSDP = 3), or leave cpu_offload off.",
            )
    mp = p.mixed_precision or ("fp16" if p.dtype == "float16" else "bf16")
    kv = {"auto": 4 if p.dtype == "float32" else 2, "bfloat16": 2, "float16": 2}.get(p.kv_cache_dtype, 1)
    targets: list[str] = []
    for t in p.lora_targets or ["all-linear"]:
        targets.extend(_TARGET_ALIASES.get(t.strip().lower(), (t.strip(),)))
    unknown = [t for t in targets if t not in ALL_TARGETS]
    if unknown:
        raise InvalidInput(f"Unknown LoRA target(s) {unknown}.", f"Use names from {list(ALL_TARGETS)} or 'all-linear'.")
    return Settings(
        task=p.task,
        backend=backend,
        seq_len=p.seq_len,
        batch_size=p.batch_size,
        dtype=p.dtype,
        mixed_precision=mp,
        quantization=quant,
        kv_bytes=kv,
        gradient_checkpointing=training if p.gradient_checkpointing is None else p.gradient_checkpointing,
        optimizer=p.optimizer,
        lora_r=p.lora_r,
        targets=tuple(dict.fromkeys(targets)),
        num_gpus=num,
        tp=tp,
        zero_stage=p.zero_stage or 0,
        util=p.gpu_memory_utilization,
        cpu_offload=p.cpu_offload,
        mnbt=p.max_num_batched_tokens,
        max_num_seqs=p.max_num_seqs,
        serve_lora_rank=p.serve_lora_rank,
        max_loras=p.max_loras,
    )


# ---------------------------------------------------------------------------------- core
@dataclass
class _Parts:
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


def _counts(arch: ModelArch) -> tuple[int, int, int]:
    total, active, linear = arch.param_counts()
    if arch.checkpoint_params and arch.stored_quantization == "none":
        scale = arch.checkpoint_params / total
        return arch.checkpoint_params, int(active * scale), int(linear * min(scale, 1.0))
    return total, active, linear


def _weight_bytes(arch: ModelArch, s: Settings) -> float:
    """Whole-model weight bytes as loaded (before sharding)."""
    total, _, linear = _counts(arch)
    other = total - linear  # embeddings, lm_head, norms, vision tower: kept in 16-bit
    q = s.quantization
    if q == "none":
        return total * _bytes(s.dtype)
    if q in ("awq", "gptq", "fp8") and arch.stored_quantization == q and arch.checkpoint_bytes:
        return float(arch.checkpoint_bytes)
    other_b = 4 if (s.task == "qlora" and s.backend in HF_STACK) else 2  # prepare_model_for_kbit_training
    per = {"bnb-4bit": _NF4_BYTES, "bnb-8bit": _INT8_BYTES, "fp8": 1.0 + 4 / 4096}.get(
        q, (arch.quant_bits or 4) / 8 + _GROUP_BYTES
    )
    return linear * per + other * other_b


def _lora_params(arch: ModelArch, s: Settings) -> int:
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


def _mlp_act_width(arch: ModelArch) -> float:
    """Average MLP intermediate width a token passes through (top-k experts for MoE)."""
    if not arch.is_moe:
        return float(arch.intermediate_size)
    im = arch.moe_intermediate_size or arch.intermediate_size
    moe = arch.experts_per_token * im + arch.shared_experts * im + arch.shared_expert_intermediate_size
    dense = arch.first_dense_layers
    return (dense * arch.intermediate_size + (arch.num_layers - dense) * moe) / arch.num_layers


def _kv_per_token(arch: ModelArch, s: Settings, tp: int) -> tuple[float, float]:
    """(bytes per token over full-attention layers, over sliding-window layers) per GPU."""
    if arch.is_mla:
        per_layer = ((arch.kv_lora_rank or 0) + (arch.qk_rope_head_dim or 64)) * s.kv_bytes
    else:
        heads = max(1, arch.num_kv_heads // tp)
        per_layer = 2 * heads * arch.head_dim * s.kv_bytes
    n_slide = round(arch.num_layers * arch.sliding_fraction) if arch.sliding_window else 0
    return per_layer * (arch.num_layers - n_slide), per_layer * n_slide


def breakdown_bytes(
    arch: ModelArch,
    s: Settings,
    *,
    tp: int | None = None,
    num_gpus: int | None = None,
    zero_stage: int | None = None,
    gpu_gib: float | None = None,
    gpu_name: str | None = None,
) -> _Parts:
    """Per-GPU bytes for one configuration. Fast (no allocation beyond one dataclass)."""
    tp = s.tp if tp is None else tp
    n = s.num_gpus if num_gpus is None else num_gpus
    zero = s.zero_stage if zero_stage is None else zero_stage
    ctx = CUDA_CONTEXT_GIB + (UNSLOTH_EXTRA_CONTEXT_GIB if s.backend == "unsloth" else 0.0)
    out = _Parts(cuda_context=ctx * GIB)
    h, V, L = arch.hidden_size, arch.vocab_size, arch.num_layers
    q, kvd = arch.q_dim, arch.kv_dim
    inter = _mlp_act_width(arch)
    weights = _weight_bytes(arch, s)
    if s.task == "inference":
        _inference(arch, s, tp, weights, out, gpu_gib, gpu_name)
        return out

    # ---- training -------------------------------------------------------------------
    total, _, _ = _counts(arch)
    fp32_master = s.dtype == "float32"
    ab = 4 if (fp32_master and s.mixed_precision == "none") else 2  # activation bytes
    hf = s.backend in HF_STACK
    rb = 4 if (fp32_master or (hf and s.task == "qlora")) else 2  # residual stream bytes
    if s.task == "full":
        trainable = total
        pb = _bytes(s.dtype)
        grads = trainable * pb
        state_b = {"adamw": 2 * pb, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 0.0}[s.optimizer]
        if zero and n > 1 and s.optimizer == "adamw":
            state_b = 12.0  # DeepSpeed keeps fp32 master weights + fp32 Adam moments
        opt = trainable * state_b
        w = weights
        if fp32_master and s.mixed_precision != "none":
            w += total * 2  # autocast's 16-bit weight copies, cached for the backward
        adapter = 0.0
    else:
        trainable = _lora_params(arch, s)
        adapter = trainable * 4.0  # PEFT/Unsloth keep adapters in fp32
        grads = trainable * 4.0
        opt = trainable * {"adamw": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 0.0}[s.optimizer]
        w = weights
    if n > 1 and zero == 0:
        grads *= 2  # DDP's reducer buckets: a second copy of the gradients (gradient_as_bucket_view=False)
    if n > 1 and zero >= 1:
        largest = (arch.attn_params() + arch.mlp_params(L - 1)[0]) * _bytes(s.dtype)
        opt /= n
        if zero >= 2:
            grads /= n
        if zero >= 3:
            w = w / n + 2 * largest  # gathered layer + prefetch
        if s.cpu_offload and zero >= 1:
            opt = 0.0  # states and the optimizer step live on the CPU (ZeRO-Offload, FSDP CPUOffload)
            if s.task == "full":
                grads = min(grads, 2 * largest)  # reduced into buckets, then copied out to CPU RAM
            if zero >= 3:
                w = 2 * largest  # only the gathered layer + prefetch stay on the GPU
    out.weights, out.adapter, out.gradients, out.optimizer_states, out.trainable = w, adapter, grads, opt, trainable

    tokens = s.seq_len * s.batch_size
    scale = ab / 2
    if s.backend == "unsloth":
        layer = (10 * h + 4 * q + 4 * kvd + 8 * inter) * scale  # one layer's recompute + backward, fused
        saved = (6 * h + 4 * q + 4 * kvd + 6 * inter) * scale
        keep = 4 * h if s.gradient_checkpointing else L * saved  # offloaded checkpoints: staging only
        if s.task == "full":
            layer += 4 * h + 2 * inter
        act = tokens * (keep + layer) + UNSLOTH_WORKSPACE_GIB * GIB
        logit = tokens * 0.25 * V * (ab / 2)  # chunked fused CE
    else:
        if s.task == "full":
            saved = 16 * h + 4 * q + 4 * kvd + 8 * inter
        else:
            lora_in = {
                "q_proj": h,
                "k_proj": h,
                "v_proj": h,
                "o_proj": q,
                "gate_proj": h,
                "up_proj": h,
                "down_proj": inter,
            }
            saved = 8 * h + 4 * q + 4 * kvd + 6 * inter + 2 * sum(lora_in[t] for t in s.targets)
        saved *= scale
        transient = (8 * h + 4 * inter) * scale
        keep = L * rb * h if s.gradient_checkpointing else L * saved
        act = tokens * (keep + saved + transient)
        # fp32 log-softmax kept for backward + its input and output gradients (12 B per logit); QLoRA's
        # k-bit preparation leaves lm_head and the residual stream in fp32, so the logits themselves are
        # fp32 too (+2 B, measured: Llama-3.2-3B and 3.1-8B QLoRA on an H200, bench/data/memory_gpu.jsonl).
        per_logit = 14.0 if s.task == "qlora" else 12.0
        if arch.model_type.startswith("gemma2"):
            # Gemma 2 soft-caps the final logits (x / cap, tanh, x cap): two more full-vocab tensors,
            # the tanh output saved for backward (measured: gemma-2-2b LoRA, +2.7 GiB at 4096 x 256k).
            per_logit += 4.0
        logit = _trl_fused_head_bytes(arch, s, tokens, rb, n, zero) if s.backend == "trl" else tokens * V * per_logit
    if arch.is_moe:
        act += tokens * L * arch.num_experts * 4 * 2  # router logits (fp32) and their softmax
    if s.task == "full" and n > 1 and zero >= 2 and not s.cpu_offload and s.optimizer == "adamw":
        # DeepSpeed's optimizer step casts gradients to fp32 while activations and logits are already
        # freed, so it sets the peak only when it exceeds them. ZeRO-3 does it per sub-group of at most
        # 1e9 elements (+4 B each, next to the 16-bit partition); ZeRO-2 for the whole partition after
        # freeing the 16-bit one (+2 B/param/N net for bf16). Measured with the real engines on 2 CPU
        # ranks (bench/fsdp_shards_cpu.py, bench/data/fsdp_shards_cpu.jsonl); the sub-group cap is
        # DeepSpeed 0.19's default sub_group_size. Under FSDP (TRL + accelerate) torch's foreach AdamW
        # makes the same 4 B/param/N temporary for the whole shard at once (sqrt of the second moment):
        # measured on 2x H100/H200, Llama-3.2-3B shape, the peak set in the optimizer step
        # (bench/data/multigpu_gpu.jsonl), so for trl the cap does not apply (safe for DeepSpeed too).
        if zero < 3:
            step = trainable * (4.0 - pb) / n
        elif s.backend == "trl":
            step = trainable * 4.0 / n
        else:
            step = min(trainable * 4.0 / n, DS_SUB_GROUP_ELEMENTS * 4.0)
        grads += max(0.0, step - (act + logit))
        out.gradients = grads
    out.activations, out.logits = act, logit
    dynamic = act + logit + grads + opt
    out.allocator_overhead = 0.06 * dynamic + 0.02 * (w + adapter) + 0.1 * GIB
    return out


def _trl_fused_head_bytes(arch: ModelArch, s: Settings, tokens: int, rb: int, n: int, zero: int) -> float:
    """What TRL's fused LM head holds instead of the logits (TRL 1.15-1.16, read from its code).

    ``add_fused_lm_head`` + ``trl/kernels/chunked_logprob.py``: the projection runs in one
    [4096 tokens x 32768 vocab] tile in the compute dtype, the selected hidden states are saved,
    backward accumulates their gradient in fp32 and casts it, and a trainable lm_head (full
    fine-tunes) gets an fp32 gradient accumulator plus its cast. Under sharding the head is
    gathered whole (``full_tensor`` of fp32 shards after accelerate's upcast). Measured against
    TRL payload runs on H100/H200 (bench/data/memory_trl.jsonl).
    """
    h, V = arch.hidden_size, arch.vocab_size
    vchunk = min(V, 32768)
    out = min(tokens, 4096) * vchunk * 2.0  # the tile (bf16/fp16 compute)
    out += vchunk * h * 2.0  # the weight chunk cast to the compute dtype
    out += tokens * h * (rb + 4.0 + 2.0)  # saved hidden states, their fp32 gradient and its cast
    if s.task == "full":
        out += V * h * (4.0 + _bytes(s.dtype))
        if n > 1 and zero >= 3:
            out += V * h * 4.0
    return out


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
    return s.max_loras * r * per_layer * arch.num_layers * _bytes(s.dtype)


def vllm_budget(
    arch: ModelArch, s: Settings, tp: int, weights: float, gpu_gib: float, gpu_name: str | None = None
) -> VllmBudget:
    """One GPU's ``vllm serve`` budget (tools/serve/vllm_memory.py says which vLLM code each term follows).

    ``weights`` are the whole model's bytes as loaded; they are split over ``tp`` ranks.
    """
    h, V = arch.hidden_size, arch.vocab_size
    ab = _bytes(s.dtype)
    mnbt_default, seqs_default = vm.batch_defaults(gpu_gib, gpu_name)
    tokens = s.mnbt or mnbt_default
    seqs = s.max_num_seqs or seqs_default
    reqs = min(seqs, tokens)  # profile_run: max_num_batched_tokens spread over min(max_num_seqs, tokens) requests
    inter = _mlp_act_width(arch) / tp
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
    full_kv, slide_kv = _kv_per_token(arch, s, tp)
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


def _inference(
    arch: ModelArch,
    s: Settings,
    tp: int,
    weights: float,
    out: _Parts,
    gpu_gib: float | None,
    gpu_name: str | None = None,
) -> None:
    h, V = arch.hidden_size, arch.vocab_size
    ab = _bytes(s.dtype)
    full_kv, slide_kv = _kv_per_token(arch, s, tp)
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
        out.activations = tokens * ab * (4 * h + 3 * _mlp_act_width(arch))
        out.logits = s.batch_size * V * 4 * 2
        out.allocator_overhead = 0.06 * (out.activations + out.kv_cache) + 0.1 * GIB


# ------------------------------------------------------------------------------ tool level
def _gib(x: float) -> float:
    return round(x / GIB, 2)


def vllm_server_budget(arch: ModelArch, s: Settings, tier: GpuTier, tp: int) -> VllmBudget:
    """vLLM's start-up budget for ``s`` on one GPU of ``tier`` at tensor-parallel size ``tp``."""
    return vllm_budget(arch, s, tp, _weight_bytes(arch, s), tier.memory_gib, tier.id)


def vllm_serving(b: VllmBudget, max_model_len: int) -> VllmServing:
    """The budget as vLLM's start-up log reports it."""
    return VllmServing(
        requested_gib=_gib(b.requested),
        weights_gib=_gib(b.weights),
        activation_peak_gib=_gib(b.activation_peak),
        non_torch_gib=_gib(b.non_torch),
        cuda_graphs_gib=_gib(b.cuda_graphs),
        cuda_graphs_captured_gib=_gib(b.cuda_graphs + b.graphs_outside),
        kv_cache_gib=_gib(b.kv_available),
        kv_tokens=b.kv_tokens(max_model_len),
        max_model_len=max_model_len,
        max_concurrency=round(b.max_concurrency(max_model_len), 2),
        fits_one_sequence=b.fits_one(max_model_len),
        max_model_len_that_fits=b.max_model_len_that_fits(max_model_len),
        max_num_batched_tokens=b.max_num_batched_tokens,
        max_num_seqs=b.max_num_seqs,
    )


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


def _min_gpus(arch: ModelArch, s: Settings, tier: GpuTier) -> TierFit:
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


def _assumptions(arch: ModelArch, s: Settings, tier: GpuTier | None) -> list[str]:
    a = [f"Architecture from {arch.source}."]
    if s.task == "inference" and s.backend == "vllm":
        mnbt, seqs = vm.batch_defaults(tier.memory_gib if tier else 80.0, tier.id if tier else None)
        a.append(
            f"vLLM 0.26 `vllm serve`: budget ceil(total x {s.util:g}); profile run of "
            f"max_num_batched_tokens={s.mnbt or mnbt} over max_num_seqs={s.max_num_seqs or seqs} requests "
            f"(sampler warm-up {vm.SAMPLER_BYTES_PER_LOGIT:g} B per logit); non-torch memory "
            f"{vm.NON_TORCH_TP_GIB if s.tp > 1 else vm.NON_TORCH_GIB} GiB; "
            + (
                "Model Runner V2 (non-MoE models): its CUDA graphs are captured after the KV cache, outside the "
                "budget, beside the CUDA context."
                if vm.uses_v2_runner(arch.is_moe, arch.model_type)
                else "Model Runner V1 (MoE): its CUDA graph estimate is taken from the budget; the CUDA context "
                "sits outside it."
            )
        )
        a.append(
            "vLLM starts when one request of seq_len (max_model_len) fits the KV cache; max_num_seqs is a cap. "
            "max_kv_tokens and max_concurrency are vLLM's 'GPU KV cache size' and 'Maximum concurrency'."
        )
        a.append(
            "KV bytes per token = 2 x layers x KV heads x head_dim x dtype bytes / TP (the MLA latent for DeepSeek)."
        )
    if arch.sliding_window:
        a.append(
            f"{arch.sliding_fraction:.0%} of layers use a {arch.sliding_window}-token sliding window; "
            "their KV is counted up to the window."
        )
    if arch.is_moe:
        a.append(f"MoE: all {arch.num_experts} experts are resident; {arch.experts_per_token} are active per token.")
    if s.task != "inference":
        ck = (
            (
                "Unsloth's offloaded gradient checkpointing (layer inputs in CPU RAM)"
                if s.backend == "unsloth"
                else "gradient checkpointing (one hidden state per layer)"
            )
            if s.gradient_checkpointing
            else "no gradient checkpointing (all layer activations kept)"
        )
        a.append(f"Training with {ck}, SDPA/flash attention, lora_dropout 0.")
        if s.backend == "hf":
            a.append(
                "HF: the loss upcasts logits to fp32; logits, log-softmax and their gradient are counted "
                "(a plain transformers training loop; TRL's SFTTrainer is backend 'trl')."
            )
        elif s.backend == "trl":
            a.append(
                "TRL (>= 1.15) SFTTrainer: transformers + PEFT with TRL's fused LM head, which scores "
                "log-probs in 4096 x 32768 tiles and never holds the full logits."
            )
        else:
            a.append(
                "Unsloth: fused chunked cross-entropy, so full logits are never materialised; "
                f"{UNSLOTH_WORKSPACE_GIB} GiB of kernel workspaces."
            )
        if s.task in ("lora", "qlora"):
            a.append(
                f"LoRA r={s.lora_r} on {', '.join(s.targets)}; adapters, gradients and Adam states in fp32"
                + ("; routed experts are not adapted." if arch.is_moe else ".")
            )
        if s.task == "qlora":
            a.append(
                "NF4 with double quantization (~0.516 bytes per linear weight)"
                + (
                    "; prepare_model_for_kbit_training keeps embeddings, lm_head and norms in fp32."
                    if s.backend in HF_STACK
                    else "."
                )
            )
        if s.optimizer == "paged_adamw_8bit":
            a.append("Paged 8-bit Adam can spill its states to CPU memory under pressure.")
        if s.num_gpus > 1:
            a.append(
                f"{s.num_gpus} GPUs with ZeRO stage {s.zero_stage}"
                + (
                    " (plain DDP: every GPU holds everything)."
                    if s.zero_stage == 0
                    else " (FSDP full_shard shards like stage 3)."
                )
            )
            if s.zero_stage >= 1 and s.task == "full":
                a.append(
                    "Assumes the CUDA allocator's expandable segments, which submit_finetune turns on: with the "
                    "default allocator a hand-written FSDP loop reserved 4-8 GiB more at the optimizer step "
                    "(Llama-3.2-3B shape on 2 GPUs, bench/data/multigpu_gpu.jsonl)."
                )
            if s.cpu_offload:
                a.append(
                    "CPU offload: optimizer states and the optimizer step in CPU RAM"
                    + (
                        "; stage 3 also keeps weights and gradients there, gathering one layer at a time."
                        if s.zero_stage >= 3
                        else "."
                    )
                )
                total = _counts(arch)[0]
                trainable = total if s.task == "full" else _lora_params(arch, s)
                a.append(
                    f"Host RAM for the offload: about {16 * trainable / s.num_gpus / GIB:.1f} GiB per GPU "
                    "(fp32 weights or master copy, fp32 gradients and Adam moments: 16 B per trainable "
                    "parameter / N), times the GPUs of a node; at load every rank first reads the whole "
                    f"16-bit model ({2 * total / GIB:.1f} GiB) into CPU RAM. From the engines' layouts, not measured."
                )
    if s.dtype == "bfloat16" and tier is not None and not tier.bf16:
        a.append(f"{tier.id} has no bf16: use dtype float16 there (same memory).")
    if arch.max_position and s.seq_len > arch.max_position:
        a.append(f"seq_len {s.seq_len} exceeds the model's max_position_embeddings {arch.max_position}.")
    ctx = CUDA_CONTEXT_GIB + (UNSLOTH_EXTRA_CONTEXT_GIB if s.backend == "unsloth" else 0.0)
    a.append(
        f"CUDA context {ctx:.2f} GiB per GPU"
        + (" (Unsloth's Triton kernels included)." if s.backend == "unsloth" else ".")
    )
    return a


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
    total, active, _ = _counts(arch)
    trainable = parts.trainable if s.task != "inference" else 0
    bd = Breakdown(
        weights=_gib(parts.weights),
        kv_cache=_gib(parts.kv_cache),
        activations=_gib(parts.activations),
        logits=_gib(parts.logits),
        gradients=_gib(parts.gradients),
        optimizer_states=_gib(parts.optimizer_states),
        adapter=_gib(parts.adapter),
        cuda_context=_gib(parts.cuda_context),
        allocator_overhead=_gib(parts.allocator_overhead),
    )
    total_gib = round(parts.total() / GIB, 2)
    fits = {tid: _min_gpus(arch, s, t) for tid, t in TIERS.items()}
    max_kv = conc = None
    vllm = None
    if parts.budget is not None:
        vllm = vllm_serving(parts.budget, s.seq_len)
        max_kv, conc = vllm.kv_tokens, vllm.max_concurrency
    rec = None
    if with_plan:
        from tools import plan as _plan  # plan builds on this module's core

        rec = _plan.recommend(arch, s, tier, fits).model_dump()
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
        assumptions=_assumptions(arch, s, tier),
        summary=summary + ".",
    )
