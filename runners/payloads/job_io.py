"""A payload's side of its job directory: job.json in; metrics.jsonl, the failure record and one exit code out.

Every payload runs on the GPU host as its own process and reports only through files,
because the controller may be gone while it runs. What those files hold is a contract
between the two sides, so it is written once, here:

- **settings**: ``job.json["payload_config"]`` (or a bare settings object, for tests and
  by hand) merged over the payload's DEFAULTS; an unknown key is refused, never ignored;
- **paths**: the job directory, ``outputs/`` and ``metrics.jsonl``, from the variables the
  engine sets (runners/jobdir.py ``job_env``), else beside job.json;
- **metrics.jsonl**: one JSON object per line, flushed at once so the controller can tail
  it; the last ``{"event": "error", "kind", "message", ...}`` row is the failure record,
  whose words the engine prefers to its own guess from the log (runners/engine.py);
- **exit codes**: one table, each code one meaning in every payload (:data:`EXIT_CODES`).

Why a module shipped beside each payload (runners/payloads/__init__.py ``shipped_files``)
and not a package installed on the host: nothing of ours is installed there; a job
directory holding the payload and its siblings runs with any Python. Stdlib only and
cheap to import, because the controller imports it too (the exit-code table) and must
never load torch & co (tests/test_architecture.py).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import traceback
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

__all__ = [
    "EXIT_BAD_INPUT",
    "EXIT_CODES",
    "EXIT_DIAGNOSED",
    "EXIT_FAILED",
    "EXIT_INSTALL_FAILED",
    "EXIT_MISSING_DEPENDENCY",
    "EXIT_OK",
    "EXIT_OOM",
    "EXIT_PORT_IN_USE",
    "EXIT_STARTUP_TIMEOUT",
    "EXIT_TERMINATED",
    "EXIT_UNKNOWN_FLAG",
    "EXIT_UNREACHABLE",
    "BadInput",
    "Failure",
    "JobFiles",
    "Metrics",
    "MissingDependency",
    "describe",
    "error_row",
    "is_oom",
    "job_args",
    "job_files",
    "load_settings",
    "read_json",
    "report_failure",
    "require",
]

# -- the exit-code table: one meaning per code, in every payload -------------------------------
EXIT_OK = 0
EXIT_FAILED = 1  # an unexpected failure: the traceback is in output.log
EXIT_BAD_INPUT = 2  # settings, dataset or model the user must change (a gated or missing repo too)
EXIT_OOM = 3  # out of GPU memory
EXIT_MISSING_DEPENDENCY = 4  # a library or program the payload needs is not on the host
EXIT_UNREACHABLE = 5  # a network service (the Hub) cannot be reached from the host
EXIT_INSTALL_FAILED = 6  # setup_host: creating or installing the environment failed
EXIT_UNKNOWN_FLAG = 7  # serve: the command has a flag (or value) this host's vLLM lacks
EXIT_PORT_IN_USE = 8  # serve: the port asked for is taken on the host
EXIT_STARTUP_TIMEOUT = 9  # serve: not ready within startup_timeout_s
EXIT_DIAGNOSED = 10  # serve: a known start-up failure in vLLM's log; the payload stopped vLLM
EXIT_TERMINATED = 143  # stopped by SIGTERM (a cancel), 128 + 15 as a shell reports it

EXIT_CODES: dict[int, str] = {
    EXIT_OK: "done",
    EXIT_FAILED: "an unexpected failure (the traceback is in the log)",
    EXIT_BAD_INPUT: "bad settings, dataset or model: change the request",
    EXIT_OOM: "out of GPU memory",
    EXIT_MISSING_DEPENDENCY: "a library or program the payload needs is not installed on the host",
    EXIT_UNREACHABLE: "a network service (the Hugging Face Hub) cannot be reached from the host",
    EXIT_INSTALL_FAILED: "building the host's environment failed",
    EXIT_UNKNOWN_FLAG: "the command uses a flag or value this host's vLLM lacks",
    EXIT_PORT_IN_USE: "the server's port is taken on the host",
    EXIT_STARTUP_TIMEOUT: "the server was not ready within its start-up time-out",
    EXIT_DIAGNOSED: "a known start-up failure, read from the server's log",
    EXIT_TERMINATED: "stopped by SIGTERM (cancelled)",
}

# The variables the engine sets for every job (runners/jobdir.py job_env).
ENV_JOB_DIR, ENV_OUTPUTS, ENV_METRICS = "LLM_OPS_JOB_DIR", "LLM_OPS_OUTPUTS", "LLM_OPS_METRICS"
METRICS_FILE, OUTPUTS_DIR, SETTINGS_KEY = "metrics.jsonl", "outputs", "payload_config"


# -- failures ----------------------------------------------------------------------------------
class Failure(Exception):
    """A failure the payload understands: its ``kind`` (the record's), exit ``code`` and one line for a person.

    ``hint`` (what to change) and ``fields`` go into the failure record beside them.
    """

    kind = "failed"
    code = EXIT_FAILED

    def __init__(
        self, message: str, *, kind: str | None = None, code: int | None = None, hint: str | None = None, **fields: Any
    ) -> None:
        super().__init__(message)
        if kind is not None:
            self.kind = kind
        if code is not None:
            self.code = code
        self.hint = hint
        self.fields = fields

    def record(self, **extra: Any) -> dict[str, Any]:
        """This failure's row for metrics.jsonl."""
        hint = {"hint": self.hint} if self.hint is not None else {}
        return error_row(self.kind, str(self), **hint, **self.fields, **extra)


class BadInput(Failure):
    """Settings or input the user must change; the message is one line for a person."""

    kind = "bad_input"
    code = EXIT_BAD_INPUT


class MissingDependency(Failure):
    """The host's interpreter lacks a library (or the host a program) this payload needs."""

    kind = "missing_dependency"
    code = EXIT_MISSING_DEPENDENCY


def error_row(kind: str, message: str, **fields: Any) -> dict[str, Any]:
    """The failure record: ``{"event": "error", "kind", "message", ...}``, the row the engine reads."""
    return {"event": "error", "kind": kind, "message": message, **fields}


def describe(exc: BaseException, limit: int = 2000) -> str:
    """``Type: message`` of an unexpected exception, cut to ``limit`` characters."""
    return f"{type(exc).__name__}: {exc}"[:limit]


def is_oom(exc: BaseException) -> bool:
    """torch's OutOfMemoryError, or the "... out of memory" text some kernels (and bitsandbytes) raise instead."""
    return type(exc).__name__ == "OutOfMemoryError" or "out of memory" in str(exc).lower()


def require(module: str, why: str) -> ModuleType:
    """Import ``module`` or raise MissingDependency naming what to install."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{why} needs the Python package {module!r}, which the host's interpreter lacks ({exc}); "
            "install it there (setup_host can build an environment with it) or point the host's python at one"
        ) from exc


# -- settings and paths ------------------------------------------------------------------------
def read_json(path: Path) -> Any:
    """The JSON document at ``path``; BadInput when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInput(f"cannot read {path}: {exc}") from exc


def load_settings(
    path: Path, defaults: Mapping[str, Any], *, ignored: Iterable[str] = (), required: Iterable[str] = ()
) -> dict[str, Any]:
    """job.json's ``payload_config`` (or a bare settings object) merged over ``defaults``.

    An unknown key is an error, so a typo never passes silently; ``ignored`` keys are
    allowed and dropped (ones only the controller reads). A ``None`` value keeps the
    default. Every key in ``required`` must end up set.
    """
    doc = read_json(path)
    raw = doc.get(SETTINGS_KEY, doc) if isinstance(doc, dict) else None
    if not isinstance(raw, dict):
        raise BadInput(f"{path} holds no settings object")
    unknown = sorted(set(raw) - set(defaults) - set(ignored))
    if unknown:
        raise BadInput(f"unknown config keys: {', '.join(unknown)}")
    cfg = {**defaults, **{k: v for k, v in raw.items() if k in defaults and v is not None}}
    for key in required:
        if not cfg.get(key):
            raise BadInput(f"settings need {key!r}")
    return cfg


@dataclass(frozen=True)
class JobFiles:
    """Where a payload reads and writes: its settings file, the job directory, outputs/ and metrics.jsonl."""

    settings: Path
    job_dir: Path
    outputs: Path
    metrics: Path


def job_args(argv: list[str] | None, description: str) -> tuple[Path, Path]:
    """(settings file, job dir) from a payload's command line: the engine's job.json (its folder is the
    job dir), or ``--config`` + ``--job-dir`` by hand."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "job_json", nargs="?", type=Path, help="the job engine's job.json (settings under payload_config)"
    )
    parser.add_argument("--config", type=Path, help="settings JSON, standalone use")
    parser.add_argument("--job-dir", type=Path, help="job directory: metrics.jsonl, outputs/ (with --config)")
    ns = parser.parse_args(argv)
    if ns.job_json is not None:
        return ns.job_json, ns.job_json.resolve().parent
    if ns.config is None or ns.job_dir is None:
        parser.error("give job.json, or --config and --job-dir")
    return ns.config, ns.job_dir


def job_files(settings: Path, job_dir: Path | None = None) -> JobFiles:
    """The job's paths. With ``job_dir`` (a payload run by hand) everything is in it; else the
    engine's variables (runners/jobdir.py ``job_env``) win, then the folder of ``settings``.

    Creates the job directory and outputs/ (a payload run by hand may get a fresh one).
    """
    settings = settings.resolve()
    env: Mapping[str, str] = {} if job_dir is not None else os.environ
    folder = Path(job_dir or env.get(ENV_JOB_DIR) or settings.parent).resolve()
    outputs = Path(env.get(ENV_OUTPUTS) or folder / OUTPUTS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    outputs.mkdir(parents=True, exist_ok=True)
    return JobFiles(settings, folder, outputs, Path(env.get(ENV_METRICS) or folder / METRICS_FILE))


# -- metrics.jsonl -----------------------------------------------------------------------------
class Metrics:
    """Appends JSON lines to metrics.jsonl, flushed at once so the controller can tail them.

    Each row gets a ``time``: seconds since this writer was made, or with ``epoch`` the Unix
    time (the serve payload's rows, which a benchmark lines up with the controller's clock).
    With ``world_size`` > 1 (torchrun) only rank 0 writes, except rows written with
    ``any_rank`` (a rank's own error), and every row carries its ``rank``. Thread-safe.
    """

    def __init__(self, path: Path, *, epoch: bool = False, rank: int = 0, world_size: int = 1) -> None:
        self.path = path
        self.t0 = time.time()
        self.epoch, self.rank, self.world_size = epoch, rank, world_size
        self._lock = threading.Lock()

    def write(self, row: Mapping[str, Any], *, any_rank: bool = False) -> None:
        """Append ``row`` (rank 0 only unless ``any_rank``)."""
        if self.rank != 0 and not any_rank:
            return
        now = time.time()
        stamp = round(now, 3) if self.epoch else round(now - self.t0, 4)
        out = {"time": stamp, **row}
        if self.world_size > 1:
            out["rank"] = self.rank
        with self._lock, self.path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(out, default=str) + "\n")


def report_failure(metrics: Metrics, exc: BaseException, *, label: str | None = None, **fields: Any) -> int:
    """Write the failure record of ``exc`` and a last log line that names it; returns the exit code.

    A :class:`Failure` reports its own kind and code (the line starts with ``label``, else its
    class name). Anything else is unexpected: its traceback goes to the log, and it exits
    EXIT_OOM (kind ``oom``) when it is an out-of-memory error, else EXIT_FAILED (kind ``failed``).
    ``fields`` (e.g. the phase it reached) go into the record.
    """
    if isinstance(exc, Failure):
        metrics.write(exc.record(**fields))
        print(f"{label or type(exc).__name__}: {exc}", flush=True)
        return exc.code
    traceback.print_exc()
    message, oom = describe(exc), is_oom(exc)
    metrics.write(error_row("oom" if oom else "failed", message, **fields))
    print(message, flush=True)
    return EXIT_OOM if oom else EXIT_FAILED
