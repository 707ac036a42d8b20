"""The ``trl`` backend: TRL's SFTTrainer (what submit_finetune runs without Unsloth) against the
runs of that payload measured on H100/H200 (bench/data/memory_trl.jsonl), and the physics that
separates it from a plain transformers loop (``hf``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.memory import estimate_memory
from tools.memory_settings import MemoryInput

ROWS = [
    json.loads(x)
    for x in (Path(__file__).parents[2] / "bench" / "data" / "memory_trl.jsonl").read_text().splitlines()
    if x.strip()
]
_KEYS = set(MemoryInput.model_fields)


def _est(**kw: object):
    return estimate_memory(MemoryInput(**kw), with_plan=False)


@pytest.mark.parametrize("row", ROWS, ids=[r["id"] for r in ROWS])
def test_each_measured_trl_run_is_within_ten_percent(row: dict) -> None:
    """The accuracy target (no under-estimate worse than 10 %) on every TRL payload run we measured."""
    est = _est(**{k: v for k, v in row.items() if k in _KEYS and v is not None}).total_gib
    err = (est - row["measured_gib"]) / row["measured_gib"]
    assert -0.10 <= err <= 0.10, f"{row['id']}: estimate {est} GiB, measured {row['measured_gib']} ({err:+.1%})"


def test_trl_never_holds_the_logits_a_plain_loop_does() -> None:
    kw = dict(model="meta-llama/Llama-3.2-1B", task="lora", seq_len=2048, batch_size=4, gradient_checkpointing=True)
    hf, trl = _est(backend="hf", **kw), _est(backend="trl", **kw)
    assert hf.breakdown_gib.logits > 11  # 8192 tokens x 128k vocab x 12 B
    assert trl.breakdown_gib.logits < 1  # one 4096 x 32768 tile + hidden-state gradients
    assert trl.breakdown_gib.weights == hf.breakdown_gib.weights
    assert trl.breakdown_gib.activations == hf.breakdown_gib.activations


def test_trl_full_finetune_counts_the_lm_head_gradient_and_the_gathered_head() -> None:
    kw = dict(model="meta-llama/Llama-3.2-3B", task="full", backend="trl", seq_len=2048, batch_size=2)
    one = _est(**kw).breakdown_gib.logits
    lora = _est(**{**kw, "task": "lora"}).breakdown_gib.logits
    fsdp = _est(**kw, num_gpus=2, zero_stage=3).breakdown_gib.logits
    head_gib = 128256 * 3072 / 2**30
    assert one - lora == pytest.approx(head_gib * 6, abs=0.02)  # fp32 gradient accumulator + its bf16 cast
    assert fsdp - one == pytest.approx(head_gib * 4, abs=0.02)  # the head gathered whole from fp32 shards


def test_fsdp_optimizer_step_temporary_is_not_capped_for_trl() -> None:
    """torch's foreach AdamW holds 4 B/param/N at once under FSDP (the measured 3B peak): an 8B shard's
    temporary is 15 GB, above DeepSpeed's 4 GB sub-group cap that ``hf`` keeps."""
    kw = dict(model="meta-llama/Llama-3.1-8B", task="full", seq_len=2048, batch_size=1, num_gpus=2, zero_stage=3)
    hf, trl = _est(backend="hf", **kw), _est(backend="trl", **kw)
    step_gib = 4 * 8.03e9 / 2 / 2**30
    peak_dynamic = trl.breakdown_gib.activations + trl.breakdown_gib.logits
    assert trl.breakdown_gib.gradients == pytest.approx(7.48 + step_gib - peak_dynamic, abs=0.1)
    assert trl.total_gib > 79 > hf.total_gib  # does not fit 2x H100 in the step; hf's capped copy did
