"""A local lm-eval multiple-choice task built from the tiny world of tests/helpers/tiny_model.py.

Why: the evaluation tests need a benchmark whose score a few dozen CPU training steps can move
for certain. The tiny world is twelve "the X is <colour>" facts; each question offers the seven
colours as complete answers ("The sky is blue." ...), so a random-init model scores near chance
and one fine-tuned on the facts near 1. The YAML is an ordinary lm-eval 0.4 task
(``output_type: multiple_choice`` over a local jsonl file), the kind a user writes for their own eval.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.tiny_model import _COLOURS, _THINGS

__all__ = ["TASK_NAME", "write_colour_task"]

TASK_NAME = "tiny_colours"

_YAML = f"""task: {TASK_NAME}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {TASK_NAME}.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: question
doc_to_choice: choices
doc_to_target: label
target_delimiter: ""
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def write_colour_task(out_dir: str | Path) -> list[Path]:
    """Write ``tiny_colours.yaml`` and its ``tiny_colours.jsonl`` (one question per thing) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    colours = sorted(set(_COLOURS))
    rows = []
    for thing, colour in zip(_THINGS, _COLOURS, strict=True):
        rows.append(
            {
                "question": f"What colour is the {thing}?",
                "choices": [f"The {thing} is {c}." for c in colours],
                "label": colours.index(colour),
            }
        )
    data = out / f"{TASK_NAME}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    yaml = out / f"{TASK_NAME}.yaml"
    yaml.write_text(_YAML, encoding="utf-8")
    return [yaml, data]
