"""The tool listing, built once per version of the code and read back at the next start.

Why: on a 2-core machine, building the tools (importing every ``tools/`` module with its
pydantic models, then the SDK turning each signature into an argument model and JSON
schemas) costs about half of what the SDK's own import does, and ``initialize`` and
``tools/list`` need none of it but the listing. So the first start stores the listing it
answered in the state dir, under a key made of everything the listing is built from:
the bytes of every controller source file, the versions of Python, the MCP SDK and
pydantic, and the configuration. A later start whose key matches answers ``tools/list``
from the file and builds the real tools on the first request that needs them
(:meth:`server.registry.OpsServer.ensure_registered`). Any doubt (no file, another key,
a file that does not parse) means the tools are built at once, as before.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mcp_types import Tool as MCPTool

__all__ = ["CACHE_FILE", "listing_key", "load_listing", "save_listing"]

log = logging.getLogger("llm_ops_mcp")

CACHE_FILE = "tool-listing.json"
_SOURCES = ("server", "tools", "runners")
_ROOT = Path(__file__).resolve().parents[1]


def _versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import pydantic
    import pydantic_core

    out = [sys.version, pydantic.VERSION, pydantic_core.__version__]
    for dist in ("mcp", "mcp-types"):
        try:
            out.append(f"{dist}={version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist}=?")
    return "\n".join(out)


def listing_key(config_json: str, root: Path = _ROOT) -> str:
    """A digest of everything the tool listing is made from (module docstring)."""
    h = hashlib.sha256()
    h.update(_versions().encode())
    h.update(b"\0config\0" + config_json.encode())
    for pkg in _SOURCES:
        for path in sorted((root / pkg).rglob("*.py")):
            h.update(b"\0" + str(path.relative_to(root)).encode() + b"\0")
            h.update(path.read_bytes())
    return h.hexdigest()


def load_listing(state_dir: Path, key: str) -> list[MCPTool] | None:
    """The stored listing when its key is ``key``; None otherwise (never raises)."""
    try:
        raw = json.loads((state_dir / CACHE_FILE).read_text())
        if raw.get("key") != key:
            return None
        return [MCPTool.model_validate(t) for t in raw["tools"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def save_listing(state_dir: Path, key: str, tools: list[MCPTool]) -> None:
    """Store the listing atomically; a state dir that cannot be written only costs the next start time."""
    data: dict[str, Any] = {
        "key": key,
        "tools": [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools],
    }
    try:
        state_dir.mkdir(parents=True, exist_ok=True)
        tmp = state_dir / f".{CACHE_FILE}.{os.getpid()}"
        tmp.write_text(json.dumps(data))
        os.replace(tmp, state_dir / CACHE_FILE)
    except OSError as e:
        log.info("tool listing not stored in %s (%s); the next start builds it again", state_dir, e)
