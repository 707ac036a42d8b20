"""The planner: smallest valid TP, quantize only when needed, batch and accumulation."""

from __future__ import annotations

from runners.accelerators import TIERS
from tools.memory_settings import MemoryInput, resolve_settings, tp_is_valid
from tools.models import catalog_lookup
from tools.plan import plan_inference, plan_training


def settings(model, **kw):
    arch = catalog_lookup(model)
    return arch, resolve_settings(MemoryInput(model=model, **kw), arch)


def test_tp_must_divide_heads():
    arch = catalog_lookup("qwen2.5-7b")  # 28 heads, 4 KV heads
    assert tp_is_valid(arch, 4) and not tp_is_valid(arch, 8) and not tp_is_valid(arch, 3)


def test_70b_on_h100_takes_smallest_tp_without_quantizing():
    arch, s = settings("llama-3.1-70b", seq_len=8192)
    plan = plan_inference(arch, s, TIERS["H100"])
    assert plan.fits and plan.tensor_parallel_size == 2 and plan.quantization == "none"


def test_quantizes_only_when_needed():
    arch, s = settings("llama-3.1-70b", seq_len=4096)
    plan = plan_inference(arch, s, TIERS["L40S"], max_gpus=1)
    assert plan.fits and plan.quantization != "none" and plan.notes
    small = plan_inference(*settings("llama-3.1-8b", seq_len=4096), TIERS["L40S"], max_gpus=1)
    assert small.quantization == "none"


def test_training_micro_batch_and_accumulation():
    arch, s = settings(
        "llama-3.1-8b", task="lora", backend="hf", seq_len=4096, batch_size=16, gradient_checkpointing=True
    )
    plan = plan_training(arch, s, TIERS["RTX4090"], target_batch=16)
    assert plan.fits
    assert plan.micro_batch_size * plan.gradient_accumulation_steps >= 16
    assert plan.estimated_gib <= TIERS["RTX4090"].memory_gib


def test_training_prefers_no_checkpointing_when_it_fits():
    arch, s = settings("llama-3.2-1b", task="lora", backend="unsloth", seq_len=512, gradient_checkpointing=False)
    plan = plan_training(arch, s, TIERS["H100"])
    assert plan.fits and plan.gradient_checkpointing is False
