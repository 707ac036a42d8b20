"""Why a job failed, told from the end of its log: a pure classifier and the one read that feeds it.

:func:`diagnose` names the most likely cause (GPU or host out of memory, NCCL, a missing
module, a full disk, a Python exception, a distributed rank's root cause) with what to
do next, from the last lines of a log and the exit code (a pure function, tested on real
logs). :func:`diagnose_job` reads a failed job's log tail from its host, redacts it, and
lets better witnesses overrule the log: a full disk cannot write its own error, and a
payload that knows why it failed says so in metrics.jsonl.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from runners.errors import OpsError
from runners.jobdir import LOG
from runners.transports.base import Transport

__all__ = [
    "DIAGNOSE_WINDOW",
    "DISK_FULL_KIB",
    "ErrorExcerpt",
    "diagnose",
    "diagnose_job",
    "disk_full_excerpt",
    "free_kib",
]

DIAGNOSE_WINDOW = 65536  # bytes of the log's end that are read for a diagnosis
DISK_FULL_KIB = 64  # less free space than this on the job's filesystem: it is full


class ErrorExcerpt(BaseModel):
    """Why a job failed, as far as its log tells, and what to do next."""

    kind: str = Field(
        description="cuda_oom, host_oom, nccl, missing_module, disk_full, python_exception, "
        "rank_failure (a distributed rank), exit_code."
    )
    line: str | None = Field(None, description="The log line that shows it.")
    hint: str = Field(description="What to do next.")
    tail: str = Field(description="The last lines of the log (redacted).")


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


async def diagnose_job(
    transport: Transport,
    job_dir: str,
    exit_code: int | None,
    last_metrics: Mapping[str, Any] | None,
    redact: Callable[[str], str],
) -> ErrorExcerpt:
    """The error excerpt of a failed or lost job: its log's end, the disk, and the payload's own words."""
    path = f"{job_dir}/{LOG}"
    size = await transport.file_size(path) or 0
    data = await transport.read_range(path, max(0, size - DIAGNOSE_WINDOW), DIAGNOSE_WINDOW)
    err = diagnose(redact(data.decode("utf-8", errors="replace")), exit_code)
    if err.kind == "exit_code":  # the log does not say: a full disk cannot even say so
        free = await free_kib(transport, job_dir)
        if free is not None and free < DISK_FULL_KIB:
            err = disk_full_excerpt(free, err.tail)
    # A payload that knows why it failed says so in metrics.jsonl ({"event": "error", ...});
    # its words beat our guess from the log (e.g. vLLM start-up failures, dataset errors).
    ev = last_metrics if last_metrics and last_metrics.get("event") == "error" else None
    if ev and isinstance(ev.get("message"), str):
        err = err.model_copy(
            update={
                "kind": str(ev.get("kind") or err.kind),
                "line": redact(ev["message"])[:500],
                "hint": redact(str(ev.get("hint") or ev.get("suggestion") or err.hint)),
            }
        )
    return err


async def free_kib(t: Transport, path: str) -> int | None:
    """Free KiB on the filesystem of ``path`` (``df -Pk``), None when it cannot be told."""
    try:
        res = await t.run(["df", "-Pk", "--", path], timeout=15)
    except OpsError:
        return None
    lines = res.out.strip().splitlines()
    if res.rc != 0 or len(lines) < 2:
        return None
    fields = lines[-1].split()
    return int(fields[3]) if len(fields) >= 4 and fields[3].isdigit() else None
