"""What a job is, independent of where it runs: the :class:`JobSpec`.

tools/ (fine-tune, serve, quantize, download) build a JobSpec; runners/ turn it into
a job directory on a host. A spec carries secret *names* only — their values are
read from the controller's environment at submit time and go to the job's 0600
``env`` file, never into ``job.json``, the catalog or a tool result.

A job runs either a plain ``argv`` (kind ``command``/``script``) or a payload:
``runners/payloads/<payload>.py`` is copied into the job directory and run with the
host's interpreter as ``python <payload>.py job.json``; the payload reads its
settings from ``job.json["payload_config"]``. A payload job may also carry an
``argv`` that runs the copied payload another way — torchrun across GPUs and nodes
(``runners/distributed.py``) — so the launch stays a visible argv, not engine magic.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from runners.errors import InvalidInput

__all__ = [
    "ENV_NAME_RE",
    "JOB_ID_RE",
    "EnvName",
    "JobKind",
    "JobSpec",
    "Resources",
    "check_env_name",
    "format_slurm_time",
    "parse_time_limit",
    "validate_argv",
]

JobKind = Literal["finetune", "serve", "quantize", "download", "script", "command", "evaluate"]
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_ID_RE = re.compile(r"^[a-z][a-z0-9-]{2,79}$")
_PAYLOAD_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TIME_RE = re.compile(r"^(?:(\d+)-)?(\d{1,3})(?::(\d{2}))?(?::(\d{2}))?$")
# Reserved for the job's own bookkeeping; a spec may not override them.
RESERVED_ENV = ("LLM_OPS_JOB_ID", "LLM_OPS_JOB_DIR", "LLM_OPS_JOB_TOKEN", "LLM_OPS_OUTPUTS", "LLM_OPS_METRICS")
MAX_ARGV = 512
MAX_ARG_LEN = 32_768


def check_env_name(name: str) -> str:
    """The one rule for an environment variable's name (job env, secrets, a host's env and kind_env)."""
    if not ENV_NAME_RE.match(name):
        raise ValueError(f"{name!r} is not a valid environment variable name")
    return name


# A field type that carries the rule, so no model writes its own validator loop for it.
EnvName = Annotated[str, AfterValidator(check_env_name)]


def parse_time_limit(value: str | int | None) -> int | None:
    """Seconds from an int (seconds) or a SLURM-style time: ``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH[:MM[:SS]]``."""
    if value is None:
        return None
    if isinstance(value, int):
        if value <= 0:
            raise InvalidInput(f"time_limit {value} must be positive.", "Give seconds > 0 or HH:MM:SS.")
        return value
    m = _TIME_RE.match(value.strip())
    if not m:
        raise InvalidInput(f"time_limit {value!r} is not a time.", "Use HH:MM:SS, D-HH:MM:SS, or minutes.")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH[:MM[:SS]]
        secs = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        secs = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        secs = int(a) * 60 + int(b)
    else:  # MM
        secs = int(a) * 60
    if secs <= 0:
        raise InvalidInput(f"time_limit {value!r} must be positive.", "Use HH:MM:SS.")
    return secs


def format_slurm_time(seconds: int) -> str:
    """``D-HH:MM:SS`` for sbatch ``--time`` (rounded up to whole seconds)."""
    d, rem = divmod(int(seconds), 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:{s:02d}" if d else f"{h:02d}:{m:02d}:{s:02d}"


def validate_argv(argv: list[str]) -> list[str]:
    """An argv must be non-empty, its program must not look like a flag, and no argument may hold NUL."""
    if not argv:
        raise ValueError("argv must name a program")
    if len(argv) > MAX_ARGV:
        raise ValueError(f"argv has {len(argv)} arguments (max {MAX_ARGV})")
    if not argv[0] or argv[0].startswith("-") or argv[0].strip() != argv[0]:
        raise ValueError(f"argv[0] {argv[0]!r} must be a program name or path")
    for i, a in enumerate(argv):
        if "\x00" in a:
            raise ValueError(f"argv[{i}] contains a NUL byte")
        if len(a) > MAX_ARG_LEN:
            raise ValueError(f"argv[{i}] is longer than {MAX_ARG_LEN} characters")
    return argv


class Resources(BaseModel):
    """What the job asks of its host; the direct launcher enforces time_limit_s, SLURM all of it."""

    model_config = ConfigDict(extra="forbid")

    gpus: int = Field(0, ge=0, le=64, description="GPUs per node.")
    nodes: int = Field(1, ge=1, le=64, description="Nodes (SLURM only; direct jobs use one host).")
    tasks_per_node: int = Field(
        1, ge=1, le=64, description="SLURM --ntasks-per-node (srun launches that many torchrun agents per node)."
    )
    cpus: int | None = Field(None, ge=1, le=1024, description="CPU cores per task (SLURM --cpus-per-task).")
    memory_gib: float | None = Field(None, gt=0, description="Host memory (SLURM --mem).")
    time_limit_s: int | None = Field(None, gt=0, description="Wall-clock limit; the job is stopped after it.")
    partition: str | None = Field(None, description="SLURM partition override.")

    @field_validator("partition")
    @classmethod
    def _partition(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", v):
            raise ValueError(f"{v!r} is not a valid partition name")
        return v


class JobSpec(BaseModel):
    """A job, as tools/ describe it and runners/ start it. Holds no secret values."""

    model_config = ConfigDict(extra="forbid")

    kind: JobKind = Field(description="What the job does; 'serve' jobs may report 'ready'.")
    name: str | None = Field(None, max_length=120, description="A short label for listings.")
    argv: list[str] | None = Field(None, description="The command to run (kinds command/script).")
    payload: str | None = Field(None, description="Name of runners/payloads/<payload>.py to run instead of argv.")
    payload_config: dict[str, Any] = Field(default_factory=dict, description="Settings the payload reads.")
    env: dict[str, str] = Field(default_factory=dict, description="Extra, non-secret environment variables.")
    secrets: list[EnvName] = Field(default_factory=list, description="Names of controller env vars passed as secrets.")
    resources: Resources = Field(default_factory=Resources)
    endpoint_port: int | None = Field(None, ge=1, le=65535, description="Port a 'serve' job listens on.")
    launcher: Literal["direct"] | None = Field(
        None,
        description="Run with this launcher instead of the host's own: 'direct' on a SLURM host runs the job "
        "on the login node over the same transport (downloads: compute nodes are offline).",
    )

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str] | None) -> list[str] | None:
        return None if v is None else validate_argv(v)

    @field_validator("payload")
    @classmethod
    def _payload(cls, v: str | None) -> str | None:
        if v is not None and not _PAYLOAD_RE.match(v):
            raise ValueError(f"{v!r} is not a payload name (lowercase letters, digits, '_')")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            check_env_name(k)
            if k in RESERVED_ENV:
                raise ValueError(f"{k} is set by the job engine itself")
            if "\x00" in val:
                raise ValueError(f"env {k} contains a NUL byte")
        return v

    @model_validator(mode="after")
    def _shape(self) -> JobSpec:
        if self.argv is None and self.payload is None:
            raise ValueError("a job runs an 'argv', a 'payload', or a payload through an 'argv' (torchrun)")
        if self.argv is not None and self.payload is not None and f"{self.payload}.py" not in self.argv:
            raise ValueError(f"an argv given with payload {self.payload!r} must run {self.payload}.py")
        clash = set(self.env) & set(self.secrets)
        if clash:
            raise ValueError(f"{', '.join(sorted(clash))} is both in env and in secrets")
        return self
