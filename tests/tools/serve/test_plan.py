"""start_vllm_server's plan by vLLM's own rules (tools/serve/plan.py plan_server over tools/plan.py).

vLLM starts when the weights, its working memory and ONE max_model_len sequence fit in
gpu_memory_utilization of the GPU (kv_cache_utils.check_enough_kv_cache_memory);
max_num_seqs is the scheduler's cap. So the plan shortens max_model_len only when one
sequence does not fit, quantizes only when the weights leave no room, only with a method the
host can run, and reports the KV cache and the concurrency at full length as vLLM logs them.
"""

from __future__ import annotations

import math

import pytest

from runners.accelerators import TIERS
from runners.errors import DoesNotFit, InvalidInput
from tools.memory_serving import vllm_server_budget
from tools.memory_settings import MemoryInput, resolve_settings
from tools.models import resolve_model
from tools.serve.plan import plan_server
from tools.serve.schema import StartServerInput

HOPPER_HOST = frozenset({"fp8"})  # vLLM without bitsandbytes in the host's interpreter
FULL_HOST = frozenset({"fp8", "bitsandbytes"})


def plan(model: str, tier: str = "H200", gpus: int = 1, methods: frozenset[str] | None = HOPPER_HOST, **kw):
    lora = kw.pop("lora_rank", None)
    return plan_server(
        resolve_model(model), StartServerInput(model=model, **kw), TIERS[tier], gpus, lora_rank=lora, methods=methods
    )


@pytest.mark.parametrize(
    ("model", "seqs", "lora", "context"),
    [
        ("meta-llama/Llama-3.2-1B", 32, 16, 131072),  # issue 16: planned bitsandbytes and a shorter context
        ("Qwen/Qwen2.5-7B", 64, None, 32768),  # issue 16: planned fp8
        ("meta-llama/Llama-3.1-8B", 64, None, 131072),
    ],
)
def test_models_that_fit_one_h200_are_served_as_they_are(model, seqs, lora, context):
    p = plan(model, max_num_seqs=seqs, lora_rank=lora)
    assert p.fits and p.quantization is None and p.max_model_len is None and p.tensor_parallel_size == 1
    assert p.kv_cache_tokens and p.max_concurrency and p.max_concurrency_at == context
    assert p.kv_cache_tokens == pytest.approx(p.max_concurrency * context, rel=0.001)
    text = " ".join(p.reasons)
    assert "No quantization" in text and "GPU KV cache size" in text and "Maximum concurrency" in text
    assert f"max_num_seqs {seqs} is vLLM's cap" in text and "Fits: vLLM would start" in text
    # concurrency at full length is reported, not demanded: 8B holds fewer than 64 full sequences
    if model.endswith("8B"):
        assert p.max_concurrency < seqs


def test_max_num_seqs_is_a_cap_not_a_demand():
    few = plan("meta-llama/Llama-3.1-8B", max_num_seqs=1)
    many = plan("meta-llama/Llama-3.1-8B", max_num_seqs=4096)
    for p in (few, many):
        assert p.fits and p.quantization is None and p.max_model_len is None
    # only the sampler warm-up (one row of logits per sequence) grows with it
    assert many.kv_cache_gib < few.kv_cache_gib < many.kv_cache_gib + 8


def test_context_is_shortened_only_when_one_sequence_does_not_fit():
    # Llama-3.1-8B on an L4 (22.5 GiB): 15 GiB of weights fit, a 131072-token sequence (16 GiB of KV) does not
    p = plan("meta-llama/Llama-3.1-8B", tier="L4")
    assert p.fits and p.quantization is None and p.max_model_len is not None and p.max_model_len < 131072
    assert p.max_model_len % 16 == 0 and p.max_model_len >= 4096
    arch = resolve_model("meta-llama/Llama-3.1-8B")
    s = resolve_settings(MemoryInput(model=arch.name, seq_len=p.max_model_len), arch)
    b = vllm_server_budget(arch, s, TIERS["L4"], 1)
    assert b.fits_one(p.max_model_len) and not b.fits_one(p.max_model_len + 32)
    assert "does not fit the KV cache; this is the longest that does" in " ".join(p.reasons)
    # an explicit max_model_len that does not fit is refused with the longest that does
    with pytest.raises(DoesNotFit, match=rf"Use max_model_len {p.max_model_len} or less"):
        plan("meta-llama/Llama-3.1-8B", tier="L4", max_model_len=131072)
    # and one that fits is kept
    assert plan("meta-llama/Llama-3.1-8B", tier="L4", max_model_len=8192).max_model_len == 8192


def test_quantizes_only_when_the_weights_do_not_fit_and_only_with_what_the_host_has():
    # 70B in bf16 is 131 GiB: more than 0.9 x 139.81 GiB of one H200, so fp8 (vLLM's own, Hopper)
    p = plan("meta-llama/Llama-3.1-70B")
    assert p.fits and p.quantization == "fp8" and "leave no room" in " ".join(p.reasons)
    # on two H200s it fits as it is: more GPUs before quantizing
    two = plan("meta-llama/Llama-3.1-70B", gpus=2)
    assert two.quantization is None and two.tensor_parallel_size == 2
    # an A100 has no fp8: 4-bit bitsandbytes, but only where the host's interpreter has bitsandbytes
    assert plan("meta-llama/Llama-3.1-70B", tier="A100-80GB", methods=FULL_HOST).quantization == "bitsandbytes"
    with pytest.raises(DoesNotFit, match="does not fit 1x A100-80GB"):
        plan("meta-llama/Llama-3.1-70B", tier="A100-80GB", methods=HOPPER_HOST)
    # asked for by name while the host lacks it: refused before anything starts
    with pytest.raises(InvalidInput, match="bitsandbytes"):
        plan("meta-llama/Llama-3.2-1B", quantization="bitsandbytes", methods=HOPPER_HOST)
    # asked for by name and available: used even though the model fits without
    assert plan("meta-llama/Llama-3.2-1B", quantization="fp8").quantization == "fp8"


def test_quantization_none_refuses_what_only_fits_quantized():
    with pytest.raises(DoesNotFit, match=r"no quantization allowed"):
        plan("meta-llama/Llama-3.1-70B", quantization="none")
    assert plan("meta-llama/Llama-3.2-1B", quantization="none", max_num_seqs=32).quantization is None


def test_kv_figures_match_the_budget_they_come_from():
    p = plan("Qwen/Qwen2.5-7B", max_num_seqs=64)
    arch = resolve_model("Qwen/Qwen2.5-7B")
    s = resolve_settings(MemoryInput(model=arch.name, seq_len=32768, max_num_seqs=64), arch)
    b = vllm_server_budget(arch, s, TIERS["H200"], 1)
    blocks = int(b.kv_available // b.page_bytes)
    assert p.kv_cache_tokens == int(blocks / math.ceil(32768 / 16) * 32768)
    assert p.max_concurrency == round(blocks / 2048, 2)


def test_a_checkpoint_stored_quantized_gets_no_quantization_flag():
    """vLLM reads the method from the checkpoint's quantization_config, and a --quantization
    that names another one (fp8 for a compressed-tensors checkpoint) is refused at start-up
    (vllm/config/model.py ModelConfig._verify_quantization: "... does not match the
    quantization method"), so a stored method plans as stored, with no flag."""
    arch = resolve_model("meta-llama/Llama-3.1-8B").model_copy(update={"stored_quantization": "fp8"})
    p = plan_server(arch, StartServerInput(model="/models/llama-fp8"), TIERS["H200"], 1, methods=HOPPER_HOST)
    assert p.fits and p.quantization is None, p
    assert "Quantization as stored (fp8)" in " ".join(p.reasons)
