"""Hosts as the agent sees them: what each is, and (on demand) whether it answers.

``list_hosts`` is cheap by default (config only). With ``check=True`` each host is
probed through its transport: reachability, and ``nvidia-smi`` for the GPUs it
really has.
"""

from __future__ import annotations

import asyncio
import shutil
import time

from pydantic import BaseModel, Field

from runners.config import Config, HostConfig

__all__ = ["HostInfo", "ListHostsInput", "ListHostsOutput", "list_hosts", "probe_local_gpus"]


class ListHostsInput(BaseModel):
    check: bool = Field(False, description="Probe each host (reachability, nvidia-smi). Slower.")


class HostInfo(BaseModel):
    name: str
    transport: str
    launcher: str
    address: str | None = None
    gpu_type: str | None = Field(None, description="GPU tier id from the config, or as nvidia-smi names it.")
    gpu_count: int = 0
    gpu_memory_gib: float | None = Field(None, description="Per GPU.")
    workdir: str
    python: str
    is_default: bool = False
    reachable: bool | None = Field(None, description="Only set when check=true.")
    detected_gpus: list[str] | None = Field(None, description="nvidia-smi names, only when check=true.")
    check_note: str | None = None
    check_ms: float | None = None


class ListHostsOutput(BaseModel):
    hosts: list[HostInfo]
    config_source: str | None = Field(None, description="The config file used; null = the embedded default.")
    summary: str


async def probe_local_gpus(timeout_s: float = 10.0) -> tuple[list[tuple[str, float]], str | None]:
    """(name, memory GiB) per local GPU from nvidia-smi; an empty list with a note when there is none."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return [], "nvidia-smi not found: no NVIDIA GPU on this host (CPU jobs still run)."
    proc = await asyncio.create_subprocess_exec(
        exe,
        "--query-gpu=name,memory.total",
        "--format=csv,noheader,nounits",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    except TimeoutError:
        proc.kill()
        return [], f"nvidia-smi did not answer within {timeout_s:.0f} s."
    if proc.returncode != 0:
        return [], f"nvidia-smi failed: {err.decode(errors='replace').strip()[:200]}"
    gpus = []
    for line in out.decode().splitlines():
        if "," in line:
            name, mem = line.rsplit(",", 1)
            gpus.append((name.strip(), round(float(mem) / 1024, 2)))
    return gpus, None


def _info(cfg: Config, h: HostConfig) -> HostInfo:
    acc = h.accelerator
    return HostInfo(
        name=h.name,
        transport=h.transport,
        launcher=h.launcher,
        address=h.address,
        gpu_type=acc.tier.id if acc else None,
        gpu_count=acc.count if acc else 0,
        gpu_memory_gib=h.gpu_memory_gib or (acc.tier.memory_gib if acc else None),
        workdir=h.workdir,
        python=h.interpreter,
        is_default=h.name == cfg.default,
    )


async def list_hosts(cfg: Config, params: ListHostsInput, prober: object | None = None) -> ListHostsOutput:
    """Describe every configured host; with ``check`` also probe them.

    ``prober`` is an async callable ``(HostConfig) -> (reachable, gpus, note)`` supplied
    by the runner layer for remote hosts; local hosts are probed directly.
    """
    infos = [_info(cfg, h) for h in cfg.hosts.values()]
    if params.check:

        async def check(info: HostInfo, h: HostConfig) -> None:
            t0 = time.perf_counter()
            if h.transport == "local" and h.launcher == "direct":
                gpus, note = await probe_local_gpus()
                reachable = True
            elif prober is not None:
                reachable, gpus, note = await prober(h)  # type: ignore[operator]
            else:
                reachable, gpus, note = None, [], "no prober for this kind of host"
            info.reachable = reachable
            info.detected_gpus = [g[0] for g in gpus]
            info.check_note = note
            if gpus and info.gpu_type is None:
                info.gpu_type, info.gpu_count, info.gpu_memory_gib = gpus[0][0], len(gpus), gpus[0][1]
            info.check_ms = round((time.perf_counter() - t0) * 1000, 1)

        await asyncio.gather(*(check(i, cfg.hosts[i.name]) for i in infos))
    n = len(infos)

    def gpus(i: HostInfo) -> str:
        return f"{i.gpu_count}x {i.gpu_type}" if i.gpu_type else "no GPU"

    desc = ", ".join(f"{i.name} ({i.transport}+{i.launcher}, {gpus(i)})" for i in infos)
    return ListHostsOutput(hosts=infos, config_source=cfg.source, summary=f"{n} host{'s' if n != 1 else ''}: {desc}.")
