"""Reading a job's files by offset: its log and its metrics, and the progress they show.

Everything here costs O(bytes returned), whatever the file size: a tail seeks from
the end, a follower continues from ``next_offset``, metrics read only the last
few KiB of metrics.jsonl. Returned text passes through the caller's redactor
(``runners/redaction.py``) before it leaves the engine; why a failed job failed is
read from its log by ``runners/diagnosis.py``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from runners.errors import InvalidInput
from runners.transports.base import Transport

__all__ = ["LogChunk", "progress_from", "read_last_metrics", "read_log"]

MAX_LINE_SCAN = 1 << 20  # how far back a tail looks for line breaks at most


class LogChunk(BaseModel):
    """A slice of output.log."""

    text: str = Field(description="The log text (redacted), whole lines where possible.")
    offset: int = Field(description="Byte offset where this text starts.")
    next_offset: int = Field(description="Pass this as offset to continue reading after this text.")
    size: int = Field(description="Size of the log in bytes when it was read.")
    eof: bool = Field(description="True when next_offset reached the end of the log (for now, if still running).")
    truncated: bool = Field(description="True when more text was there than returned (max_bytes, tail_lines).")


def _filter(text: str, grep: re.Pattern[str] | None) -> str:
    if grep is None:
        return text
    return "".join(line for line in text.splitlines(keepends=True) if grep.search(line))


async def read_log(
    transport: Transport,
    path: str,
    *,
    offset: int | None,
    max_bytes: int,
    tail_lines: int,
    redact: Callable[[str], str],
    grep: re.Pattern[str] | None = None,
) -> LogChunk:
    """``offset=None``: the last ``tail_lines`` lines (at most ``max_bytes``); else continue from ``offset``."""
    size = await transport.file_size(path) or 0
    if offset is None:
        start = max(0, size - max_bytes)
        data = await transport.read_range(path, start, size - start) if size else b""
        truncated = start > 0
        if start > 0:
            nl = data.find(b"\n")
            if 0 <= nl < len(data) - 1:  # drop the partial first line
                data = data[nl + 1 :]
                start += nl + 1
        body = data[:-1] if data.endswith(b"\n") else data
        lines = body.split(b"\n")
        if tail_lines and len(lines) > tail_lines:
            keep = b"\n".join(lines[-tail_lines:]) + (b"\n" if data.endswith(b"\n") else b"")
            start += len(data) - len(keep)
            data = keep
            truncated = True
        end = start + len(data)
        text = redact(data.decode("utf-8", errors="replace"))
        return LogChunk(
            text=_filter(text, grep),
            offset=start,
            next_offset=end,
            size=max(size, end),
            eof=end >= size,
            truncated=truncated,
        )
    if offset > size:
        raise InvalidInput(
            f"offset {offset} is past the end of the log ({size} bytes).",
            "Use the next_offset of the previous call, or omit offset to get the tail.",
        )
    data = await transport.read_range(path, offset, max_bytes)
    end = offset + len(data)
    truncated = False
    if len(data) == max_bytes and end < size:
        truncated = True
        nl = data.rfind(b"\n")
        if nl >= 0:  # stop at a line end so the next call starts on a whole line
            data = data[: nl + 1]
            end = offset + len(data)
    text = redact(data.decode("utf-8", errors="replace"))
    size = max(size, end)
    return LogChunk(
        text=_filter(text, grep), offset=offset, next_offset=end, size=size, eof=end >= size, truncated=truncated
    )


async def read_last_metrics(transport: Transport, path: str, n: int = 1, window: int = 65536) -> list[dict[str, Any]]:
    """The last ``n`` JSON objects of metrics.jsonl (oldest first), reading at most ``window`` bytes."""
    size = await transport.file_size(path)
    if not size:
        return []
    start = max(0, size - window)
    data = await transport.read_range(path, start, size - start)
    out: list[dict[str, Any]] = []
    for raw in reversed(data.split(b"\n")):
        raw = raw.strip()
        if not raw:
            continue
        try:
            obj = json.loads(raw)
        except ValueError:
            continue  # a partial first line of the window, or a line being written
        if isinstance(obj, dict):
            out.append(obj)
            if len(out) >= n:
                break
    return list(reversed(out))


def progress_from(metrics: Mapping[str, Any] | None, elapsed_s: float | None) -> tuple[float | None, float | None]:
    """(percent, eta seconds) from ``step``/``total_steps`` (or ``percent``/``eta_s``) of a metrics line."""
    if not metrics:
        return None, None
    pct: float | None = None
    eta = metrics.get("eta_s")
    step = metrics.get("step")
    total = metrics.get("total_steps", metrics.get("max_steps"))
    if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
        pct = max(0.0, min(100.0, 100.0 * step / total))
        if eta is None and elapsed_s and step > 0:
            eta = elapsed_s / step * max(0.0, total - step)
    elif isinstance(metrics.get("percent"), int | float):
        pct = float(metrics["percent"])
    return (round(pct, 2) if pct is not None else None, round(float(eta), 1) if isinstance(eta, int | float) else None)
