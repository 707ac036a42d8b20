"""Dataset formats for fine-tuning: detection, validation and conversion to chat messages.

Stdlib only, on purpose: the controller imports this to refuse a malformed dataset file
*before* a job is submitted (it never imports torch), and the fine-tune payload imports
the very same file as a sibling on the GPU host, so both sides agree on what each format
needs and on the wording of the error. Row numbers in messages are 1-based (row 1 is the
first line of a JSONL file).

Formats:
  alpaca             instruction, output (input optional)
  sharegpt           conversations: [{from: human|gpt|system, value}]
  messages           messages: [{role: user|assistant|system, content}]
  text               text
  prompt_completion  prompt, completion
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS",
    "REQUIRED",
    "DatasetCheck",
    "DatasetFormatError",
    "check_file",
    "check_rows",
    "detect_format",
    "iter_file_rows",
    "to_messages",
    "validate_row",
]

FORMATS = ("alpaca", "sharegpt", "messages", "text", "prompt_completion")

#: The fields each format needs, in the order the error message names them.
REQUIRED: dict[str, tuple[str, ...]] = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "text": ("text",),
    "prompt_completion": ("prompt", "completion"),
}

_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "system": "system",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
}
_MESSAGE_ROLES = {"system", "user", "assistant", "tool"}


class DatasetFormatError(ValueError):
    """A dataset does not have the fields its format needs; ``str()`` is one line for a person."""


@dataclass(frozen=True)
class DatasetCheck:
    """What a check found: the (detected) format and how many rows were read."""

    format: str
    rows: int


def detect_format(row: Mapping[str, Any]) -> str:
    """Guess the format from one row's keys; most specific first so alpaca wins over text."""
    keys = {k for k, v in row.items() if v is not None}
    if "messages" in keys:
        return "messages"
    if "conversations" in keys:
        return "sharegpt"
    if "instruction" in keys and "output" in keys:
        return "alpaca"
    if "prompt" in keys and "completion" in keys:
        return "prompt_completion"
    if "text" in keys:
        return "text"
    raise DatasetFormatError(
        f"cannot tell the dataset format from the fields {sorted(keys)}; name dataset_format "
        f"({', '.join(FORMATS)}) or use one of: " + "; ".join(f"{f} needs {'/'.join(r)}" for f, r in REQUIRED.items())
    )


def _missing(row: Mapping[str, Any], key: str) -> bool:
    return key not in row or row[key] is None


def validate_row(row: Any, fmt: str, index: int) -> None:
    """Raise ``DatasetFormatError`` naming row ``index`` (1-based) if it lacks what ``fmt`` needs."""
    if fmt not in REQUIRED:
        raise DatasetFormatError(f"unknown dataset_format {fmt!r}; expected auto or one of {', '.join(FORMATS)}")
    need = "/".join(REQUIRED[fmt])
    if not isinstance(row, Mapping):
        raise DatasetFormatError(f"dataset row {index} is a {type(row).__name__}, not an object; {fmt} needs {need}")
    for key in REQUIRED[fmt]:
        if _missing(row, key):
            raise DatasetFormatError(f"dataset row {index} has no {key!r} field; {fmt} needs {need}")
    if fmt in ("alpaca", "text", "prompt_completion"):
        for key in (*REQUIRED[fmt], *(("input",) if fmt == "alpaca" and not _missing(row, "input") else ())):
            if not isinstance(row[key], str):
                raise DatasetFormatError(
                    f"dataset row {index} field {key!r} is a {type(row[key]).__name__}, not text; {fmt} needs {need}"
                )
        if fmt == "text" and not row["text"].strip():
            raise DatasetFormatError(f"dataset row {index} has an empty 'text' field")
        return
    turns = row[REQUIRED[fmt][0]]
    if not isinstance(turns, list) or not turns:
        raise DatasetFormatError(f"dataset row {index} field {REQUIRED[fmt][0]!r} must be a non-empty list of turns")
    role_key, text_key, roles = (
        ("from", "value", _SHAREGPT_ROLES) if fmt == "sharegpt" else ("role", "content", _MESSAGE_ROLES)
    )
    for t, turn in enumerate(turns, start=1):
        if not isinstance(turn, Mapping) or _missing(turn, role_key) or _missing(turn, text_key):
            raise DatasetFormatError(
                f"dataset row {index} turn {t} needs {role_key!r} and {text_key!r}; {fmt} turns are "
                f"{{{role_key}: ..., {text_key}: ...}}"
            )
        if turn[role_key] not in roles:
            raise DatasetFormatError(
                f"dataset row {index} turn {t} has role {turn[role_key]!r}; {fmt} roles are {', '.join(sorted(roles))}"
            )
    if not any(_role(fmt, turn[role_key]) == "assistant" for turn in turns):
        raise DatasetFormatError(f"dataset row {index} has no assistant turn to learn from")


def _role(fmt: str, role: str) -> str:
    return _SHAREGPT_ROLES[role] if fmt == "sharegpt" else role


def check_rows(rows: Iterable[Any], fmt: str = "auto", max_rows: int | None = None) -> DatasetCheck:
    """Validate rows (all, or the first ``max_rows``); the format is detected from row 1 if ``auto``."""
    count = 0
    for count, row in enumerate(rows, start=1):
        if max_rows is not None and count > max_rows:
            count -= 1
            break
        if fmt == "auto":
            if not isinstance(row, Mapping):
                raise DatasetFormatError(f"dataset row {count} is a {type(row).__name__}, not an object")
            fmt = detect_format(row)
        validate_row(row, fmt, count)
    if count == 0:
        raise DatasetFormatError("the dataset has no rows")
    return DatasetCheck(format=fmt, rows=count)


def iter_file_rows(path: str | Path) -> Iterator[Any]:
    """Rows of a local .jsonl/.json/.csv file (Parquet needs pyarrow: checked on the host instead)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix in (".jsonl", ".ndjson"):
        with p.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as exc:
                    raise DatasetFormatError(f"dataset line {n} is not valid JSON: {exc.msg}") from exc
    elif suffix == ".json":
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetFormatError(f"dataset file is not valid JSON: {exc.msg} at line {exc.lineno}") from exc
        if isinstance(data, Mapping) and isinstance(data.get("data"), list):
            data = data["data"]
        if not isinstance(data, list):
            raise DatasetFormatError('a .json dataset must hold a list of rows (or {"data": [...]})')
        yield from data
    elif suffix == ".csv":
        with p.open(encoding="utf-8", newline="") as fh:
            yield from csv.DictReader(fh)
    else:
        raise DatasetFormatError(f"cannot read {p.name}: dataset files are .jsonl, .json, .csv or .parquet")


def check_file(path: str | Path, fmt: str = "auto", max_rows: int | None = None) -> DatasetCheck:
    """Validate a local dataset file; the controller calls this before uploading it."""
    return check_rows(iter_file_rows(path), fmt, max_rows)


def to_messages(row: Mapping[str, Any], fmt: str) -> list[dict[str, str]]:
    """A validated row of a chat-like format as ``[{role, content}, ...]`` (not for ``text``)."""
    if fmt == "alpaca":
        prompt = (
            row["instruction"]
            if _missing(row, "input") or not row["input"]
            else (f"{row['instruction']}\n\n{row['input']}")
        )
        return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
    if fmt == "prompt_completion":
        return [
            {"role": "user", "content": row["prompt"]},
            {"role": "assistant", "content": row["completion"]},
        ]
    if fmt == "sharegpt":
        return [{"role": _SHAREGPT_ROLES[t["from"]], "content": str(t["value"])} for t in row["conversations"]]
    if fmt == "messages":
        return [{"role": str(t["role"]), "content": str(t["content"])} for t in row["messages"]]
    raise DatasetFormatError(f"format {fmt!r} has no chat messages")
