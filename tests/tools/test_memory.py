"""The estimator's physics and its input rules, as plain functions (no MCP)."""

from __future__ import annotations

import pytest

from runners.errors import InvalidInput, NotFound
from tools.memory import estimate_memory
from tools.memory_settings import MemoryInput
from tools.models import catalog


def est(**kw):
    kw.setdefault("model", "meta-llama/Llama-3.1-8B")
    return estimate_memory(MemoryInput(**kw), with_plan=kw.pop("with_plan", True))


def test_parts_sum_to_total():
    r = est(task="lora", backend="hf", seq_len=2048, batch_size=2)
    assert sum(r.breakdown_gib.model_dump().values()) == pytest.approx(r.total_gib, abs=0.06)
    assert r.params.total == catalog()["meta-llama/Llama-3.1-8B"].param_counts()[0]
    assert 0 < r.params.trainable < r.params.total / 100
    assert r.assumptions and r.summary.endswith(".")


def test_weights_by_precision():
    bf16 = est().breakdown_gib.weights
    assert bf16 == pytest.approx(8.03e9 * 2 / 2**30, rel=0.01)
    nf4 = est(task="qlora", backend="unsloth").breakdown_gib.weights
    assert 4.5 < nf4 < 6.0  # 4-bit linears + 16-bit embeddings and lm_head


def test_gqa_kv_cache_vs_mha():
    """Llama 3.1 8B has 8 KV heads (GQA): 128 KiB per token in bf16; Llama 2 7B (MHA) 512 KiB."""
    gqa = est(seq_len=8192, batch_size=4, gpu=None).breakdown_gib.kv_cache
    assert gqa == pytest.approx(8192 * 4 * 2 * 32 * 8 * 128 * 2 / 2**30, rel=0.01)
    mha = est(model="llama-2-7b", seq_len=4096, batch_size=4).breakdown_gib.kv_cache
    assert mha == pytest.approx(4096 * 4 * 2 * 32 * 32 * 128 * 2 / 2**30, rel=0.01)
    fp8 = est(seq_len=8192, batch_size=4, kv_cache_dtype="fp8").breakdown_gib.kv_cache
    assert fp8 == pytest.approx(gqa / 2, rel=0.02)


def test_sliding_window_caps_kv():
    full = est(model="mistral-7b-v0.3", seq_len=32768).breakdown_gib.kv_cache
    slide = est(model="mistralai/Mistral-7B-v0.1", seq_len=32768).breakdown_gib.kv_cache
    assert slide == pytest.approx(full / 8, rel=0.02)


def test_vllm_budget_and_tp():
    one = est(gpu="H100", seq_len=8192)
    assert one.max_kv_tokens and one.max_kv_tokens > 300_000
    # CUDA context + vLLM's whole budget, ceil(79.18 GiB (CUDA's total of an H100) x 0.92, vLLM 0.26's
    # default), + the CUDA graphs Model Runner V2 captures outside it after the KV cache
    assert one.vllm is not None and one.vllm.cuda_graphs_gib == 0 and one.vllm.cuda_graphs_captured_gib > 0.5
    assert one.total_gib == pytest.approx(79.18 * 0.92 + 0.55 + one.vllm.cuda_graphs_captured_gib, abs=0.02)
    seventy = est(model="llama-3.1-70b", gpu="H100:2", seq_len=8192)
    assert seventy.max_kv_tokens > 8192 and seventy.breakdown_gib.weights == pytest.approx(65.7, rel=0.02)
    assert seventy.fits["H100"].min_gpus == 2 and seventy.fits["B200"].min_gpus == 1  # H200: 131 GiB > 0.9 x 140


def test_moe_resident_vs_active():
    r = est(model="mixtral-8x7b", seq_len=4096)
    assert r.params.active < r.params.total / 3
    assert r.breakdown_gib.weights == pytest.approx(46.7e9 * 2 / 2**30, rel=0.01)


def test_logits_hf_vs_unsloth_and_checkpointing():
    hf = est(task="lora", backend="hf", seq_len=8192)
    un = est(task="lora", backend="unsloth", seq_len=8192)
    assert hf.breakdown_gib.logits > 10 * un.breakdown_gib.logits
    assert hf.breakdown_gib.logits == pytest.approx(8192 * 128256 * 12 / 2**30, rel=0.01)
    no_ckpt = est(task="lora", backend="hf", seq_len=8192, gradient_checkpointing=False)
    assert no_ckpt.breakdown_gib.activations > 3 * hf.breakdown_gib.activations
    assert un.breakdown_gib.activations < hf.breakdown_gib.activations


def test_full_finetune_optimizers_and_zero():
    bf16 = est(model="llama-3.2-1b", task="full", backend="hf", seq_len=1024)
    p = bf16.params.total
    assert bf16.breakdown_gib.optimizer_states == pytest.approx(p * 4 / 2**30, rel=0.01)  # bf16 Adam moments
    amp = est(model="llama-3.2-1b", task="full", backend="hf", seq_len=1024, dtype="float32")
    assert amp.breakdown_gib.weights == pytest.approx(p * 6 / 2**30, rel=0.01)  # fp32 + autocast copies
    assert amp.breakdown_gib.optimizer_states == pytest.approx(p * 8 / 2**30, rel=0.01)
    eight = est(model="llama-3.2-1b", task="full", backend="hf", seq_len=1024, optimizer="adamw_8bit")
    assert eight.breakdown_gib.optimizer_states == pytest.approx(p * 2 / 2**30, rel=0.01)
    z3 = est(model="llama-3.1-8b", task="full", backend="hf", num_gpus=8, zero_stage=3)
    z0 = est(model="llama-3.1-8b", task="full", backend="hf", num_gpus=8, zero_stage=0)
    assert z3.total_gib < z0.total_gib / 2


def test_qlora_hf_upcasts_embeddings():
    hf = est(task="qlora", backend="hf").breakdown_gib.weights
    un = est(task="qlora", backend="unsloth").breakdown_gib.weights
    assert hf - un == pytest.approx(2 * 128256 * 4096 * 2 / 2**30, rel=0.05)


@pytest.mark.parametrize(
    "kw,needle",
    [
        (dict(seq_len=0), "seq_len"),
        (dict(batch_size=-1), "batch_size"),
        (dict(tensor_parallel_size=3), "divide"),
        (dict(task="lora", quantization="awq"), "AWQ"),
        (dict(task="full", zero_stage=2), "ZeRO"),
        (dict(task="full", backend="vllm"), "vLLM"),
        (dict(task="qlora", quantization="gptq"), "qlora"),
        (dict(task="lora", lora_targets=["nonsense"]), "target"),
    ],
)
def test_bad_input_says_what_to_change(kw, needle):
    with pytest.raises(InvalidInput) as e:
        est(**kw)
    assert needle.lower() in str(e.value).lower() and e.value.fix


def test_unknown_model(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFound):
        est(model="nobody/nothing-1b")


def test_local_dir_model(tmp_path):
    from tests.tools.test_models import tiny_dir

    r = est(model=str(tiny_dir(tmp_path)), task="lora", backend="hf", seq_len=128)
    assert r.params.total == 2 * 256 * 64 + 2 * (64 * 64 * 2 + 32 * 64 * 2 + 3 * 128 * 64 + 2 * 64) + 64
    assert "local directory" in r.model_source


def test_no_heavy_imports():
    import subprocess
    import sys

    code = (
        "import sys, tools.memory, tools.plan, tools.models, server.surface_memory; "
        "bad = [m for m in ('torch','transformers','vllm','unsloth','trl','peft','bitsandbytes','datasets') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_fast():
    import time

    p = MemoryInput(model="meta-llama/Llama-3.1-70B", gpu="H100", seq_len=8192)
    estimate_memory(p)
    t0 = time.perf_counter()
    for _ in range(50):
        estimate_memory(p)
    assert (time.perf_counter() - t0) / 50 < 0.02  # target 5 ms; loose for slow CI
