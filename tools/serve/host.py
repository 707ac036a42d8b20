"""What serving needs to know about, and do on, a host: its vLLM, its free ports, its GPUs.

Kept apart from the planning (tools/serve/plan.py) because every function here touches a
host through the engine's :class:`~runners.transports.base.Transport`: the same code runs
for a local host, an SSH host and a SLURM login node.

* :func:`detect_vllm` asks the host's interpreter for vLLM's version, where its
  ``vllm`` program is and whether bitsandbytes is there (package metadata only: about a
  second), and returns the flags of ``vllm serve`` when this host's version is known
  (cached in the state dir). It never runs ``vllm serve --help=all`` itself: that takes
  23-33 s on a GPU host, longer than a tool call may block. The first server job on a
  host runs it on the host instead, before vLLM starts, fails with a clear error when a
  flag is wrong (runners/payloads/serve.py ``check_flags``), and leaves the help in its
  job directory (``vllm-help.json``), which the next call reads and caches.
* :func:`check_port` and :func:`check_gpu_release` ask the host whether a port is free and
  whether a stopped server's GPU memory came back.

Each question is a host probe (runners/payloads/probes/: ``vllm_install.py``,
``free_port.py``, ``gpu_release.sh``), run through the transport by runners/probes.py.

The endpoint of a running server (tunnels, API keys) is tools/serve/runtime.py.
"""

from __future__ import annotations

import json
import shlex

from pydantic import BaseModel, Field

from runners.config import HostConfig
from runners.engine import JobEngine
from runners.errors import CommandFailed, Conflict, HostError, InvalidInput, NotFound
from runners.probes import probe_argv
from tools.serve.flags import FlagCache, KnownFlags, parse_help

__all__ = [
    "HELP_FILE",
    "GpuRelease",
    "VllmInstall",
    "check_gpu_release",
    "check_port",
    "detect_vllm",
    "host_command",
    "parse_gpu_lines",
]


def host_command(host: HostConfig, argv: list[str], kind: str = "serve") -> list[str]:
    """``argv`` with the host's env for jobs of ``kind`` applied (``env K=V ... argv``), as those jobs see it."""
    env = host.env_for(kind)
    if not env:
        return argv
    return ["env", *(f"{k}={v}" for k, v in env.items()), *argv]


HELP_FILE = "vllm-help.json"  # a serve job's record of `vllm serve --help=all` (written by its payload)


class VllmInstall(BaseModel):
    """vLLM as one host has it."""

    host: str
    version: str
    python: str = Field(description="The host interpreter that has it.")
    program: str | None = Field(None, description="The `vllm` program next to it or on PATH.")
    bitsandbytes: str | None = Field(None, description="bitsandbytes' version in that interpreter (None: absent).")
    flags_cached: bool = Field(description="True when the flag list came from the state dir's cache.")
    flags: KnownFlags | None = Field(
        None, exclude=True, description="None: not known yet on this host; the server job checks them there."
    )

    def quantization_methods(self) -> frozenset[str]:
        """vLLM in-flight quantization methods this host can run (fp8 is vLLM's own)."""
        return frozenset({"fp8", *(["bitsandbytes"] if self.bitsandbytes else [])})


async def detect_vllm(engine: JobEngine, host: HostConfig, cache: FlagCache) -> VllmInstall:
    """The host's vLLM version, program and bitsandbytes, and its flags when known (see the module docstring)."""
    t = engine.transport(host.name)
    res = await t.run(host_command(host, probe_argv("vllm_install.py", python=host.interpreter)), timeout=60)
    try:
        doc = json.loads(res.out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = {"version": None, "error": (res.err.strip().splitlines() or ["no output"])[-1]}
    if not doc.get("version"):
        raise NotFound(
            f"vLLM is not installed for {host.interpreter} on host {host.name!r} ({doc.get('error')}).",
            f"Install it there ({host.interpreter} -m pip install vllm), or set `python` in [hosts.{host.name}] "
            "to an interpreter that has it.",
        )
    version = str(doc["version"])
    flags = cache.get(host.name, version)
    cached = flags is not None
    if flags is None:
        flags = await _flags_from_jobs(engine, host, version)
        if flags is not None:
            cache.put(host.name, flags)
    return VllmInstall(
        host=host.name,
        version=version,
        python=doc.get("python") or host.interpreter,
        program=doc.get("program"),
        bitsandbytes=doc.get("bitsandbytes"),
        flags_cached=cached,
        flags=flags,
    )


async def _flags_from_jobs(engine: JobEngine, host: HostConfig, version: str) -> KnownFlags | None:
    """The flags a recent serve job on ``host`` read from this ``version``'s help (its HELP_FILE), if any."""
    t = engine.transport(host.name)
    for rec in engine.catalog.list(kind="serve", host=host.name, limit=10):
        data = await t.read_range(f"{rec.job_dir}/{HELP_FILE}", 0, 4 << 20)
        if not data:
            continue
        try:
            doc = json.loads(data)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("version") != version or doc.get("rc") != 0:
            continue
        try:
            return parse_help(
                str(doc.get("text") or ""), version, source=f"host {host.name}: {shlex.join(doc.get('command') or [])}"
            )
        except (HostError, InvalidInput):
            continue
    return None


async def check_port(engine: JobEngine, host: HostConfig, bind: str, port: int | None) -> int:
    """A free port on the host (``port=None``), or ``port`` itself after checking nobody listens there."""
    t = engine.transport(host.name)
    argv = probe_argv("free_port.py", bind, "auto" if port is None else str(port), python=host.interpreter)
    res = await t.run(argv, timeout=60)
    res.check(f"Checking port {port or 'auto'} on {host.name}")
    out = res.out.strip()
    if port is None:
        if not out.isdigit():
            raise CommandFailed(f"No free port found on {host.name} ({out!r}).", "Pass an explicit port.")
        return int(out)
    if out == "busy":
        raise Conflict(
            f"Port {port} is already in use on host {host.name!r} ({bind}).",
            "Use port='auto', or stop the process that listens there (a server of yours? list_jobs kind='serve').",
        )
    return port


class GpuRelease(BaseModel):
    """What nvidia-smi shows after a server stopped."""

    checked: bool = Field(description="False when nvidia-smi is not there (or SLURM frees the node itself).")
    released: bool | None = Field(None, description="True when no GPU process of the job is left.")
    leftover_pids: list[int] = Field(default_factory=list, description="GPU processes of the job still alive.")
    gpu_memory_used_mib: dict[str, int] = Field(default_factory=dict, description="Per GPU index, after the stop.")
    note: str | None = None


def parse_gpu_lines(text: str) -> GpuRelease:
    """Parse the gpu_release.sh probe's output (a pure function)."""
    if "NO_SMI" in text:
        return GpuRelease(checked=False, note="nvidia-smi is not on this host: GPU memory not checked.")
    pids: list[int] = []
    used: dict[str, int] = {}
    for line in text.splitlines():
        f = line.split()
        if len(f) >= 3 and f[0] == "JOB" and f[1].isdigit():
            pids.append(int(f[1]))
        elif len(f) >= 4 and f[0] == "GPU" and f[2].isdigit():
            used[f[1]] = int(f[2])
    return GpuRelease(checked=True, released=not pids, leftover_pids=pids, gpu_memory_used_mib=used)


async def check_gpu_release(engine: JobEngine, host: HostConfig, job_id: str, wait_s: float = 15.0) -> GpuRelease:
    """Poll nvidia-smi until no process of ``job_id`` holds GPU memory (or ``wait_s`` passes)."""
    import asyncio
    import time

    if host.launcher == "slurm":
        return GpuRelease(checked=False, note="On SLURM the scheduler frees the node's GPUs when the job ends.")
    t = engine.transport(host.name)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            res = await t.run(probe_argv("gpu_release.sh", job_id), timeout=60)
        except HostError as e:
            return GpuRelease(checked=False, note=f"GPU check failed: {e.message}")
        rel = parse_gpu_lines(res.out)
        if not rel.checked or rel.released or time.monotonic() >= deadline:
            if rel.checked and not rel.released:
                rel.note = (
                    f"{len(rel.leftover_pids)} GPU process(es) of the job still hold memory after "
                    f"{wait_s:.0f} s: pids {rel.leftover_pids}."
                )
            return rel
        await asyncio.sleep(1.0)
