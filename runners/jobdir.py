"""The job directory on its host, and the pure functions that render its files.

Every job, whatever its launcher, has ``<workdir>/jobs/<job_id>/`` holding::

    job.json         the spec, ids and token — no secrets
    run.sh           the script a launcher starts (header from the launcher, body from here)
    env              0600: host env, job env, secrets, bookkeeping variables
    output.log       stdout + stderr of the job
    exit_code        written by run.sh's EXIT trap (its absence after death = lost)
    pid | slurm_id   how the launcher finds the process again
    metrics.jsonl    one JSON object per line, written by payloads
    outputs/         what the job produces
    cancel_requested, timed_out, ready   marker files (cancel, time limit, server up)

The host's directory is the truth; the catalog only indexes it. Everything here is
a pure function of validated values, quoted with :func:`shlex.quote`.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from runners.config import HostConfig
from runners.errors import InvalidInput
from runners.spec import JobSpec

__all__ = [
    "CANCEL_MARK",
    "ENV_FILE",
    "EXIT_CODE",
    "JOB_JSON",
    "LOG",
    "METRICS",
    "OUTPUTS",
    "PID",
    "READY_MARK",
    "RUN_SH",
    "TIMED_OUT_MARK",
    "PreparedJob",
    "check_uploads",
    "job_dir_for",
    "job_env",
    "render_body",
    "render_env",
    "render_job_json",
]

JOB_JSON = "job.json"
RUN_SH = "run.sh"
ENV_FILE = "env"
LOG = "output.log"
EXIT_CODE = "exit_code"
PID = "pid"
METRICS = "metrics.jsonl"
OUTPUTS = "outputs"
CANCEL_MARK = "cancel_requested"
TIMED_OUT_MARK = "timed_out"
READY_MARK = "ready"

_UPLOAD_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_RESERVED_FILES = {"job.json", "run.sh", "env", "output.log", "exit_code", "pid", "metrics.jsonl", "outputs"}


def check_uploads(uploads: Mapping[str, bytes]) -> None:
    """Uploaded files land flat in the job directory: plain names only, never a job file or a path."""
    for name in uploads:
        if not _UPLOAD_NAME.match(name) or name in _RESERVED_FILES or name.endswith(".py"):
            raise InvalidInput(
                f"{name!r} cannot be uploaded into a job directory.", "Use a plain file name such as dataset.jsonl."
            )


def job_dir_for(workdir: str, job_id: str) -> str:
    """``<workdir>/jobs/<job_id>`` (workdir already expanded on its host)."""
    return f"{workdir.rstrip('/')}/jobs/{job_id}"


@dataclass
class PreparedJob:
    """Everything a launcher needs to start one job, computed before any side effect."""

    job_id: str
    token: str
    host: HostConfig
    spec: JobSpec
    job_dir: str
    command: list[str]
    created_at: float
    env: dict[str, str] = field(default_factory=dict)  # non-secret values (host env, job env, bookkeeping)
    secret_names: list[str] = field(default_factory=list)

    def path(self, name: str) -> str:
        return f"{self.job_dir}/{name}"


def job_env(job: PreparedJob) -> dict[str, str]:
    """The non-secret variables every job sees (host env < host env of its kind < job env < bookkeeping)."""
    host_env = job.host.env_for(job.spec.kind)
    return {
        **host_env,
        **job.spec.env,
        "LLM_OPS_JOB_ID": job.job_id,
        "LLM_OPS_JOB_DIR": job.job_dir,
        "LLM_OPS_JOB_TOKEN": job.token,
        "LLM_OPS_OUTPUTS": job.path(OUTPUTS),
        "LLM_OPS_METRICS": job.path(METRICS),
        "PYTHONUNBUFFERED": host_env.get("PYTHONUNBUFFERED", "1"),
    }


def render_env(values: dict[str, str]) -> str:
    """``export NAME=value`` lines, each value quoted; sourced by run.sh."""
    lines = ["# llm-ops-mcp job environment (mode 0600; may hold secrets)"]
    lines += [f"export {k}={shlex.quote(v)}" for k, v in values.items()]
    return "\n".join(lines) + "\n"


def parse_env(text: str) -> dict[str, str]:
    """The inverse of :func:`render_env` (also reads lines a payload appended in the same form)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.startswith("export "):
            continue
        try:
            parts = shlex.split(line[len("export ") :])
        except ValueError:
            continue  # a torn line while a payload appends: skip it
        if parts and "=" in parts[0]:
            k, v = parts[0].split("=", 1)
            out[k] = v
    return out


def render_job_json(job: PreparedJob) -> str:
    """job.json: what the job is, for payloads and for a human — never a secret value."""
    doc: dict[str, Any] = {
        "job_id": job.job_id,
        "token": job.token,
        "host": job.host.name,
        "created_at": job.created_at,
        "job_dir": job.job_dir,
        "command": job.command,
        "spec": job.spec.model_dump(mode="json"),
        "secret_names": job.secret_names,
        "payload_config": job.spec.payload_config,
    }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def render_body(job: PreparedJob, *, kill_group_on_exit: bool, pre_command: tuple[str, ...] = ()) -> str:
    """The launcher-independent part of run.sh: env, the exit-code trap, the command.

    The EXIT trap writes ``exit_code`` atomically *before* the shell dies, so a
    watcher that finds the process gone and no exit code may call the job lost.
    With ``kill_group_on_exit`` (direct launcher) it first stops what the command
    left behind in its process group, so a finished job leaves no children.
    ``pre_command`` lines (a launcher's watchdog) run after the traps are set.
    """
    cleanup = 'trap "" TERM; kill -TERM -- -$$ 2>/dev/null; ' if kill_group_on_exit else ""
    return "\n".join(
        [
            f"cd {shlex.quote(job.job_dir)} || exit 97",
            f". ./{ENV_FILE}",
            f"trap '_llm_ops_rc=$?; {cleanup}"
            f'printf "%s\\n" "$_llm_ops_rc" > {EXIT_CODE}.tmp && mv -f {EXIT_CODE}.tmp {EXIT_CODE}\' EXIT',
            "trap 'exit 143' TERM",
            "trap 'exit 130' INT",
            # A cancel that raced the start: stop before the command runs.
            f"[ -e {CANCEL_MARK} ] && exit 143",
            *pre_command,
            f'echo "[llm-ops] job {job.job_id} started on $(hostname) at $(date -u +%Y-%m-%dT%H:%M:%SZ)"',
            shlex.join(job.command),
            "exit $?",
            "",
        ]
    )
