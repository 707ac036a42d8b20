"""Training memory per GPU: weights, adapters, gradients, optimizer states, activations, logits.


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
"""

from __future__ import annotations

import math

from tools.memory_arch import Parts, lora_params, mlp_act_width, param_counts
from tools.memory_settings import GIB, HF_STACK, Settings, dtype_bytes
from tools.models import ModelArch

__all__ = ["eager_attention_bytes", "training_parts", "unsloth_ce_chunks"]

# Constants measured or documented elsewhere (see docs/memory.md for sources).
DS_SUB_GROUP_ELEMENTS = 1e9  # DeepSpeed ZeRO-3 sub_group_size default: the fp32 gradient copy is per group
# Unsloth's fused cross-entropy (unsloth_zoo/fused_losses/cross_entropy_loss.py, _free_target_gb and
# get_chunk_size): chunks sized so that Unsloth's own 16 bytes per logit fit half the free memory,
# capped at 4 GiB; the tokens are split into a multiple of 4 chunks.
UNSLOTH_CE_BYTES_PER_LOGIT = 16.0
UNSLOTH_CE_TARGET_GIB = 4.0
# What one chunk really holds at the backward's peak: its bf16 logits (the upcast and the softmax
# are fused by torch.compile in compute_fused_ce_loss), per token of the chunk and vocabulary entry.
UNSLOTH_CE_LIVE_BYTES = 2.0
# PEFT's LoRA Linear.forward (peft/tuners/lora/layer.py) casts its input to the adapter's dtype
# (fp32: autocast_adapter_dtype) and lora_A saves that copy for its weight gradient: 4 bytes an
# element without autocast, 2 under torch.autocast (the matmul re-casts it to bf16 and saves that).
LORA_INPUT_BYTES = {"none": 4.0, "bf16": 2.0, "fp16": 2.0}


def _static(arch: ModelArch, s: Settings, weights: float, n: int, zero: int) -> tuple[float, ...]:
    """(weights, adapter, gradients, optimizer states, trainable params) per GPU."""
    total, _, _ = param_counts(arch)
    fp32_master = s.dtype == "float32"
    if s.task == "full":
        trainable = total
        pb = dtype_bytes(s.dtype)
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
        trainable = lora_params(arch, s)
        adapter = trainable * 4.0  # PEFT/Unsloth keep adapters in fp32
        grads = trainable * 4.0
        opt = trainable * {"adamw": 8.0, "adamw_8bit": 2.0, "paged_adamw_8bit": 2.0, "sgd": 0.0}[s.optimizer]
        w = weights
    if n > 1 and zero == 0:
        grads *= 2  # DDP's reducer buckets: a second copy of the gradients (gradient_as_bucket_view=False)
    if n > 1 and zero >= 1:
        largest = (arch.attn_params() + arch.mlp_params(arch.num_layers - 1)[0]) * dtype_bytes(s.dtype)
        opt /= n
        if zero >= 2:
            grads /= n
        if zero >= 3:
            w = w / n + 2 * largest  # gathered layer + prefetch
        if s.cpu_offload:
            opt = 0.0  # states and the optimizer step live on the CPU (ZeRO-Offload, FSDP CPUOffload)
            if s.task == "full":
                grads = min(grads, 2 * largest)  # reduced into buckets, then copied out to CPU RAM
            if zero >= 3:
                w = 2 * largest  # only the gathered layer + prefetch stay on the GPU
    return w, adapter, grads, opt, trainable


def eager_attention_bytes(arch: ModelArch, s: Settings) -> float:
    """Per token per layer: what eager attention keeps beyond SDPA's (transformers' eager_attention_forward).

    ``softmax(..., dtype=float32).to(query.dtype)``: the fp32 probabilities (saved by softmax) and
    their bf16 copy (saved by the matmul with V), heads x seq each; ``repeat_kv`` expands K and V
    to every head before the matmuls save them (SDPA without a mask passes ``enable_gqa`` instead).
    """
    if s.attn_implementation != "eager":
        return 0.0
    return arch.num_heads * s.seq_len * 6.0 + 2 * 2.0 * max(0, arch.q_dim - arch.kv_dim)


def _hf_saved_per_layer(arch: ModelArch, s: Settings) -> float:
    """Bytes per token one decoder layer keeps for backward under transformers + PEFT (SDPA).

    LlamaDecoderLayer / LlamaMLP / sdpa_attention_forward (transformers 5.17): the RMSNorm's fp32
    input, q/k/v after RoPE and the attention output (SDPA's flash kernel keeps no seq^2 term), the
    SwiGLU gate, up and act outputs; each LoRA-adapted module's input copy (LORA_INPUT_BYTES).
    """
    h, q, kvd, inter = arch.hidden_size, arch.q_dim, arch.kv_dim, mlp_act_width(arch)
    scale = (4 if (s.dtype == "float32" and s.mixed_precision == "none") else 2) / 2
    if s.task == "full":
        return (16 * h + 4 * q + 4 * kvd + 8 * inter) * scale + eager_attention_bytes(arch, s)
    lora_in = {"q_proj": h, "k_proj": h, "v_proj": h, "o_proj": q, "gate_proj": h, "up_proj": h, "down_proj": inter}
    lora_b = 4.0 if s.dtype == "float32" and s.mixed_precision == "none" else LORA_INPUT_BYTES[s.mixed_precision]
    saved = (8 * h + 4 * q + 4 * kvd + 6 * inter) * scale + lora_b * sum(lora_in[t] for t in s.targets)
    return saved + eager_attention_bytes(arch, s)


def _hf_activations(arch: ModelArch, s: Settings, tokens: int, rb: int) -> tuple[float, float]:
    """(kept through the backward, one layer's backward peak) for transformers + PEFT.

    Kept: the checkpoints (one hidden state per layer, torch.utils.checkpoint without reentrancy)
    or, without checkpointing, every layer's saved tensors. A layer's backward peak: its
    recomputed tensors (checkpointing only: without it nothing is recomputed) and its gradient
    transients. Counted on top of the loss head's logits, as measured (bench/data/memory_*.jsonl).
    """
    h, inter = arch.hidden_size, mlp_act_width(arch)
    scale = (4 if (s.dtype == "float32" and s.mixed_precision == "none") else 2) / 2
    saved = _hf_saved_per_layer(arch, s)
    transient = (8 * h + 4 * inter) * scale
    if s.gradient_checkpointing:
        return tokens * arch.num_layers * rb * h, tokens * (saved + transient)
    return tokens * arch.num_layers * saved, tokens * transient


def _hf_logits(arch: ModelArch, s: Settings, tokens: int) -> float:
    """transformers' loss (ForCausalLMLoss): the upcast logits, log-softmax and their gradients."""
    # fp32 log-softmax kept for backward + its input and output gradients (12 B per logit); QLoRA's
    # k-bit preparation leaves lm_head and the residual stream in fp32, so the logits themselves are
    # fp32 too (+2 B, measured: Llama-3.2-3B and 3.1-8B QLoRA on an H200, bench/data/memory_gpu.jsonl).
    per_logit = 14.0 if s.task == "qlora" else 12.0
    if arch.model_type.startswith("gemma2"):
        # Gemma 2 soft-caps the final logits (x / cap, tanh, x cap): two more full-vocab tensors,
        # the tanh output saved for backward (measured: gemma-2-2b LoRA, +2.7 GiB at 4096 x 256k).
        per_logit += 4.0
    return tokens * arch.vocab_size * per_logit


def unsloth_ce_chunks(tokens: int, vocab: int, fixed: float = 0.0) -> int:
    """Unsloth's get_chunk_size on a large GPU (unsloth_zoo/fused_losses/cross_entropy_loss.py).

    ``fixed``: bytes no chunk count shrinks (the hidden-state gradient), taken off the target first.
    """
    target = UNSLOTH_CE_TARGET_GIB
    if 0.0 < fixed / GIB < target:
        target -= fixed / GIB
    exact = tokens * vocab * UNSLOTH_CE_BYTES_PER_LOGIT / GIB / target
    if exact <= 1.0:
        return 1
    return min(tokens, math.ceil(exact / 4 - 1e-9) * 4)


def _unsloth(arch: ModelArch, s: Settings, tokens: int) -> tuple[float, float]:
    """(activations, logits) under Unsloth.

    Offloaded gradient checkpointing (unsloth_zoo/gradient_checkpointing.py
    UnslothCheckpointFunction): every layer input goes to pinned CPU RAM; the GPU keeps two
    staging buffers of one hidden state (double buffering after the first pass) and one
    layer's recompute + backward (fast_lora.py's fused LoRA MLP/QKV keep their inputs and the
    SwiGLU gate/up), and the final RMSNorm keeps its input. The loss is unsloth_fused_ce_loss
    (cross_entropy_loss.py): the hidden-state gradient for every token (``empty_like(hidden_states)``,
    written during the forward, saved for backward) and one chunk of bf16 logits at a time.
    """
    h, q, kvd, inter, L = arch.hidden_size, arch.q_dim, arch.kv_dim, mlp_act_width(arch), arch.num_layers
    scale = (4 if (s.dtype == "float32" and s.mixed_precision == "none") else 2) / 2
    layer = (10 * h + 4 * q + 4 * kvd + 8 * inter) * scale  # one layer's recompute + backward, fused
    saved = (6 * h + 4 * q + 4 * kvd + 6 * inter) * scale
    keep = 4 * h if s.gradient_checkpointing else L * saved  # offloaded checkpoints: staging only
    if s.task == "full":
        layer += 4 * h + 2 * inter
    grad_in = tokens * h * 2.0 * scale
    chunk = math.ceil(tokens / unsloth_ce_chunks(tokens, arch.vocab_size, grad_in))
    act = tokens * (keep + layer + 2 * h * scale)  # + the final norm's input
    return act, grad_in + chunk * arch.vocab_size * UNSLOTH_CE_LIVE_BYTES * scale


def _optimizer_step(arch: ModelArch, s: Settings, trainable: int, n: int, zero: int, act: float) -> float:
    """What the optimizer step adds beyond the freed activations (ZeRO >= 2 / FSDP full fine-tunes).

    DeepSpeed's optimizer step casts gradients to fp32 while activations and logits are already
    freed, so it sets the peak only when it exceeds them. ZeRO-3 does it per sub-group of at most
    1e9 elements (+4 B each, next to the 16-bit partition); ZeRO-2 for the whole partition after
    freeing the 16-bit one (+2 B/param/N net for bf16). Measured with the real engines on 2 CPU
    ranks (bench/fsdp_shards_cpu.py, bench/data/fsdp_shards_cpu.jsonl); the sub-group cap is
    DeepSpeed 0.19's default sub_group_size. Under FSDP (TRL + accelerate) torch's foreach AdamW
    makes the same 4 B/param/N temporary for the whole shard at once (sqrt of the second moment):
    measured on 2x H100/H200, Llama-3.2-3B shape, the peak set in the optimizer step
    (bench/data/multigpu_gpu.jsonl), so for trl the cap does not apply (safe for DeepSpeed too).
    """
    if not (s.task == "full" and n > 1 and zero >= 2 and not s.cpu_offload and s.optimizer == "adamw"):
        return 0.0
    if zero < 3:
        step = trainable * (4.0 - dtype_bytes(s.dtype)) / n
    elif s.backend == "trl":
        step = trainable * 4.0 / n
    else:
        step = min(trainable * 4.0 / n, DS_SUB_GROUP_ELEMENTS * 4.0)
    return max(0.0, step - act)


def training_parts(arch: ModelArch, s: Settings, weights: float, n: int, zero: int, out: Parts) -> None:
    """Fill ``out`` for one training step on one of ``n`` GPUs (ZeRO stage ``zero``).

    A full fine-tune's gradients are written during the backward while the activations and
    logits they come from are freed: with one micro-batch per step (set_to_none after the step,
    Trainer's default) they count only beyond those (measured: Llama-3.2-1B full, 2048 x 2 and
    4096 x 1 without checkpointing: peak = weights + Adam states + activations + logits). Under
    gradient accumulation the previous micro-batches' gradients stay, so they add up; across GPUs the
    reducer's buckets and the sharded optimizer step are counted as measured there (additive).
    """
    fp32_master = s.dtype == "float32"
    hf = s.backend in HF_STACK
    rb = 4 if (fp32_master or (hf and s.task == "qlora")) else 2  # residual stream bytes
    w, adapter, grads, opt, trainable = _static(arch, s, weights, n, zero)
    tokens = s.seq_len * s.batch_size
    if s.backend == "unsloth":
        act, logit = _unsloth(arch, s, tokens)
    else:
        keep, layer = _hf_activations(arch, s, tokens, rb)
        if s.backend == "trl":
            logit = sum(_trl_fused_head_bytes(arch, s, tokens, rb, n, zero))
        else:
            logit = _hf_logits(arch, s, tokens)
        act = keep + layer  # added up as measured, though the loss head's backward runs before the layers'
    if arch.is_moe:
        act += tokens * arch.num_layers * arch.num_experts * 4 * 2  # router logits (fp32) and their softmax
    grads += _optimizer_step(arch, s, trainable, n, zero, act + logit)
    if s.task == "full" and not s.grad_accumulation and n == 1 and s.backend == "hf":
        # the gradients reuse what the backward frees: shown as gradients, taken off activations, then logits
        overlap = min(grads, act + logit)
        cut = min(act, overlap)
        act, logit = act - cut, logit - (overlap - cut)
    out.weights, out.adapter, out.gradients, out.optimizer_states = w, adapter, grads, opt
    out.trainable = int(trainable)
    out.activations, out.logits = act, logit
    dynamic = act + logit + grads + opt
    out.allocator_overhead = 0.06 * dynamic + 0.02 * (w + adapter) + 0.1 * GIB


def _trl_fused_head_bytes(arch: ModelArch, s: Settings, tokens: int, rb: int, n: int, zero: int) -> tuple[float, float]:
    """What TRL's fused LM head holds instead of the logits (TRL 1.15-1.16, read from its code).

    ``add_fused_lm_head`` + ``trl/kernels/chunked_logprob.py``: the projection runs in one
    [4096 tokens x 32768 vocab] tile in the compute dtype, the selected hidden states are saved,
    backward accumulates their gradient in fp32 and casts it, and a trainable lm_head (full
    fine-tunes) gets an fp32 gradient accumulator plus its cast. Under sharding the head is
    gathered whole (``full_tensor`` of fp32 shards after accelerate's upcast). Measured against
    TRL payload runs on H100/H200 (bench/data/memory_trl.jsonl).

    Returns (transient, kept): the tile, the weight chunk and the fp32 accumulator are freed when
    the chunked log-prob backward returns; the hidden states and the head's gradients stay.
    """
    h, V = arch.hidden_size, arch.vocab_size
    vchunk = min(V, 32768)
    transient = min(tokens, 4096) * vchunk * 2.0  # the tile (bf16/fp16 compute)
    transient += vchunk * h * 2.0  # the weight chunk cast to the compute dtype
    transient += tokens * h * 4.0  # the hidden states' fp32 gradient accumulator
    kept = tokens * h * (rb + 2.0)  # saved hidden states, and their gradient cast back
    if s.task == "full":
        kept += V * h * (4.0 + dtype_bytes(s.dtype))
        if n > 1 and zero >= 3:
            kept += V * h * 4.0
    return transient, kept
