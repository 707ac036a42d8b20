"""Hosts as the agent sees them: what each is, and (on demand) whether it answers.

``list_hosts`` is cheap by default (config only). With ``check=True`` each host is
probed through its transport: reachability, and ``nvidia-smi`` for the GPUs it
really has.

:func:`host_gpus` is the one answer to "which GPUs does this host have" for every planner
(fine-tune, quantize, serve): the config's accelerator when it names one, else what
nvidia-smi found (:func:`detect_gpus`), with the config's ``gpu_memory_gib`` over either.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from runners.accelerators import GpuTier, get_tier
from runners.config import Config, HostConfig
from runners.errors import OpsError
from tools.gpu_status import GpuInfo, probe_host, query_gpu_status

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "HostGpus",
    "HostInfo",
    "ListHostsInput",
    "ListHostsOutput",
    "detect_gpus",
    "host_gpus",
    "list_hosts",
]


@dataclass(frozen=True)
class HostGpus:
    """A host's GPUs as a planner sees them.

    ``tier`` is the catalog's tier (None: no GPU, or nvidia-smi names a card the catalog lacks);
    ``memory_gib`` is per GPU, the config's ``gpu_memory_gib`` when set (a MIG slice, a card with
    less usable memory), else the tier's or nvidia-smi's; ``count`` is None when nothing says.
    """

    tier: GpuTier | None
    memory_gib: float | None
    count: int | None

    def sized_tier(self) -> GpuTier | None:
        """The tier with ``memory_gib`` as its memory (what a planner that reads only the tier needs)."""
        if self.tier is None or self.memory_gib is None or self.memory_gib == self.tier.memory_gib:
            return self.tier
        return self.tier.model_copy(update={"memory_gib": self.memory_gib})


def host_gpus(host: HostConfig, detected: Sequence[GpuInfo] | None = None) -> HostGpus:
    """The config's accelerator when it names one, else the ``detected`` GPUs (None: not probed)."""
    acc = host.accelerator
    if acc is not None:
        return HostGpus(acc.tier, host.gpu_memory_gib or acc.tier.memory_gib, acc.count)
    if detected is None:
        return HostGpus(None, None, None)
    sized = [g for g in detected if g.memory_total_mib]
    if not sized:
        return HostGpus(None, None, len(detected))
    try:
        tier: GpuTier | None = get_tier(sized[0].name)
    except OpsError:
        tier = None
    return HostGpus(tier, host.gpu_memory_gib or sized[0].memory_total_mib / 1024, len(sized))


async def detect_gpus(ctx: ToolContext, host: HostConfig) -> list[GpuInfo] | None:
    """nvidia-smi's GPUs on a direct host whose config names none; None when not asked or not answered.

    A SLURM host's login node is not where its jobs run, so it is never asked. A host that cannot be
    reached is "unknown" here: the submit that follows reports the transport's own error.
    """
    if host.accelerator is not None or host.launcher != "direct":
        return None
    try:
        gpus, _note = await query_gpu_status(ctx.transport(host))
    except OpsError:
        return None
    return gpus


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


async def list_hosts(ctx: ToolContext, params: ListHostsInput) -> ListHostsOutput:
    """Describe every configured host; with ``check`` also probe each through its transport (local ones too)."""
    cfg = ctx.config
    infos = [_info(cfg, h) for h in cfg.hosts.values()]
    if params.check:

        async def check(info: HostInfo, h: HostConfig) -> None:
            t0 = time.perf_counter()
            reachable, gpus, note = await probe_host(ctx.transport(h), h)
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
