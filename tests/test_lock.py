"""The environments the tests run in are exactly their lock files.

Why: an install that resolves afresh can give the same commit other versions next week
(transformers, trl, peft moved under us before), so ``make test`` and ``make demo``
install ``requirements.lock`` (and ``requirements-llmc.lock`` for the llm-compressor
overlay) with ``uv pip sync``. These tests read each interpreter's installed
distributions — what ``pip freeze`` lists — and compare them with the lock's pins
whose markers hold on this machine: a package missing, extra or at another version fails.
(That pyproject.toml and the lock agree is ``make lock-check``, run before the tests.)
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.helpers.ci import unavailable

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "llm-ops-mcp"  # installed editable on top of the lock, not part of it

# Run inside the interpreter under test, so markers are evaluated for it.
_PROBE = r"""
import json, re, sys
from importlib import metadata
from packaging.markers import Marker
from packaging.utils import canonicalize_name
pins = {}
for line in open(sys.argv[1]):
    m = re.match(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)(?:\s*;\s*([^\\]+?))?\s*\\?$", line)
    if m and (m[3] is None or Marker(m[3]).evaluate()):
        pins[canonicalize_name(m[1])] = m[2]
installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
print(json.dumps({"pins": pins, "installed": installed}))
"""


def _compare(python: str, lock: Path) -> list[str]:
    out = subprocess.run([python, "-c", _PROBE, str(lock)], capture_output=True, text=True, timeout=120, check=True)
    seen = json.loads(out.stdout)
    pins, installed = seen["pins"], seen["installed"]
    installed.pop(PROJECT, None)
    problems = [f"missing: {n}=={v}" for n, v in pins.items() if n not in installed]
    problems += [f"extra: {n}=={v}" for n, v in installed.items() if n not in pins]
    problems += [f"{n}: {installed[n]} installed, {v} locked" for n, v in pins.items() if installed.get(n, v) != v]
    return sorted(problems)


def test_the_main_environment_is_the_lock():
    lock = ROOT / "requirements.lock"
    problems = _compare(sys.executable, lock)
    assert not problems, f"{sys.prefix} differs from {lock.name} (run 'make venv'):\n" + "\n".join(problems)


def test_the_llm_compressor_overlay_is_its_lock():
    python = os.environ.get("LLMCOMPRESSOR_PYTHON")
    if not python:
        unavailable("set LLMCOMPRESSOR_PYTHON to the overlay's interpreter (make test builds .venv-llmc)")
    lock = ROOT / "requirements-llmc.lock"
    problems = _compare(python, lock)
    assert not problems, f"{python} differs from {lock.name}:\n" + "\n".join(problems)


def test_the_probe_sees_a_version_that_differs():
    """The comparison can fail: a lock pinning another version of an installed package is caught."""
    fake = ROOT / ".venv" / "lock-probe-test.txt"
    text = (ROOT / "requirements.lock").read_text()
    fake.write_text(re.sub(r"^pydantic==\S+", "pydantic==0.0.1", text, count=1, flags=re.M))
    try:
        assert "pydantic: " in "\n".join(_compare(sys.executable, fake))
    finally:
        fake.unlink()
