"""What the running server holds: the configuration and the state directory.

Built once per server (never at import time). Heavier pieces (the job catalog,
SSH connections) are created lazily on first use so that start-up stays fast.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runners.config import APP_NAME, Config

__all__ = ["AppState", "default_state_dir"]


def default_state_dir() -> Path:
    """``$LLM_OPS_MCP_STATE_DIR`` or the platformdirs state dir (holds the job catalog and the stored tool listing)."""
    env = os.environ.get("LLM_OPS_MCP_STATE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # here, not at the top: only a start without $LLM_OPS_MCP_STATE_DIR needs it

    return Path(platformdirs.user_state_dir(APP_NAME))


@dataclass
class AppState:
    config: Config
    state_dir: Path = field(default_factory=default_state_dir)
    # Lazily built services, keyed by name (the job engine, SSH pools...).
    services: dict[str, Any] = field(default_factory=dict)
