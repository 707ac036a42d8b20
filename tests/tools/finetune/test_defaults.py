"""One table of fine-tune defaults: the payload's DEFAULTS, which the controller reads instead of copying.

The payload is the source (it runs on the host self-contained; a key a job config omits takes its
value). These tests hold the controller's three users of the defaults to it: the input model's field
defaults, the plan's ``auto`` fallbacks, and the job config build_finetune_spec writes.
"""

from __future__ import annotations

import ast
from importlib.resources import files

import pytest

from runners.config import HostConfig
from tools.finetune.defaults import DEFAULTS, read_payload_defaults
from tools.finetune.inputs import FinetuneInput
from tools.finetune.plan import plan_finetune
from tools.finetune.spec import DEFAULT_OPTIMIZER, build_finetune_spec

PAYLOAD = files("runners.payloads").joinpath("finetune.py").read_text()
# Input fields whose default is a planning choice, not a payload setting ('auto' resolved by the plan).
PLANNED = {"backend", "per_device_batch_size", "gradient_accumulation_steps", "gradient_checkpointing", "strategy"}


def test_the_read_table_is_the_payloads_own() -> None:
    """Against the whole module parsed, not the block the reader cuts out: the reader cannot drift."""
    tree = ast.parse(PAYLOAD)
    node = next(
        n
        for n in tree.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name) and n.target.id == "DEFAULTS"
    )
    assert DEFAULTS == ast.literal_eval(node.value) == read_payload_defaults(PAYLOAD)


def test_input_defaults_are_the_payloads() -> None:
    fields = FinetuneInput.model_fields
    shared = (set(fields) & set(DEFAULTS)) - PLANNED
    assert {"max_seq_length", "learning_rate", "seed", "save_steps", "lora_dropout", "method"} <= shared
    for name in shared:
        if not fields[name].is_required() and fields[name].default is not None:
            assert fields[name].default == DEFAULTS[name], name
    assert f"Default {DEFAULTS['lora_r']} " in (fields["lora_r"].description or "")


def test_a_job_of_defaults_carries_the_payloads_values(tmp_path) -> None:
    p = FinetuneInput(model="/models/x", dataset="/data/d.jsonl")  # unknown to the controller: no memory plan
    host = HostConfig(name="cpu", workdir=str(tmp_path))
    plan, _ = plan_finetune(p, host)
    assert plan.per_device_batch_size == DEFAULTS["per_device_batch_size"]
    assert plan.gradient_checkpointing == DEFAULTS["gradient_checkpointing"]
    assert plan.optimizer == DEFAULT_OPTIMIZER
    cfg = build_finetune_spec(p, host, plan, p.dataset, None).payload_config
    own = {"model", "dataset", "estimated_peak_gib", "gradient_accumulation_steps"}  # the request's, or planned
    same = {k: v for k, v in cfg.items() if k in DEFAULTS and k not in own}
    assert same.keys() >= {"lora_r", "lora_alpha", "num_epochs", "optim", "learning_rate", "seed", "strategy"}
    differ = {k: (v, DEFAULTS[k]) for k, v in same.items() if v != DEFAULTS[k]}
    assert not differ, differ


@pytest.mark.parametrize("key", ["lora_r", "num_epochs", "per_device_batch_size", "gradient_checkpointing", "optim"])
def test_the_controller_names_no_default_of_its_own(key: str) -> None:
    """The fallbacks are read from DEFAULTS: no literal copy of the payload's value in the controller."""
    src = "".join(
        files("tools.finetune").joinpath(m).read_text() for m in ("inputs.py", "plan.py", "spec.py", "submit.py")
    )
    assert f'DEFAULTS["{key}"]' in src
