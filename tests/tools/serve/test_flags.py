"""Command building against a REAL recorded `vllm serve --help=all` (vLLM 0.26.0).

The recorded help is the contract: every field of our typed spec must be a flag that
vLLM version knows, with the same kind (switch or value) and, where vLLM lists
choices, values it accepts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.errors import InvalidInput
from tools.serve.flags import (
    MANAGED_FLAGS,
    FlagCache,
    KnownFlags,
    LoraModule,
    VllmServeArgs,
    build_extra_argv,
    flag_name,
    parse_help,
    to_argv,
)

HELP = Path(__file__).parents[2] / "data" / "vllm" / "serve-help-all-0.26.0.txt"
TYPED = {flag_name(f) for f in VllmServeArgs.model_fields}


@pytest.fixture(scope="module")
def known() -> KnownFlags:
    return parse_help(HELP.read_text(encoding="utf-8"), "0.26.0", str(HELP))


def test_recorded_help_parses_every_option(known: KnownFlags) -> None:
    text = HELP.read_text(encoding="utf-8")
    assert "vLLM 0.26.0" in text.splitlines()[0]
    # every long option line of the help is in the list, and nothing from the epilog's examples
    assert len(known.flags) == sum(1 for ln in text.splitlines() if ln.startswith("  --") and "--help" not in ln)
    assert "json-arg" not in known.flags
    tp = known.flags["tensor-parallel-size"]
    assert tp.takes_value and not tp.negatable
    pc = known.flags["enable-prefix-caching"]
    assert not pc.takes_value and pc.negatable
    assert known.get("--no-enable-prefix-caching") is pc
    assert known.get("max_model_len") is known.flags["max-model-len"]  # underscores, like vLLM accepts
    assert known.flags["dtype"].choices == ["auto", "bfloat16", "float", "float16", "float32", "half"]
    assert known.flags["tokenizer-mode"].choices[:2] == ["auto", "deepseek_v32"]
    assert known.flags["max-lora-rank"].choices == ["1", "8", "16", "32", "64", "128", "256", "320", "512"]
    assert known.get("no-such-flag") is None


def test_every_typed_field_is_a_flag_of_the_recorded_version(known: KnownFlags) -> None:
    for name, info in VllmServeArgs.model_fields.items():
        if name == "model":
            continue  # positional model_tag
        flag = known.flags.get(flag_name(name))
        assert flag is not None, f"--{flag_name(name)} is not a vLLM 0.26.0 flag"
        is_bool = info.annotation in (bool, bool | None)
        assert flag.takes_value != is_bool, f"--{flag.name}: switch/value mismatch"
        if is_bool and info.annotation is bool:
            assert flag.negatable, f"--{flag.name} has no --no- form"


def test_only_non_defaults_are_emitted() -> None:
    assert to_argv(VllmServeArgs(model="Qwen/Qwen2.5-7B")) == ["Qwen/Qwen2.5-7B"]
    # vLLM's own defaults given explicitly still emit nothing
    # vLLM 0.26's own defaults are not emitted (gpu_memory_utilization: 0.92, vllm/config/cache.py)
    assert to_argv(VllmServeArgs(model="m", tensor_parallel_size=1, gpu_memory_utilization=0.92, port=8000)) == ["m"]
    assert "--gpu-memory-utilization" in to_argv(VllmServeArgs(model="m", gpu_memory_utilization=0.9))


def test_reflection_kebab_case_booleans_lists(known: KnownFlags) -> None:
    args = VllmServeArgs(
        model="/models/llama",
        served_model_name=["base"],
        tensor_parallel_size=4,
        max_model_len=8192,
        gpu_memory_utilization=0.85,
        dtype="bfloat16",
        kv_cache_dtype="fp8",
        quantization="fp8",
        enable_prefix_caching=False,
        max_num_seqs=32,
        enable_lora=True,
        max_loras=2,
        max_lora_rank=64,
        lora_modules=[LoraModule(name="a", path="/ad/a"), LoraModule(name="b", path="/ad/x=y")],
        host="127.0.0.1",
        port=8123,
    )
    argv = to_argv(args, known)
    assert argv == [
        "/models/llama",
        "--served-model-name",
        "base",
        "--tensor-parallel-size",
        "4",
        "--max-model-len",
        "8192",
        "--gpu-memory-utilization",
        "0.85",
        "--dtype",
        "bfloat16",
        "--kv-cache-dtype",
        "fp8",
        "--quantization",
        "fp8",
        "--no-enable-prefix-caching",
        "--max-num-seqs",
        "32",
        "--enable-lora",
        "--max-loras",
        "2",
        "--max-lora-rank",
        "64",
        "--lora-modules",
        "a=/ad/a",
        '{"name":"b","path":"/ad/x=y"}',
        "--host",
        "127.0.0.1",
        "--port",
        "8123",
    ]
    assert to_argv(VllmServeArgs(model="m", enable_prefix_caching=True)) == ["m", "--enable-prefix-caching"]


def test_flags_the_host_lacks_or_refuses_are_errors(known: KnownFlags) -> None:
    old = KnownFlags(
        version="0.4.0", source="test", flags={k: v for k, v in known.flags.items() if k != "enable-prefix-caching"}
    )
    with pytest.raises(InvalidInput, match=r"vLLM 0\.4\.0 on this host has no --enable-prefix-caching"):
        to_argv(VllmServeArgs(model="m", enable_prefix_caching=True), old)
    with pytest.raises(InvalidInput, match="--kv-cache-dtype fp9 is not accepted"):
        to_argv(VllmServeArgs(model="m", kv_cache_dtype="fp9"), known)


def test_spec_rejects_values_that_look_like_flags() -> None:
    for bad in (
        {"model": "--trust-remote-code"},
        {"model": "m", "served_model_name": ["-x"]},
        {"model": "m", "host": "-0.0.0.0"},
        {"model": "m\nrm -rf /"},
    ):
        with pytest.raises(ValueError):
            VllmServeArgs(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LoraModule(name="a", path="--evil")


def test_extra_args_are_validated_against_the_host_version(known: KnownFlags) -> None:
    argv = build_extra_argv(
        {
            "max_num_batched_tokens": 8192,
            "--enforce-eager": True,
            "enable-chunked-prefill": False,
            "speculative_config": {"method": "ngram", "num_speculative_tokens": 4},
            "allowed_origins": ["http://a", "http://b"],
            "no-enable-log-requests": True,
            "load-format": "safetensors",
        },
        known,
        TYPED,
    )
    assert argv == [
        "--max-num-batched-tokens",
        "8192",
        "--enforce-eager",
        "--no-enable-chunked-prefill",
        "--speculative-config",
        '{"method":"ngram","num_speculative_tokens":4}',
        "--allowed-origins",
        "http://a",
        "http://b",
        "--no-enable-log-requests",
        "--load-format",
        "safetensors",
    ]


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ({"max_num_batch_tokens": 1}, r"no flag --max-num-batch-tokens\. Fix: Did you mean --max-num-batched-tokens"),
        ({"frobnicate": 1}, "no flag --frobnicate"),
        ({"api_key": "sk-123"}, "VLLM_API_KEY"),
        ({"port": 9000}, "port parameter"),
        ({"host": "0.0.0.0"}, "can't be passed in extra_args"),
        ({"tensor_parallel_size": 8}, "Pass tensor_parallel_size=... instead"),
        ({"max-lora-rank": 8}, "parameter of start_vllm_server"),
        ({"load_format": "--model=/etc"}, "starts with '-'"),
        ({"load_format": "a\nb"}, "control character"),
        ({"tokenizer_mode": "nonsense"}, r"not accepted by vLLM 0\.26\.0\. Fix: Use one of: auto, deepseek_v32"),
        ({"enforce_eager": "yes"}, "is a switch and takes no value"),
        ({"max_num_batched_tokens": []}, "empty list"),
        ({"bad key!": 1}, "not a flag name"),
    ],
)
def test_bad_extra_args(known: KnownFlags, extra: dict, match: str) -> None:
    with pytest.raises(InvalidInput, match=match):
        build_extra_argv(extra, known, TYPED)


def test_negative_numbers_are_values_not_flags(known: KnownFlags) -> None:
    assert build_extra_argv({"seed": -1}, known, TYPED) == ["--seed", "-1"]


def test_managed_flags_exist_in_the_recorded_version(known: KnownFlags) -> None:
    for flag in MANAGED_FLAGS:
        if flag != "model":
            assert flag in known.flags


def test_flag_cache_round_trip(known: KnownFlags, tmp_path: Path) -> None:
    cache = FlagCache(tmp_path)
    assert cache.get("gpu1", "0.26.0") is None
    cache.put("gpu1", known)
    again = cache.get("gpu1", "0.26.0")
    assert again is not None and again.flags == known.flags
    assert cache.get("gpu1", "0.27.0") is None and cache.get("other", "0.26.0") is None
    (cache.dir / next(iter(p.name for p in cache.dir.iterdir()))).write_text("{broken")
    assert cache.get("gpu1", "0.26.0") is None  # a damaged entry is read again from the host


def test_help_that_is_not_vllms_is_refused() -> None:
    with pytest.raises(InvalidInput, match="did not look like vLLM's help"):
        parse_help("usage: something\n  --one ONE\n", "0.0.1", "test")
