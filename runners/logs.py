"""Reading a job's files by offset: logs, metrics, and the error excerpt of a failure.

Everything here costs O(bytes returned), whatever the file size: a tail seeks from
the end, a follower continues from ``next_offset``, metrics read only the last
few KiB of metrics.jsonl. Returned text is redacted (secret values of the host,
and token shapes such as ``hf_...``) before it leaves the engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from runners.errors import InvalidInput
from runners.transports.base import Transport

__all__ = [
    "ErrorExcerpt",
    "LogChunk",
    "diagnose",
    "disk_full_excerpt",
    "make_redactor",
    "progress_from",
    "read_last_metrics",
    "read_log",
]

MAX_LINE_SCAN = 1 << 20  # how far back a tail looks for line breaks at most
_TOKEN_SHAPES = [("hf_", re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")), ("sk-", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"))]


class LogChunk(BaseModel):
    """A slice of output.log."""

    text: str = Field(description="The log text (redacted), whole lines where possible.")
    offset: int = Field(description="Byte offset where this text starts.")
    next_offset: int = Field(description="Pass this as offset to continue reading after this text.")
    size: int = Field(description="Size of the log in bytes when it was read.")
    eof: bool = Field(description="True when next_offset reached the end of the log (for now, if still running).")
    truncated: bool = Field(description="True when more text was there than returned (max_bytes, tail_lines).")


class ErrorExcerpt(BaseModel):
    """Why a job failed, as far as its log tells, and what to do next."""

    kind: str = Field(
        description="cuda_oom, host_oom, nccl, missing_module, disk_full, python_exception, "
        "rank_failure (a distributed rank), exit_code."
    )
    line: str | None = Field(None, description="The log line that shows it.")
    hint: str = Field(description="What to do next.")
    tail: str = Field(description="The last lines of the log (redacted).")


def make_redactor(secrets: Mapping[str, str]) -> Callable[[str], str]:
    """A function that replaces each secret value with ``[REDACTED:NAME]`` (and token shapes)."""
    pairs = sorted(((v, k) for k, v in secrets.items() if v and len(v) >= 4), key=lambda p: -len(p[0]))

    def redact(text: str) -> str:
        for value, name in pairs:
            if value in text:
                text = text.replace(value, f"[REDACTED:{name}]")
        for prefix, rx in _TOKEN_SHAPES:
            if prefix in text:  # a substring test is far cheaper than the regex on 64 KiB
                text = rx.sub("[REDACTED]", text)
        return text

    return redact


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


_RULES: list[tuple[str, re.Pattern[str], str]] = [
    (
        "cuda_oom",
        re.compile(r"CUDA out of memory|OutOfMemoryError|CUDA error: out of memory|CUBLAS_STATUS_ALLOC_FAILED"),
        "The GPU ran out of memory: lower the batch size or sequence length, use QLoRA (4-bit), enable "
        "gradient checkpointing, or use more/larger GPUs; estimate_memory tells what fits.",
    ),
    (
        "nccl",
        re.compile(
            r"NCCL error|ncclSystemError|ncclInternalError|ncclUnhandledCudaError|ncclRemoteError|"
            r"ProcessGroupNCCL.*(?:[Tt]imeout|[Ee]rror)|NCCL WARN"
        ),
        "Multi-GPU communication failed: check that every GPU is visible (CUDA_VISIBLE_DEVICES) and healthy, "
        "rerun with NCCL_DEBUG=INFO; on PCIe-only machines try NCCL_P2P_DISABLE=1.",
    ),
    (
        "missing_module",
        re.compile(r"(?:ModuleNotFoundError|ImportError): No module named '?([\w.]+)'?"),
        "A Python package is missing on the host: install it into the host's interpreter, or set the host's "
        "`python` to an environment that has it.",
    ),
    (
        "disk_full",
        re.compile(r"No space left on device|\[Errno 28\]|Disk quota exceeded|\[Errno 122\]"),
        "The host's disk or quota is full: free space in the workdir and the HF cache, or point HF_HOME and "
        "the workdir at a larger disk.",
    ),
    (
        "host_oom",
        re.compile(r"(?:^|\s)Killed(?:\s|$)|Out of memory: Killed process|oom-kill|^MemoryError\b"),
        "The process was killed with SIGKILL, most likely by the host's OOM killer (CPU RAM ran out): "
        "lower dataloader workers or batch size, load in lower precision, or use a host with more memory.",
    ),
]
_EXC = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt|Fault)|[a-z_.]*\.[A-Z]\w+)(?::\s?(.*))?$")


# torchrun's console prefix for a rank's lines (``--tee``): "[default0]:" (agent role + local rank).
_RANK_PREFIX = re.compile(r"^\[(?:default|rank)\d+\]:")
_ROOT_CAUSE = "Root Cause (first observed failure):"


def _torchrun_root_cause(lines: list[str]) -> tuple[str, str, str | None] | None:
    """(rank, where, message) from torchrun's failure summary, or None when the log has none.

    Why this block: when one rank fails torchrun stops the others (they show up as
    SIGTERM "failures") and names the first failure as the root cause, with that rank's
    own error file (its exception, written through torch's error handler). That is the
    error to report, not the last line of the log, which is another rank's shutdown.
    """
    idx = max((i for i, line in enumerate(lines) if _ROOT_CAUSE in line), default=None)
    if idx is None:
        return None
    rank, local, host, exit_line, tb = "?", "?", "", None, []
    in_tb = False
    for line in lines[idx + 1 :]:
        if line.startswith("====="):
            break
        m = re.match(r"\s*rank\s*:\s*(\d+)\s*\(local_rank:\s*(\d+)\)", line)
        if m:
            rank, local = m.group(1), m.group(2)
            continue
        m = re.match(r"\s*host\s*:\s*(\S+)", line)
        if m:
            host = f" on {m.group(1)}"
            continue
        m = re.match(r"\s*exitcode\s*:\s*(.+?)\s*$", line)
        if m:
            exit_line = f"exit code {m.group(1)}"
            continue
        m = re.match(r"\s*traceback\s*:\s*(.*)$", line)
        if m:
            in_tb = True
            tb.append(m.group(1))
            continue
        if in_tb:
            tb.append(line.strip())
    msg = None
    for t in reversed([t for t in tb if t]):
        if _EXC.match(t) or t.startswith("Signal "):
            msg = t
            break
    if msg is None or msg.startswith("To enable traceback"):
        msg = exit_line
    return rank, f"local rank {local}{host}", msg


def disk_full_excerpt(free_kib: int, tail: str) -> ErrorExcerpt:
    """The job's own filesystem is full: the log (on that disk) could not record why it failed."""
    hint = next(h for k, _rx, h in _RULES if k == "disk_full")
    return ErrorExcerpt(
        kind="disk_full", line=f"{free_kib} KiB free on the job directory's filesystem", hint=hint, tail=tail
    )


def diagnose(log_tail: str, exit_code: int | None, tail_lines: int = 15) -> ErrorExcerpt:
    """Name the most likely cause of a failure from the end of its log (a pure function).

    A distributed job's log ends with torchrun's summary; its root cause (the first rank
    that failed) wins over everything else, classified by the same rules.
    """
    lines = [_RANK_PREFIX.sub("", line) for line in log_tail.splitlines()]
    tail = "\n".join(lines[-tail_lines:])
    root = _torchrun_root_cause(lines)
    if root is not None:
        rank, where, msg = root
        line = f"rank {rank} ({where}) failed first: {msg or 'no message'}"[:500]
        for kind, rx, hint in _RULES:
            if msg and rx.search(msg):
                return ErrorExcerpt(kind=kind, line=line, hint=f"On rank {rank}: {hint}", tail=tail)
        return ErrorExcerpt(
            kind="rank_failure",
            line=line,
            tail=tail,
            hint=f"Rank {rank} failed and torchrun stopped the other ranks. Its full output is in the job "
            f"directory under torchrun/ (per rank); get_job_logs with grep='rank {rank}|Error' shows the "
            "lines around it.",
        )
    for kind, rx, hint in _RULES:
        for line in reversed(lines):
            m = rx.search(line)
            if m:
                if kind == "missing_module" and m.group(1):
                    hint = (
                        f"The Python module {m.group(1)!r} is missing on the host: install it into the "
                        "host's interpreter, or set the host's `python` to an environment that has it."
                    )
                return ErrorExcerpt(kind=kind, line=line.strip()[:500], hint=hint, tail=tail)
    if exit_code == 137:
        return ErrorExcerpt(kind="host_oom", line=None, hint=_RULES[-1][2], tail=tail)
    for line in reversed(lines):
        if _EXC.match(line.strip()) and not line.startswith(" "):
            return ErrorExcerpt(
                kind="python_exception",
                line=line.strip()[:500],
                hint="The job raised this exception; the traceback above it in the log shows where "
                "(get_job_logs with grep='Traceback|Error').",
                tail=tail,
            )
    what = f"exit code {exit_code}" if exit_code is not None else "no exit code"
    return ErrorExcerpt(
        kind="exit_code",
        line=None,
        hint=f"The job ended with {what}; read the last lines of its log for the cause.",
        tail=tail,
    )
