"""Faults on the job's host, each through the real MCP server (in-memory client):

* sshd restarted mid-job (every connection drops, then it listens again);
* slurmctld restarted mid-job (squeue fails meanwhile: the status is stale, not lost);
* the job's process killed by a signal;
* the job's disk full while it writes (a 1 MiB tmpfs mounted as root, unmounted after);
* the kernel's OOM killer (a memory-limited cgroup; ``ulimit -v`` → MemoryError where
  no cgroup can be made).

Each ends in the right state with a hint from runners/diagnosis.py ``diagnose`` that names the
cause, and the server answers the next call.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig, SlurmConfig
from runners.engine import JobEngine
from server.app import build_server
from tests.helpers.ci import unavailable
from tools.context import ToolContext

pytestmark = pytest.mark.anyio


async def call(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    assert not r.is_error, r.content[0].text
    return r.structured_content


async def serving(c: Client) -> None:
    """The server keeps serving after the fault."""
    assert (await call(c, "list_gpu_tiers", {}))["tiers"]
    assert (await call(c, "list_jobs", {}))["count"] >= 1


@contextlib.asynccontextmanager
async def mcp(host: HostConfig, tmp_path: Path):
    state = ToolContext(config=Config(hosts={host.name: host}, default_host=host.name), state_dir=tmp_path / "state")
    try:
        async with Client(build_server(state=state), mode="auto") as c:
            yield c
    finally:
        eng = JobEngine(state.config, state.state_dir)
        try:
            for v in await eng.list_jobs():
                if not v.terminal:
                    await eng.cancel(v.job_id, grace_s=1)
        finally:
            await eng.aclose()


async def test_sshd_restarted_mid_job(tmp_path: Path, sshd) -> None:
    host = sshd.host_config("box", workdir=str(tmp_path / "work"), allow_scripts=True)
    async with mcp(host, tmp_path) as c:
        job = await call(c, "submit_command", {"argv": ["bash", "-c", "sleep 3; echo survived"]})
        sshd.restart()  # every connection drops; the job (setsid) keeps running
        st = await call(c, "get_job_status", {"job_id": job["job_id"]})
        assert st["state"] == "running"
        done = await call(c, "wait_for_job", {"job_id": job["job_id"], "timeout_s": 60})
        assert done["job"]["state"] == "succeeded"
        assert "survived" in (await call(c, "get_job_logs", {"job_id": job["job_id"]}))["text"]
        await serving(c)


async def test_slurmctld_restarted_mid_job(tmp_path: Path, slurm_cluster) -> None:
    host = HostConfig(
        name="cluster",
        workdir=str(tmp_path / "work"),
        allow_scripts=True,
        launcher="slurm",
        slurm=SlurmConfig(time_limit="00:05:00"),
    )
    async with mcp(host, tmp_path) as c:
        job = await call(c, "submit_command", {"argv": ["bash", "-c", "sleep 6; echo through"]})
        w = await call(c, "wait_for_job", {"job_id": job["job_id"], "until": "running", "timeout_s": 60})
        assert w["reached"], w
        with slurm_cluster.controller_down():  # holds the cluster's lock: other sessions wait, not break
            st = await call(c, "get_job_status", {"job_id": job["job_id"]})
            assert st["state"] == "running" and st.get("stale"), st  # not guessed as lost
        done = await call(c, "wait_for_job", {"job_id": job["job_id"], "timeout_s": 90})
        assert done["job"]["state"] == "succeeded", done
        await serving(c)


@pytest.mark.parametrize(
    ("sig", "kind", "word"), [(signal.SIGSEGV, "exit_code", "SIGSEGV"), (signal.SIGKILL, "host_oom", "SIGKILL")]
)
async def test_job_process_killed_by_a_signal(sig: int, kind: str, word: str, tmp_path: Path) -> None:
    host = HostConfig(name="local", workdir=str(tmp_path / "work"), allow_scripts=True)
    async with mcp(host, tmp_path) as c:
        job = await call(c, "submit_command", {"argv": ["bash", "-c", "echo $$ > child.pid; exec sleep 60"]})
        pidfile = Path(job["job_dir"]) / "child.pid"
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            time.sleep(0.02)
        os.kill(int(pidfile.read_text()), sig)
        done = await call(c, "wait_for_job", {"job_id": job["job_id"], "timeout_s": 30})
        j = done["job"]
        assert j["state"] == "failed" and j["exit_code"] == 128 + sig, j
        assert word in (j["reason"] or ""), j
        st = await call(c, "get_job_status", {"job_id": job["job_id"]})
        assert st["error"]["kind"] == kind and st["error"]["hint"], st
        await serving(c)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs (root only); unmounted (by path) afterwards."""
    if os.geteuid() != 0:
        unavailable("mounting a tmpfs needs root")
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_while_writing_the_log(tmp_path: Path, tiny_disk: Path) -> None:
    host = HostConfig(name="local", workdir=str(tiny_disk / "work"), allow_scripts=True)
    async with mcp(host, tmp_path) as c:
        # Writes 4 MiB to stdout (= output.log) on a 1 MiB disk.
        job = await call(
            c, "submit_command", {"argv": [sys.executable, "-c", "import sys\nfor i in range(4096): print('x' * 1023)"]}
        )
        done = await call(c, "wait_for_job", {"job_id": job["job_id"], "timeout_s": 30})
        j = done["job"]
        assert j["state"] in ("failed", "lost"), j
        st = await call(c, "get_job_status", {"job_id": job["job_id"]})
        assert st["error"]["kind"] == "disk_full", st["error"]
        await serving(c)


def _memory_cgroup(limit: int) -> tuple[Path, str] | None:
    """A fresh memory-limited cgroup (v2 memory.max or v1 memory.limit_in_bytes), or None."""
    name = f"llmops-oom-{uuid.uuid4().hex[:8]}"
    v2 = Path("/sys/fs/cgroup")
    candidates = []
    if (v2 / "cgroup.controllers").exists() and "memory" in (v2 / "cgroup.controllers").read_text():
        candidates.append((v2 / name, "memory.max"))
    if (v2 / "memory").is_dir():
        candidates.append((v2 / "memory" / name, "memory.limit_in_bytes"))
    for path, knob in candidates:
        try:
            path.mkdir()
            (path / knob).write_text(str(limit))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            return path, knob
        except OSError:
            with contextlib.suppress(OSError):
                path.rmdir()
    return None


async def test_job_killed_by_the_oom_killer(tmp_path: Path) -> None:
    host = HostConfig(name="local", workdir=str(tmp_path / "work"), allow_scripts=True)
    hog = "x = bytearray(512 * 1024 * 1024); print(len(x))"
    cg = _memory_cgroup(64 * 1024 * 1024) if os.geteuid() == 0 else None
    if cg is not None:  # the kernel's OOM killer: SIGKILL from inside a 64 MiB cgroup
        argv = ["bash", "-c", f'echo $$ > {cg[0]}/cgroup.procs && exec "$0" -c "$1"', sys.executable, hog]
        expect = "host_oom"
    else:  # no cgroup here: an address-space limit turns the allocation into MemoryError
        argv = ["bash", "-c", 'ulimit -v 262144; exec "$0" -c "$1"', sys.executable, hog]
        expect = "host_oom"
    try:
        async with mcp(host, tmp_path) as c:
            job = await call(c, "submit_command", {"argv": argv})
            done = await call(c, "wait_for_job", {"job_id": job["job_id"], "timeout_s": 60})
            assert done["job"]["state"] == "failed", done
            st = await call(c, "get_job_status", {"job_id": job["job_id"]})
            assert st["error"]["kind"] == expect, st["error"]
            assert "memory" in st["error"]["hint"].lower()
            await serving(c)
    finally:
        if cg is not None:
            with contextlib.suppress(OSError):
                cg[0].rmdir()
