"""The fine-tune defaults, read from the one place they are written: the payload's ``DEFAULTS``.

Why the payload is the source: it runs on the host self-contained (stdlib + the training stack,
nothing of ours installed), and a setting a job config leaves out takes the payload's value, so its
table is what a job gets. The controller's input model (``inputs.py``) and its plan and job
(``plan.py``, ``spec.py``) take their defaults from here instead of writing them again;
``tests/tools/finetune/test_defaults.py`` holds the three to one table.

Read, not imported: ``runners/payloads/finetune.py`` imports torch and the training stack inside its
functions, and the controller imports none of that (``tests/test_architecture.py``); the ``DEFAULTS``
assignment is a literal, evaluated with :func:`ast.literal_eval`.
"""

from __future__ import annotations

import ast
from importlib.resources import files
from typing import Any

__all__ = ["DEFAULTS", "read_payload_defaults"]


def read_payload_defaults(source: str) -> dict[str, Any]:
    """The literal ``DEFAULTS: dict[str, Any] = {...}`` of a payload's source (only that block is parsed)."""
    start = source.index("\nDEFAULTS")
    end = source.index("\n}\n", start) + 2
    node = ast.parse(source[start:end].strip()).body[0]
    assert isinstance(node, ast.AnnAssign | ast.Assign)
    value = ast.literal_eval(node.value)  # type: ignore[arg-type]
    assert isinstance(value, dict)
    return value


DEFAULTS: dict[str, Any] = read_payload_defaults(files("runners.payloads").joinpath("finetune.py").read_text())
