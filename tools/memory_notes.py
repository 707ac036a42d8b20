"""The plain sentences every estimate lists as its ``assumptions``."""

from __future__ import annotations

from runners.accelerators import GpuTier
from tools.memory_arch import lora_params, param_counts
from tools.memory_core import CUDA_CONTEXT_GIB, SERVING_CONTEXT_GIB, UNSLOTH_EXTRA_CONTEXT_GIB
from tools.memory_settings import GIB, HF_STACK, Settings
from tools.models import ModelArch
from tools.serve import vllm_memory as vm

__all__ = ["assumptions"]


def assumptions(arch: ModelArch, s: Settings, tier: GpuTier | None) -> list[str]:
    """Every estimate's assumptions, in plain sentences: what the numbers take for granted."""
    a = [f"Architecture from {arch.source}."]
    if s.task == "inference" and s.backend == "vllm":
        a += _vllm_notes(arch, s, tier)
    if arch.sliding_window:
        a.append(
            f"{arch.sliding_fraction:.0%} of layers use a {arch.sliding_window}-token sliding window; "
            "their KV is counted up to the window."
        )
    if arch.is_moe:
        a.append(f"MoE: all {arch.num_experts} experts are resident; {arch.experts_per_token} are active per token.")
    if s.task != "inference":
        a += _training_notes(arch, s)
    if s.task != "inference" and s.num_gpus > 1:
        a += _parallel_notes(arch, s)
    if s.dtype == "bfloat16" and tier is not None and not tier.bf16:
        a.append(f"{tier.id} has no bf16: use dtype float16 there (same memory).")
    if arch.max_position and s.seq_len > arch.max_position:
        a.append(f"seq_len {s.seq_len} exceeds the model's max_position_embeddings {arch.max_position}.")
    ctx = CUDA_CONTEXT_GIB + (UNSLOTH_EXTRA_CONTEXT_GIB if s.backend == "unsloth" else 0.0)
    if s.task == "inference":
        ctx = SERVING_CONTEXT_GIB
    a.append(
        f"CUDA context {ctx:.2f} GiB per GPU"
        + (" (Unsloth's Triton kernels included)." if s.backend == "unsloth" else ".")
    )
    return a


def _vllm_notes(arch: ModelArch, s: Settings, tier: GpuTier | None) -> list[str]:
    a: list[str] = []
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
    a.append("KV bytes per token = 2 x layers x KV heads x head_dim x dtype bytes / TP (the MLA latent for DeepSeek).")
    return a


def _training_notes(arch: ModelArch, s: Settings) -> list[str]:
    a: list[str] = []
    ck = (
        (
            "Unsloth's offloaded gradient checkpointing (layer inputs in CPU RAM)"
            if s.backend == "unsloth"
            else "gradient checkpointing (one hidden state per layer)"
        )
        if s.gradient_checkpointing
        else "no gradient checkpointing (all layer activations kept)"
    )
    attn = "eager attention (seq x seq probabilities kept per head)" if s.attn_implementation == "eager" else "SDPA"
    amp = "without autocast" if s.mixed_precision == "none" else f"{s.mixed_precision} autocast"
    a.append(f"Training with {ck}, {attn}, {amp}, lora_dropout 0.")
    if s.task == "full" and not s.grad_accumulation and s.num_gpus == 1:
        a.append(
            "One micro-batch per optimizer step: the gradients are written while the backward frees the "
            "activations; gradient accumulation keeps them between micro-batches (set gradient_accumulation_steps)."
        )
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
            "one chunk of bf16 logits at a time (Unsloth's chunk sizing for a large GPU)."
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
    return a


def _parallel_notes(arch: ModelArch, s: Settings) -> list[str]:
    a: list[str] = []
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
        total = param_counts(arch)[0]
        trainable = total if s.task == "full" else lora_params(arch, s)
        a.append(
            f"Host RAM for the offload: about {16 * trainable / s.num_gpus / GIB:.1f} GiB per GPU "
            "(fp32 weights or master copy, fp32 gradients and Adam moments: 16 B per trainable "
            "parameter / N), times the GPUs of a node; at load every rank first reads the whole "
            f"16-bit model ({2 * total / GIB:.1f} GiB) into CPU RAM. From the engines' layouts, not measured."
        )
    return a
