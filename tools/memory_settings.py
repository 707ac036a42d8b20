"""estimate_memory's input, and the validated settings the estimator's core works from.

``MemoryInput`` is the tool's public interface (its field names are the MCP arguments);
``resolve_settings`` applies the defaults and the cross-field rules once, raising
InvalidInput with what to change, so the core (tools/memory_core.py) never checks input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, Field

from runners.errors import InvalidInput
from tools.models import ModelArch
from tools.serve import vllm_memory as vm

__all__ = [
    "ALL_TARGETS",
    "GIB",
    "HF_STACK",
    "MemoryInput",
    "Settings",
    "dtype_bytes",
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
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa",
        description="Training attention in transformers: sdpa (the default; no seq^2 term) or eager "
        "(keeps seq x seq probabilities per head and layer).",
    )
    gradient_accumulation_steps: int = Field(
        1,
        ge=1,
        le=65536,
        description="Micro-batches per optimizer step (full fine-tunes keep their gradients between them).",
    )


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
    attn_implementation: str = "sdpa"
    grad_accumulation: bool = False  # more than one micro-batch per optimizer step


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype in ("float32", "none") else 2


def tp_is_valid(arch: ModelArch, tp: int) -> bool:
    """vLLM's rule: heads divisible by TP; KV heads divisible by TP, or TP divisible by KV heads."""
    if arch.num_heads % tp:
        return False
    if arch.is_mla:
        return True
    kv = arch.num_kv_heads
    return kv % tp == 0 or tp % kv == 0


def _quantization(p: MemoryInput, arch: ModelArch) -> str:
    """The weights' quantization: as asked, else as stored (bnb-4bit for qlora); the task must allow it."""
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
    return quant


def _parallelism(p: MemoryInput, arch: ModelArch, training: bool) -> tuple[int, int]:
    """(tensor-parallel size, GPUs): TP for serving (vLLM's head rule), ZeRO/FSDP rules for training."""
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
    return tp, num


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
    quant = _quantization(p, arch)
    tp, num = _parallelism(p, arch, training)
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
        attn_implementation=p.attn_implementation,
        grad_accumulation=p.gradient_accumulation_steps > 1,
    )
