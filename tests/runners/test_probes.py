"""Host probes (runners/probes.py, runners/payloads/probes/): self-contained, and run as their argv says.

A probe runs in the host's bare interpreter, so one that imports anything of ours, or a
package the host need not have, would fail there and nowhere here; the first test reads every
probe's imports. The others run probes for real through the local transport.
"""

from __future__ import annotations

import ast
import socket
import subprocess
import sys
from importlib.resources import files
from pathlib import Path

import pytest

from runners.config import HostConfig
from runners.errors import InvalidInput, NotFound
from runners.payloads.job_io import EXIT_MISSING_DEPENDENCY
from runners.probes import PROBES_PACKAGE, probe_argv, probe_source
from runners.transports.local import LocalTransport

PROBES = Path(str(files(PROBES_PACKAGE)))
HOST_LIBRARIES = {"huggingface_hub"}  # what a probe may ask about (imported under a try)


def _probe_files() -> list[Path]:
    return sorted(p for p in PROBES.iterdir() if p.suffix in (".py", ".sh") and p.name != "__init__.py")


def test_every_probe_is_self_contained() -> None:
    names = [p.name for p in _probe_files()]
    assert {"vllm_install.py", "free_port.py", "gpu_release.sh", "hf_cache.py"} <= set(names)
    for path in _probe_files():
        if path.suffix == ".sh":
            subprocess.run(["bash", "-n", str(path)], check=True)
            continue
        tops = set()
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                tops |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: a relative import can't work in `python -c`"
                tops.add((node.module or "").split(".")[0])
        foreign = tops - set(sys.stdlib_module_names) - HOST_LIBRARIES
        assert not foreign, f"{path.name} imports {sorted(foreign)}: a probe is stdlib only"


def test_argv_carries_the_text_and_keeps_arguments_apart() -> None:
    argv = probe_argv("free_port.py", "127.0.0.1", "auto", python="/opt/py/bin/python3")
    assert argv == ["/opt/py/bin/python3", "-c", probe_source("free_port.py"), "127.0.0.1", "auto"]
    argv = probe_argv("gpu_release.sh", "serve-1; rm -rf /")
    assert argv[:2] == ["bash", "-c"] and argv[3:] == ["llm-ops-gpu-release", "serve-1; rm -rf /"]
    with pytest.raises(NotFound):
        probe_argv("no_such_probe.py")
    with pytest.raises(InvalidInput):
        probe_argv("../serve.py")


@pytest.mark.anyio
async def test_probes_answer_through_the_transport(tmp_path: Path) -> None:
    t = LocalTransport(HostConfig(name="here", workdir=str(tmp_path)))
    res = await t.run(probe_argv("free_port.py", "127.0.0.1", "auto", python=sys.executable), timeout=60)
    port = int(res.out.strip())
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))
        s.listen()
        res = await t.run(probe_argv("free_port.py", "127.0.0.1", str(port), python=sys.executable), timeout=60)
        assert res.out.strip() == "busy"
    res = await t.run(probe_argv("vllm_install.py", python=sys.executable), timeout=60)
    assert '"python": ' in res.out and res.rc == 0
    res = await t.run(probe_argv("gpu_release.sh", "no-such-job"), timeout=60)
    assert res.rc == 0 and "JOB " not in res.out


@pytest.mark.anyio
async def test_a_missing_host_library_is_the_missing_dependency_exit(tmp_path: Path) -> None:
    """hf_cache.py in an interpreter without huggingface_hub: job_io's EXIT_MISSING_DEPENDENCY and a JSON error,
    which tools/download.py turns into "install huggingface_hub there"."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True, timeout=120)
    t = LocalTransport(HostConfig(name="here", workdir=str(tmp_path)))
    res = await t.run(probe_argv("hf_cache.py", python=str(tmp_path / "bare" / "bin" / "python")), timeout=60)
    assert res.rc == EXIT_MISSING_DEPENDENCY, (res.rc, res.out, res.err)
    assert "huggingface_hub is not installed" in res.out
