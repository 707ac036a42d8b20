"""vLLM 0.26's budget rules (tools/serve/vllm_memory.py) against vLLM's own formulas and log lines."""

from __future__ import annotations

import math

import pytest

from runners.accelerators import TIERS
from tools.memory import estimate_memory
from tools.memory_serving import vllm_server_budget
from tools.memory_settings import GIB, MemoryInput, resolve_settings
from tools.models import catalog_lookup
from tools.serve.vllm_memory import BLOCK_SIZE, VllmBudget, batch_defaults, cuda_total_gib, cudagraph_capture_sizes

LLAMA_1B_PAGE = BLOCK_SIZE * 16 * 2 * 8 * 64 * 2  # 16 tokens x 16 layers x (K, V) x 8 KV heads x 64 x bf16


def _budget(kv_bytes: float, page: float = LLAMA_1B_PAGE) -> VllmBudget:
    """A budget whose available KV memory is exactly ``kv_bytes``."""
    total = 100 * GIB
    requested = math.ceil(total * 0.9)
    return VllmBudget(
        total=total, util=0.9, weights=requested - kv_bytes, forward_peak=0, sampler_peak=0, non_torch=0,
        cuda_graphs=0, page_bytes=page,
    )  # fmt: skip


def test_kv_tokens_and_concurrency_are_vllms_numbers():
    # vLLM 0.26 logged for a Llama-3.2-1B shape on an H200: "GPU KV cache size: 4,111,056 tokens",
    # "Maximum concurrency for 131,072 tokens per request: 31.36x" (256,941 blocks of 16 tokens).
    b = _budget(256_941 * LLAMA_1B_PAGE + LLAMA_1B_PAGE / 2)
    assert b.kv_tokens(131072) == 4_111_056
    assert f"{b.max_concurrency(131072):.2f}" == "31.36"
    # a max_model_len that is not a multiple of the block size needs a whole last block
    assert b.max_concurrency(100) == pytest.approx(256_941 / 7)
    assert b.kv_tokens(100) == int(256_941 / 7 * 100)


def test_one_request_of_max_model_len_must_fit_and_no_more():
    need = math.ceil(131072 / BLOCK_SIZE) * LLAMA_1B_PAGE  # kv_cache_interface max_memory_usage_bytes
    assert _budget(need).fits_one(131072)
    assert not _budget(need - 1).fits_one(131072)
    assert not _budget(0).fits_one(16)  # "No available memory for the cache blocks"
    # vLLM's estimate of the longest context that fits: whole blocks, the last one may be partial
    assert _budget(need - 1).max_model_len_that_fits(131072) == 131072 - BLOCK_SIZE


def test_batch_defaults_follow_get_batch_defaults():
    assert batch_defaults(TIERS["H200"].memory_gib, "H200") == (8192, 1024)
    assert batch_defaults(TIERS["H100"].memory_gib, "H100") == (8192, 1024)
    assert batch_defaults(TIERS["A100-80GB"].memory_gib, "A100-80GB") == (2048, 256)  # A100s are excluded
    assert batch_defaults(TIERS["L4"].memory_gib, "L4") == (2048, 256)


def test_capture_sizes_and_cuda_totals():
    sizes = cudagraph_capture_sizes(1024)
    assert sizes[:4] == [1, 2, 4, 8] and sizes[-1] == 512 and len(sizes) == 51  # 51 PIECEWISE graphs
    assert len([x for x in cudagraph_capture_sizes(256) if x <= 256]) == 35  # 35 FULL at max_num_seqs 256
    assert cudagraph_capture_sizes(8)[-1] == 16
    assert cuda_total_gib(TIERS["H200"].memory_gib, "H200", TIERS["H200"].memory_gib) == 139.80
    assert cuda_total_gib(120.0, "H200", TIERS["H200"].memory_gib) == 119.5  # a host override is kept
    assert cuda_total_gib(15.77, None) == 15.77  # already CUDA's figure


def test_budget_terms_for_a_real_shape():
    arch = catalog_lookup("meta-llama/Llama-3.1-8B")
    s = resolve_settings(MemoryInput(model="meta-llama/Llama-3.1-8B", seq_len=131072), arch)
    b = vllm_server_budget(arch, s, TIERS["H200"], 1)
    assert s.util == 0.92  # vLLM 0.26's default (config/cache.py)
    assert b.requested == math.ceil(139.80 * GIB * 0.92)
    assert b.weights / GIB == pytest.approx(8.03e9 * 2 / GIB, rel=0.01)
    # a dense model runs on Model Runner V2: its sampler warm-up holds the bf16 logits of 1024 rows
    # (no top-k/top-p), the 8192-token forward is the peak, and the graphs are not in the budget
    assert b.sampler_peak == pytest.approx(1024 * 128256 * 2 + 8192 * 4096 * 2)
    assert b.forward_peak > b.sampler_peak and b.activation_peak == b.forward_peak
    assert b.cuda_graphs == 0 and b.graphs_outside > 0.5 * GIB and b.context_fits_outside()
    assert b.page_bytes == BLOCK_SIZE * 32 * 2 * 8 * 128 * 2
    tp2 = vllm_server_budget(arch, s, TIERS["H200"], 2)
    assert tp2.weights == pytest.approx(b.weights / 2) and tp2.page_bytes == b.page_bytes / 2
    lora = resolve_settings(MemoryInput(model="meta-llama/Llama-3.1-8B", seq_len=131072, serve_lora_rank=16), arch)
    with_lora = vllm_server_budget(arch, lora, TIERS["H200"], 1)
    assert 0 < with_lora.weights - b.weights < 0.1 * GIB  # the stacked adapter buffers
    assert with_lora.graphs_outside > b.graphs_outside  # graphs with and without adapters


def test_moe_models_run_on_model_runner_v1_with_its_sampler_and_graph_estimate():
    arch = catalog_lookup("mixtral-8x7b")
    s = resolve_settings(MemoryInput(model="mixtral-8x7b", seq_len=32768), arch)
    b = vllm_server_budget(arch, s, TIERS["H200"], 1)
    # V1's warm-up samples with top-k/top-p: 14 B per logit plus the per-SM buffer, forward hidden states held
    assert b.sampler_peak == pytest.approx(1024 * 32000 * 14 + 132 * 32000 * 4 + 8192 * 4096 * 2)
    assert b.cuda_graphs > 0 and b.graphs_outside == 0  # the budget pays for V1's graph estimate


def test_estimate_reports_vllms_lines():
    r = estimate_memory(MemoryInput(model="Qwen/Qwen2.5-7B", seq_len=32768, gpu="H200"), with_plan=False)
    v = r.vllm
    assert v is not None and v.fits_one_sequence and v.max_model_len_that_fits == 32768
    assert r.max_kv_tokens == v.kv_tokens and r.max_concurrency == v.max_concurrency
    kv = v.requested_gib - v.weights_gib - v.activation_peak_gib - v.non_torch_gib - v.cuda_graphs_gib
    assert v.kv_cache_gib == pytest.approx(kv, abs=0.03)
    assert v.kv_tokens == pytest.approx(v.kv_cache_gib * GIB / (28 * 2 * 4 * 128 * 2), rel=0.001)
    assert "Maximum concurrency" in " ".join(r.assumptions) and "maximum concurrency" in r.summary
    # batch_size is not a demand for vLLM: the same fit whatever it is
    many = estimate_memory(
        MemoryInput(model="Qwen/Qwen2.5-7B", seq_len=32768, gpu="H200", batch_size=512), with_plan=False
    )
    assert many.fits["H200"].min_gpus == 1 and many.vllm is not None and many.vllm.kv_tokens == v.kv_tokens
