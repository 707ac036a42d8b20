"""A local lm-eval multiple-choice task built from the tiny world of tests/helpers/tiny_model.py.

Why: the evaluation tests need a benchmark whose score a few dozen CPU training steps can move
for certain. The tiny world is twelve "the X is <colour>" facts. Each question offers four complete
answers: the right colour and three other things of the world ("The sky is blue.", "The sky is
coal.", ...). What a short fine-tune of a random-init model learns first is the domain's answer
form — after "is" comes a colour — long before the twelve pairings (those take hundreds of
steps), so a random-init model scores near chance (1/4) and one fine-tuned on the facts near 1;
a few dozen steps decide it every time. The YAML is an ordinary lm-eval 0.4 task
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
    rows = []
    n = len(_THINGS)
    for i, (thing, colour) in enumerate(zip(_THINGS, _COLOURS, strict=True)):
        others = [_THINGS[(i + k) % n] for k in (1, 4, 7)]  # three other things, a fixed rotation
        words = [colour, *others]
        label = i % 4  # the right answer's place moves, so a positional bias cannot score
        words[0], words[label] = words[label], words[0]
        rows.append(
            {
                "question": f"What colour is the {thing}?",
                "choices": [f"The {thing} is {w}." for w in words],
                "label": label,
            }
        )
    data = out / f"{TASK_NAME}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    yaml = out / f"{TASK_NAME}.yaml"
    yaml.write_text(_YAML, encoding="utf-8")
    return [yaml, data]
