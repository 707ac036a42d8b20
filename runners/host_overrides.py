"""Host settings the server itself has learned, kept beside the job catalog, never in the user's config.

Why a separate file: the TOML config is the user's (hand-written, maybe under version
control); the server must not rewrite it. When ``setup_host`` has built a working
environment on a host, the server records that environment's interpreter here, and
:func:`apply_overrides` lays it over the config, so every later payload runs with it.

The file is ``<state dir>/host_overrides.json``::

    {"hosts": {"cynthia": {"python": "/home/me/llm-ops/envs/llm-ops/bin/python",
                            "set_by": "setup_host", "set_at": 1790000000.0}}}

An override beats the config's ``python`` (it is the newer, deliberate act). Delete
the entry (or the file) to go back to the config's value.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from runners.config import Config
from runners.errors import ConfigError

__all__ = ["OVERRIDES_FILE", "HostOverride", "apply_overrides", "load_overrides", "record_python"]

OVERRIDES_FILE = "host_overrides.json"


class HostOverride(BaseModel):
    python: str = Field(description="The interpreter payloads run with on this host.")
    set_by: str = Field(description="What recorded it (setup_host).")
    set_at: float = Field(description="Unix time it was recorded.")


def _path(state_dir: str | os.PathLike[str]) -> Path:
    return Path(state_dir) / OVERRIDES_FILE


def load_overrides(state_dir: str | os.PathLike[str]) -> dict[str, HostOverride]:
    """The recorded overrides by host name; none when the file does not exist."""
    p = _path(state_dir)
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise ConfigError(f"{p} cannot be read ({e}).", "Fix or delete it; setup_host writes it again.") from e
    try:
        return {k: HostOverride.model_validate(v) for k, v in doc.get("hosts", {}).items()}
    except (ValidationError, AttributeError) as e:
        raise ConfigError(f"{p} is malformed ({e}).", "Fix or delete it; setup_host writes it again.") from e


def record_python(state_dir: str | os.PathLike[str], host: str, python: str, set_by: str = "setup_host") -> None:
    """Record ``python`` as ``host``'s interpreter (atomic replace, so a reader never sees half a file)."""
    p = _path(state_dir)
    p.parent.mkdir(parents=True, exist_ok=True)
    current = load_overrides(state_dir)
    current[host] = HostOverride(python=python, set_by=set_by, set_at=time.time())
    tmp = p.with_name(f"{p.name}.tmp-{os.getpid()}")
    tmp.write_text(
        json.dumps({"hosts": {k: v.model_dump() for k, v in sorted(current.items())}}, indent=2) + "\n",
        encoding="utf-8",
    )
    os.replace(tmp, p)


def apply_overrides(config: Config, overrides: dict[str, HostOverride]) -> Config:
    """``config`` with each overridden host's ``python`` replaced; hosts no longer configured are ignored."""
    if not any(name in config.hosts for name in overrides):
        return config
    hosts = {
        name: (h.model_copy(update={"python": overrides[name].python}) if name in overrides else h)
        for name, h in config.hosts.items()
    }
    return config.model_copy(update={"hosts": hosts})
