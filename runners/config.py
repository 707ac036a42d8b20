"""Host configuration: one TOML file of hosts, validated by pydantic.

Where the file comes from, in order: ``--config``, ``$LLM_OPS_MCP_CONFIG``, then
``config.toml`` in the platformdirs config dir. No file at all is fine: one host,
``local`` (local transport, direct launcher, GPUs from ``nvidia-smi`` if any).
Unknown keys are errors (a typo must not pass silently) and every error names the
file and the key. Secrets are *names* of controller environment variables, never
values. Nothing is read at import time.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from runners.accelerators import Accelerator, parse_accelerator
from runners.errors import ConfigError
from runners.spec import EnvName, JobKind

__all__ = ["APP_NAME", "Config", "HostConfig", "SlurmConfig", "default_config_path", "load_config"]

APP_NAME = "llm-ops-mcp"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SlurmConfig(_Strict):
    """What sbatch needs on this cluster; per-job overrides come from the submit tools."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gres: str = Field("gpu", description="GRES name: 'gpu' or typed like 'gpu:h100'.")
    time_limit: str = Field("01:00:00", description="Default --time (HH:MM:SS or D-HH:MM:SS).")
    mem: str | None = None
    cpus_per_task: int | None = Field(None, ge=1)
    header: list[str] = Field(default_factory=list, description="Lines run before the job (module load ...).")

    @field_validator("partition", "account", "qos", "constraint", "gres", "mem")
    @classmethod
    def _no_flags(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("-") or not re.fullmatch(r"[A-Za-z0-9_.,:&|!\[\]*-]+", v)):
            raise ValueError(f"{v!r} is not a valid SLURM value")
        return v

    @field_validator("time_limit")
    @classmethod
    def _time(cls, v: str) -> str:
        if not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", v):
            raise ValueError(f"{v!r} is not a SLURM time (use HH:MM:SS or D-HH:MM:SS)")
        return v


class HostConfig(_Strict):
    """One machine (or SLURM login node) that runs jobs."""

    name: str = "local"
    transport: Literal["local", "ssh"] = "local"
    launcher: Literal["direct", "slurm"] = "direct"
    address: str | None = None
    port: int = Field(22, ge=1, le=65535)
    user: str | None = None
    identity_file: str | list[str] | None = None
    known_hosts: str | None = Field(None, description="known_hosts file; default ~/.ssh/known_hosts.")
    proxy_jump: str | None = Field(None, description="Another host of this file, or user@host[:port].")
    connect_timeout_s: float = Field(10.0, gt=0, le=300)
    max_channels: int = Field(8, ge=1, le=64, description="Concurrent SSH channels to this host.")
    gpus: str | None = Field(None, description="Accelerator string like 'H100:4' (per node on SLURM).")
    gpu_memory_gib: float | None = Field(None, gt=0, description="Override the tier's memory per GPU.")
    workdir: str = "~/llm-ops"
    python: str | None = Field(
        None,
        description="The host's interpreter for payloads (default: this server's own on a local host, python3 over SSH).",
    )
    env: dict[EnvName, str] = Field(default_factory=dict)
    kind_env: dict[JobKind, dict[EnvName, str]] = Field(
        default_factory=dict,
        description="More env for one kind of job (serve, finetune, quantize, ...), laid over `env`.",
    )
    secrets: list[EnvName] = Field(default_factory=list, description="Names of controller env vars to pass.")
    allow_scripts: bool = False
    slurm: SlurmConfig | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError("host names are letters, digits, '_', '.', '-' (max 64)")
        return v

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: str | None) -> str | None:
        if v is not None:
            parse_accelerator(v)  # raises InvalidInput with the known ids
        return v

    @model_validator(mode="after")
    def _shape(self) -> HostConfig:
        if self.transport == "ssh" and not self.address:
            raise ValueError("an ssh host needs 'address'")
        if self.transport == "local" and self.address:
            raise ValueError("'address' applies to ssh hosts only")
        if self.slurm is not None and self.launcher != "slurm":
            raise ValueError('a [slurm] table needs launcher = "slurm"')
        return self

    @property
    def accelerator(self) -> Accelerator | None:
        return parse_accelerator(self.gpus) if self.gpus else None

    @property
    def interpreter(self) -> str:
        if self.python:
            return self.python
        return sys.executable if self.transport == "local" else "python3"

    def env_for(self, kind: str) -> dict[str, str]:
        """The env a job of ``kind`` (and a probe on its behalf) gets: ``env``, then ``kind_env[kind]`` over it.

        Why per kind: one machine often keeps its serving and training stacks apart (vLLM pins
        versions the fine-tune stack does not accept; ``import unsloth`` patches vLLM when it can
        import it), so serve jobs need a PYTHONPATH or PATH that fine-tunes must not see.
        """
        return {**self.env, **self.kind_env.get(kind, {})}

    @property
    def slurm_settings(self) -> SlurmConfig:
        return self.slurm or SlurmConfig()

    def secret_values(self, environ: dict[str, str] | None = None) -> dict[str, str]:
        """The secrets this host's jobs get, read from the controller's environment now."""
        src = os.environ if environ is None else environ
        return {k: src[k] for k in self.secrets if k in src}


class Config(_Strict):
    """The whole file: hosts by name, and which one tools use when none is named."""

    hosts: dict[str, HostConfig]
    default_host: str | None = None
    source: str | None = Field(None, description="The file this came from; None for the embedded default.")

    @model_validator(mode="after")
    def _default(self) -> Config:
        if not self.hosts:
            raise ValueError("no hosts defined: add a [hosts.NAME] table")
        if self.default_host is not None and self.default_host not in self.hosts:
            raise ValueError(f"default_host {self.default_host!r} is not one of the hosts")
        return self

    @property
    def default(self) -> str:
        return self.default_host or next(iter(self.hosts))

    def host(self, name: str | None) -> HostConfig:
        from runners.errors import NotFound

        key = name or self.default
        if key not in self.hosts:
            raise NotFound(f"Unknown host {key!r}.", f"Use one of: {', '.join(self.hosts)} (see list_hosts).")
        return self.hosts[key]

    @classmethod
    def embedded_default(cls, environ: dict[str, str] | None = None) -> Config:
        """One local host; ``$LLM_OPS_MCP_DEFAULT_WORKDIR`` moves its workdir (the demo uses a temp dir)."""
        env = os.environ if environ is None else environ
        workdir = env.get("LLM_OPS_MCP_DEFAULT_WORKDIR") or "~/llm-ops"
        return cls(hosts={"local": HostConfig(name="local", workdir=workdir)}, default_host="local", source=None)


def default_config_path() -> Path:
    import platformdirs  # here, not at the top: only a start without $LLM_OPS_MCP_CONFIG needs it

    return Path(platformdirs.user_config_dir(APP_NAME)) / "config.toml"


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Load the configuration; ``path`` beats ``$LLM_OPS_MCP_CONFIG`` beats the config dir."""
    env = os.environ if environ is None else environ
    explicit = path is not None or bool(env.get("LLM_OPS_MCP_CONFIG"))
    p = Path(path if path is not None else env.get("LLM_OPS_MCP_CONFIG") or default_config_path()).expanduser()
    if not p.exists():
        if explicit:
            raise ConfigError(
                f"Config file {p} does not exist.", "Create it (see examples/config.toml) or drop --config."
            )
        return Config.embedded_default(env)
    import tomllib  # here, not at the top: a start without a config file never parses TOML

    try:
        raw = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML ({e}).", "Fix the syntax at that line.") from e
    except OSError as e:
        raise ConfigError(f"{p}: cannot be read ({e.strerror}).", "Check the path and its permissions.") from e
    hosts = raw.get("hosts")
    if isinstance(hosts, dict):
        for name, table in hosts.items():
            if isinstance(table, dict):
                table.setdefault("name", name)
                if table["name"] != name:
                    raise ConfigError(f"{p}: key hosts.{name}.name differs from the table name.", "Remove 'name'.")
    try:
        return Config.model_validate({**raw, "source": str(p)})
    except ValidationError as e:
        err = e.errors()[0]
        key = _loc(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (typo?)"
        more = f" (and {e.error_count() - 1} more problem(s))" if e.error_count() > 1 else ""
        raise ConfigError(f"{p}: key {key}: {msg}{more}.", "Fix that key; examples/config.toml shows every key.") from e
    except Exception as e:  # InvalidInput from the GPU parser inside a validator
        raise ConfigError(f"{p}: {e}", "Fix the gpus key.") from e
