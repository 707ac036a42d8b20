"""Model resolution: local dir with a hand-written safetensors header, catalog, offline Hub."""

from __future__ import annotations

import json
import struct

import pytest

from runners.errors import NotFound
from tools.models import catalog, catalog_lookup, read_safetensors_dir, resolve_model

PUBLISHED_B = {  # published parameter counts, billions
    "meta-llama/Llama-3.1-8B": 8.03,
    "meta-llama/Llama-3.1-70B": 70.6,
    "meta-llama/Llama-3.1-405B": 405.9,
    "meta-llama/Llama-3.2-3B": 3.21,
    "mistralai/Mixtral-8x7B-v0.1": 46.7,
    "Qwen/Qwen2.5-7B": 7.62,
    "Qwen/Qwen3-30B-A3B": 30.5,
    "Qwen/Qwen3-235B-A22B": 235.1,
    "google/gemma-2-9b": 9.24,
    "microsoft/phi-4": 14.7,
    "deepseek-ai/DeepSeek-V3": 671.0,
    "deepseek-ai/DeepSeek-V2-Lite": 15.7,
}


def write_safetensors(path, tensors: dict[str, tuple[str, list[int]]]) -> None:
    """A valid safetensors file written by hand: 8-byte header length, JSON header, zero bytes."""
    size = {"BF16": 2, "F16": 2, "F32": 4, "I32": 4}
    header, off = {}, 0
    for name, (dt, shape) in tensors.items():
        n = size[dt]
        for s in shape:
            n *= s
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * off)


def tiny_dir(tmp_path, quant: dict | None = None):
    cfg = {
        "model_type": "llama",
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "vocab_size": 256,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    if quant:
        cfg["quantization_config"] = quant
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    t = {"model.embed_tokens.weight": ("BF16", [256, 64]), "lm_head.weight": ("BF16", [256, 64])}
    for i in range(2):
        t[f"l{i}.q"] = ("BF16", [64, 64])
        t[f"l{i}.k"] = ("BF16", [32, 64])
        t[f"l{i}.v"] = ("BF16", [32, 64])
        t[f"l{i}.o"] = ("BF16", [64, 64])
        t[f"l{i}.mlp"] = ("BF16", [3, 128, 64])
        t[f"l{i}.norms"] = ("BF16", [2, 64])
    t["norm"] = ("BF16", [64])
    write_safetensors(tmp_path / "model.safetensors", t)
    return tmp_path


def test_catalog_is_large_and_sourced():
    assert len(catalog()) >= 30
    for arch in catalog().values():
        assert "catalog (" in arch.source and "config.json" in arch.source


@pytest.mark.parametrize("name,billions", sorted(PUBLISHED_B.items()))
def test_catalog_param_counts_match_published(name, billions):
    total = catalog()[name].param_counts()[0] / 1e9
    assert total == pytest.approx(billions, rel=0.01)


def test_aliases_and_moe_active():
    assert catalog_lookup("llama-3.3-70b").name == "meta-llama/Llama-3.1-70B"
    assert catalog_lookup("Qwen/Qwen2.5-7B-Instruct").name == "Qwen/Qwen2.5-7B"
    arch = catalog()["Qwen/Qwen3-30B-A3B"]
    total, active, _ = arch.param_counts()
    assert active / 1e9 == pytest.approx(3.3, rel=0.05) and total > 9 * active


def test_local_dir_exact_counts(tmp_path):
    d = tiny_dir(tmp_path)
    arch = resolve_model(str(d))
    elems, nbytes, by_dtype = read_safetensors_dir(d)
    assert arch.checkpoint_params == elems == arch.param_counts()[0]
    assert arch.checkpoint_bytes == nbytes == 2 * elems
    assert arch.num_kv_heads == 2 and arch.head_dim == 16 and by_dtype == {"BF16": elems}


def test_local_dir_prequantized_awq(tmp_path):
    arch = resolve_model(str(tiny_dir(tmp_path, {"quant_method": "awq", "bits": 4, "group_size": 128})))
    assert arch.stored_quantization == "awq" and arch.quant_bits == 4


def test_unknown_model_offline_names_three_ways(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFound) as e:
        resolve_model("nobody/does-not-exist-7b")
    text = str(e.value)
    assert "local directory" in text and "HF cache" in text and "catalog" in text


def test_hub_fails_fast_without_network(monkeypatch, tmp_path):
    """Online mode with no network: a clean NotFound, quickly (no hang, no traceback)."""
    import time

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "2")
    monkeypatch.setenv("HF_HUB_DOWNLOAD_TIMEOUT", "2")
    t0 = time.monotonic()
    with pytest.raises(NotFound):
        resolve_model("nobody/does-not-exist-7b")
    assert time.monotonic() - t0 < 30
