"""The one rule for model and dataset references (tools/model_ref.py), and every tool held to it."""

from __future__ import annotations

import pytest

from tools.download import DownloadInput
from tools.finetune.inputs import FinetuneInput
from tools.model_ref import check_ref, is_hub_id
from tools.quantize import QuantizeInput


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("Qwen/Qwen2.5-0.5B", True),
        ("gpt2", True),
        ("meta-llama/Llama-3.1-8B-Instruct", True),
        ("org/" + "x" * 96, True),
        ("org/" + "x" * 97, False),  # huggingface_hub: names are at most 96 characters
        ("org/a--b", False),
        ("org/a..b", False),
        ("org/model.git", False),
        ("-rf", False),
        (".hidden/x", False),
        ("a/b/c", False),
    ],
)
def test_hub_ids_follow_the_hubs_rule(value: str, ok: bool) -> None:
    assert is_hub_id(value) is ok


def test_path_forms_per_field() -> None:
    assert check_ref("/models/m") == "/models/m" and check_ref("~/m") == "~/m"
    assert check_ref("./data.jsonl", "dataset", paths="relative") == "./data.jsonl"
    for bad, paths in [("../x", "absolute"), ("/models/m", "none"), ("./x", "absolute"), ("a b", "relative")]:
        with pytest.raises(ValueError):
            check_ref(bad, paths=paths)  # type: ignore[arg-type]
    for bad in ["", "  ", "--help", "a\nb", "x" * 1025]:
        with pytest.raises(ValueError):
            check_ref(bad, paths="relative")


@pytest.mark.parametrize("value", ["-rf", "org/m; rm -rf /", "a\nb", "ext::sh", "org/a--b"])
def test_every_tool_refuses_what_the_rule_refuses(value: str) -> None:
    for make in (
        lambda: DownloadInput(model=value),
        lambda: QuantizeInput(model=value, method="bnb-nf4"),
        lambda: FinetuneInput(model=value, dataset="org/d"),
        lambda: FinetuneInput(model="org/m", dataset=value),
    ):
        with pytest.raises(ValueError):
            make()
