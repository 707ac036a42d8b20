"""Real CPU quantizations of a tiny random-init Llama through the quantize payload.

Why a subprocess fed a job.json: that is exactly how the engine runs it on a host
(``python quantize.py job.json``), reporting only through metrics.jsonl, outputs/ and
its exit code. bitsandbytes NF4 and INT8 run on the CPU here; llm-compressor pins
transformers <= 5.17.0, so its methods run only where ``LLMCOMPRESSOR_PYTHON`` names an
interpreter that has it (docs/workflow.md says how to build one beside this venv).

bitsandbytes' 4-bit CPU path depends on whether the CPU has AVX512-BF16, so the NF4 tests
force its probe each way (tests/helpers/bnb_probe.py) and run both paths on any CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import bitsandbytes  # noqa: F401  (the worker stack must be installed: make test does it)
import pytest

from tests.helpers.bnb_probe import check_forced_path, probe_env, read_report
from tests.helpers.ci import unavailable
from tests.helpers.tiny_model import build_tiny_model, build_tiny_tokenizer, make_dataset

PAYLOAD = Path(__file__).resolve().parents[2] / "runners" / "payloads" / "quantize.py"
LLMC_PYTHON = os.environ.get("LLMCOMPRESSOR_PYTHON")


def need_llmc() -> str:
    """The llm-compressor interpreter; without it skip, except under CI=true where it must exist."""
    if LLMC_PYTHON:
        return LLMC_PYTHON
    unavailable("set LLMCOMPRESSOR_PYTHON to an interpreter with llmcompressor (make test builds .venv-llmc)")
    raise AssertionError("unreachable")


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def run_payload(
    job_dir: Path, python: str = sys.executable, avx512bf16: bool | None = None, **settings: Any
) -> subprocess.CompletedProcess[str]:
    """Write job.json as the engine does (settings under payload_config) and run the payload on the CPU.

    ``avx512bf16``: force bitsandbytes' CPU probe that way (report in ``job_dir/bnb-probe.json``).
    """
    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "job.json").write_text(json.dumps({"job_id": "quantize-test", "payload_config": settings}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    for k in ("LLM_OPS_JOB_DIR", "LLM_OPS_OUTPUTS", "LLM_OPS_METRICS"):
        env.pop(k, None)
    if avx512bf16 is not None:
        env.update(probe_env(avx512bf16, job_dir / "bnb-probe.json"))
    return subprocess.run(
        [python, str(PAYLOAD), "job.json"], cwd=job_dir, capture_output=True, text=True, timeout=240, env=env
    )


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def check_ok(proc: subprocess.CompletedProcess[str]) -> None:
    assert proc.returncode == 0, f"payload failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def check_manifest(job: Path, method: str) -> dict[str, Any]:
    manifest = json.loads((job / "outputs" / "manifest.json").read_text())
    assert manifest["method"] == method
    assert 0 < manifest["size_after_bytes"] < manifest["size_before_bytes"]
    assert manifest["forward_check"]["ok"] and manifest["forward_check"]["finite"]
    before, after = manifest["perplexity_before"], manifest["perplexity_after"]
    assert before > 1 and after > 1
    # Random weights: perplexity is near the vocabulary size; quantization must not wreck it.
    assert abs(after / before - 1) < 0.25, manifest
    assert manifest["eval_tokens"] > 100
    assert (Path(manifest["output_dir"]) / "config.json").is_file()
    assert (Path(manifest["output_dir"]) / "tokenizer.json").is_file()
    end = read_metrics(job)[-1]
    assert end["event"] == "end" and end["perplexity_after"] == after
    return manifest


@pytest.mark.parametrize(
    ("method", "avx512bf16"),
    [("bnb-nf4", True), ("bnb-nf4", False), ("bnb-int8", None)],
    ids=["bnb-nf4-avx512bf16", "bnb-nf4-no-avx512bf16", "bnb-int8"],
)
def test_bitsandbytes_checkpoint_is_saved_reloaded_and_measured(
    tmp_path: Path, tiny_model: Path, method: str, avx512bf16: bool | None
) -> None:
    job = tmp_path / "job"
    proc = run_payload(job, model=str(tiny_model), method=method, output_name="q", avx512bf16=avx512bf16)
    check_ok(proc)
    manifest = check_manifest(job, method)
    assert manifest["kept_unquantized"] == {}
    if avx512bf16 is not None:  # 2 decoder layers x 7 projections are 4-bit; lm_head stays (ignore)
        check_forced_path(read_report(job / "bnb-probe.json"), avx512bf16, layers_4bit=14)
    cfg = json.loads((job / "outputs" / "q" / "config.json").read_text())
    qc = cfg["quantization_config"]
    assert qc["quant_method"] == "bitsandbytes"
    assert qc["load_in_4bit" if method == "bnb-nf4" else "load_in_8bit"] is True
    assert manifest["format"] == f"bitsandbytes-{method.removeprefix('bnb-')}"
    assert "reloaded and ran a forward pass" in proc.stdout
    phases = [m.get("phase") for m in read_metrics(job) if m["event"] == "phase"]
    assert phases == ["eval_before", "quantize", "reload", "eval_after"]


def build_tiny_qwen2_moe(out_dir: Path) -> Path:
    """A random-init Qwen2-MoE (the Qwen1.5-MoE-A2.7B / Qwen2-57B-A14B architecture), one decoder layer.

    Why this model: its ``shared_expert_gate`` is a Linear with one output, the shape real MoE
    checkpoints have and bitsandbytes' AVX512-BF16 CPU kernel cannot run in 4-bit.
    """
    import torch
    from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out_dir)
    torch.manual_seed(0)
    config = Qwen2MoeConfig(
        vocab_size=len(tok),
        hidden_size=64,
        intermediate_size=128,
        moe_intermediate_size=64,
        shared_expert_intermediate_size=128,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    Qwen2MoeForCausalLM(config).save_pretrained(str(out_dir))
    return out_dir


@pytest.mark.parametrize("avx512bf16", [True, False], ids=["avx512bf16", "no-avx512bf16"])
def test_nf4_on_cpu_leaves_a_moe_gate_the_cpu_kernel_cannot_run_unquantized(tmp_path: Path, avx512bf16: bool) -> None:
    """Before the fix the forced-on run died in the reload's forward: ``AssertionError: N must be
    divisible by block_n`` (bitsandbytes functional._convert_weight_packed_for_cpu). Now the gate
    stays unquantized on every CPU, so the checkpoint is the same whichever CPU made it."""
    model = build_tiny_qwen2_moe(tmp_path / "moe")
    job = tmp_path / "job"
    proc = run_payload(job, model=str(model), method="bnb-nf4", output_name="q", skip_eval=True, avx512bf16=avx512bf16)
    check_ok(proc)
    manifest = json.loads((job / "outputs" / "manifest.json").read_text())
    gate = "model.layers.0.mlp.shared_expert_gate"
    assert manifest["kept_unquantized"] == {gate: "1 output features, not a multiple of 32"}
    assert manifest["forward_check"]["ok"] and manifest["size_after_bytes"] < manifest["size_before_bytes"]
    assert f"keeping 1 layer(s) unquantized, which bitsandbytes' 4-bit CPU kernel cannot run: {gate}" in proc.stdout
    qc = json.loads((job / "outputs" / "q" / "config.json").read_text())["quantization_config"]
    assert qc["load_in_4bit"] is True and set(qc["llm_int8_skip_modules"]) == {"lm_head", gate}
    # q, k, v, o and the shared expert's gate/up/down projections are 4-bit (the experts are fused tensors)
    check_forced_path(read_report(job / "bnb-probe.json"), avx512bf16, layers_4bit=7)


def test_nf4_on_cpu_refuses_a_model_with_no_layer_to_quantize_before_loading_it(tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "narrow", hidden=16)  # 16 or 32 inputs everywhere: no 4-bit block
    job = tmp_path / "job"
    proc = run_payload(job, model=str(model), method="bnb-nf4")
    assert proc.returncode == 2, proc.stdout[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("BadInput: no layer of this model has a shape bitsandbytes' 4-bit CPU kernel can run")
    assert "multiple of the block size 64" in last and "use bnb-int8" in last
    records = read_metrics(job)
    assert records[-1]["kind"] == "bad_input" and records[-1]["phase"] == "resolve"
    assert not [r for r in records if r["event"] == "phase"]  # refused before the model was loaded at all


def test_calibrated_method_without_data_is_refused(tmp_path: Path, tiny_model: Path) -> None:
    job = tmp_path / "job"
    proc = run_payload(job, model=str(tiny_model), method="gptq")
    assert proc.returncode == 2
    assert "needs a calibration_dataset" in proc.stdout.splitlines()[-1]
    assert read_metrics(job)[-1]["kind"] == "bad_input"


def test_missing_model_directory_is_a_clear_error(tmp_path: Path) -> None:
    job = tmp_path / "job"
    proc = run_payload(job, model=str(tmp_path / "nope"), method="bnb-nf4")
    assert proc.returncode == 2
    assert "does not exist on this host" in proc.stdout


def test_llmcompressor_missing_is_reported_as_such(tmp_path: Path, tiny_model: Path) -> None:
    try:
        import llmcompressor  # noqa: F401

        unavailable("llmcompressor is installed in this interpreter (the lock keeps it out of .venv)")
    except ImportError:
        pass
    job = tmp_path / "job"
    proc = run_payload(job, model=str(tiny_model), method="fp8-dynamic", skip_eval=True)
    assert proc.returncode == 4, proc.stdout[-2000:]
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("MissingDependency:") and "'llmcompressor'" in last
    assert read_metrics(job)[-1]["kind"] == "missing_dependency"


@pytest.mark.parametrize("method", ["fp8-dynamic", "fp8"])
def test_llmcompressor_fp8_runs_on_cpu(tmp_path: Path, tiny_model: Path, method: str) -> None:
    need_llmc()
    data = make_dataset(tmp_path / "calib.jsonl", "text", n=16)
    job = tmp_path / "job"
    extra = {"calibration_dataset": str(data), "num_calibration_samples": 8} if method == "fp8" else {}
    proc = run_payload(job, python=LLMC_PYTHON, model=str(tiny_model), method=method, output_name="q", **extra)
    check_ok(proc)
    manifest = check_manifest(job, method)
    assert manifest["format"].startswith("compressed-tensors")
    cfg = json.loads((job / "outputs" / "q" / "config.json").read_text())
    assert cfg["quantization_config"]["quant_method"] == "compressed-tensors"


def test_gptq_refuses_a_model_too_narrow_for_its_groups(tmp_path: Path, tiny_model: Path) -> None:
    need_llmc()
    data = make_dataset(tmp_path / "calib.jsonl", "text", n=8)
    job = tmp_path / "job"
    proc = run_payload(job, python=LLMC_PYTHON, model=str(tiny_model), method="gptq", calibration_dataset=str(data))
    assert proc.returncode == 2, proc.stdout[-2000:]
    assert "not a multiple of the group size 128" in proc.stdout
