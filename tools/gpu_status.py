"""What a host's GPUs are doing right now: ``nvidia-smi`` queried and parsed.

Why the CSV queries rather than ``nvidia-smi -q -x``: ``--query-gpu`` /
``--query-compute-apps`` with ``--format=csv,noheader,nounits`` is the documented
machine interface, stable across driver versions, and small enough to parse with a
pure function (tested on captured outputs in ``tests/data/nvidia-smi``). Both
queries go to the host in ONE command (one SSH round trip: the host probe
``runners/payloads/probes/gpu_status.sh``), through the host's transport, so local
and SSH hosts share every line of this file; it is the one nvidia-smi path of the
controller (list_hosts' check, get_gpu_status and the planners' GPU detection).

``uuid`` is queried next to the fields an agent reads because the compute-apps
query names GPUs only by uuid: it is what ties a process to its GPU index.

A host without a usable NVIDIA GPU (no ``nvidia-smi``, no driver) is not an error:
the answer is an empty list with a note saying why. A host we cannot reach is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from runners.config import HostConfig
from runners.errors import CommandFailed, HostError, OpsError
from runners.launchers.slurm.gpus import SlurmGpuStatus, query_slurm_gpus
from runners.probes import probe_argv
from runners.transports.base import Transport

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "APPS_MARK",
    "APPS_QUERY",
    "FORMAT",
    "GPU_QUERY",
    "NO_NVIDIA_SMI",
    "PROBE",
    "GpuInfo",
    "GpuProcess",
    "GpuStatusInput",
    "GpuStatusOutput",
    "get_gpu_status",
    "parse_apps_csv",
    "parse_gpu_csv",
    "probe_host",
    "query_gpu_status",
]

GPU_FIELDS = (
    "index",
    "uuid",
    "name",
    "memory.total",
    "memory.used",
    "memory.free",
    "utilization.gpu",
    "temperature.gpu",
)
GPU_QUERY = "--query-gpu=" + ",".join(GPU_FIELDS)
APPS_QUERY = "--query-compute-apps=gpu_uuid,pid,process_name,used_memory"
FORMAT = "--format=csv,noheader,nounits"
APPS_MARK = "--- llm-ops compute-apps ---"
NO_NVIDIA_SMI = 127

# Both queries run on the host in one round trip: the probe runners/payloads/probes/gpu_status.sh
# (it spells these three out; tests/tools/test_gpu_status.py holds it to them).
PROBE = "gpu_status.sh"


class GpuStatusInput(BaseModel):
    host: str | None = Field(None, description="Host name from list_hosts; default: the default host.")


class GpuProcess(BaseModel):
    pid: int
    process_name: str
    used_memory_mib: int | None = Field(None, description="None where the driver does not report it.")


class GpuInfo(BaseModel):
    index: int
    uuid: str | None = None
    name: str
    memory_total_mib: int | None = None
    memory_used_mib: int | None = None
    memory_free_mib: int | None = None
    utilization_pct: int | None = Field(None, description="None where the driver says [N/A] (MIG, some vGPUs).")
    temperature_c: int | None = None
    processes: list[GpuProcess] = Field(default_factory=list)

    @property
    def memory_total_gib(self) -> float | None:
        return None if self.memory_total_mib is None else round(self.memory_total_mib / 1024, 2)


class GpuStatusOutput(BaseModel):
    host: str
    gpus: list[GpuInfo]
    partition_gpus: SlurmGpuStatus | None = Field(
        None, description="SLURM hosts: the partition's GPUs from sinfo (total, allocated, idle), per node."
    )
    note: str | None = Field(None, description="Why the list is empty, or what it does not cover.")
    summary: str


def _num(value: str) -> int | None:
    """nvidia-smi's numbers; ``[N/A]``, ``[Not Supported]``, ``[Insufficient Permissions]`` → None."""
    v = value.strip()
    if not v or v.startswith("["):
        return None
    try:
        return int(float(v))
    except ValueError:
        return None


def parse_gpu_csv(text: str) -> list[GpuInfo]:
    """Lines of ``GPU_QUERY`` output → GPUs. The name is taken as the middle fields, so a comma in it is safe."""
    gpus: list[GpuInfo] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        f = [x.strip() for x in line.split(",")]
        if len(f) < len(GPU_FIELDS) or _num(f[0]) is None:
            continue  # a warning line, not data
        name = ", ".join(f[2:-5]).strip()  # nvidia-smi separates fields by ", "
        tot, used, free, util, temp = (_num(x) for x in f[-5:])
        gpus.append(
            GpuInfo(
                index=int(f[0]),
                uuid=f[1] or None,
                name=name,
                memory_total_mib=tot,
                memory_used_mib=used,
                memory_free_mib=free,
                utilization_pct=util,
                temperature_c=temp,
            )
        )
    return gpus


def parse_apps_csv(text: str) -> list[tuple[str, GpuProcess]]:
    """Lines of ``APPS_QUERY`` output → (gpu uuid, process). "No running processes found" → []."""
    apps: list[tuple[str, GpuProcess]] = []
    for raw in text.splitlines():
        f = [x.strip() for x in raw.strip().split(",")]
        if len(f) < 4 or _num(f[1]) is None:
            continue
        apps.append(
            (f[0], GpuProcess(pid=int(f[1]), process_name=", ".join(f[2:-1]).strip(), used_memory_mib=_num(f[-1])))
        )
    return apps


def parse_gpu_status(stdout: str) -> list[GpuInfo]:
    """The whole script's output: GPUs, then the processes attached to each by uuid."""
    gpu_part, _, apps_part = stdout.partition(APPS_MARK)
    gpus = parse_gpu_csv(gpu_part)
    by_uuid = {g.uuid: g for g in gpus if g.uuid}
    for uuid, proc in parse_apps_csv(apps_part):
        gpu = by_uuid.get(uuid)
        if gpu is not None:
            gpu.processes.append(proc)
    return gpus


async def query_gpu_status(transport: Transport, timeout_s: float = 20.0) -> tuple[list[GpuInfo], str | None]:
    """(GPUs, note) for the transport's host. Unreachable hosts raise; a GPU-less host is ([], why)."""
    res = await transport.run(probe_argv(PROBE), timeout=timeout_s)
    if res.rc == NO_NVIDIA_SMI:
        return [], "nvidia-smi not found: no NVIDIA GPU (or driver) on this host; CPU jobs still run."
    if res.rc != 0:
        msg = (res.err.strip() or res.out.strip()).splitlines()
        why = msg[0][:200] if msg else f"exit {res.rc}"
        return [], f"nvidia-smi failed (exit {res.rc}): {why}. The driver may be missing or the GPU in a bad state."
    gpus = parse_gpu_status(res.out)
    if not gpus:
        return [], "nvidia-smi lists no GPU on this host."
    return gpus, None


def _summary(host: HostConfig, gpus: list[GpuInfo], note: str | None) -> str:
    if not gpus:
        return f"{host.name}: no GPU. {note or ''}".strip()
    parts = []
    for g in gpus:
        mem = (
            f"{g.memory_used_mib}/{g.memory_total_mib} MiB"
            if g.memory_used_mib is not None and g.memory_total_mib is not None
            else "memory n/a"
        )
        util = f"{g.utilization_pct}%" if g.utilization_pct is not None else "util n/a"
        parts.append(f"#{g.index} {g.name} {mem}, {util}, {len(g.processes)} proc")
    return f"{host.name}: {len(gpus)} GPU(s): " + "; ".join(parts) + "."


async def get_gpu_status(ctx: ToolContext, params: GpuStatusInput) -> GpuStatusOutput:
    """Live GPU state of one host, through the context's transport for it (pooled over SSH)."""
    host = ctx.host(params.host)
    t = ctx.transport(host)
    gpus, note = await query_gpu_status(t)
    if host.launcher == "slurm":  # the login node has no GPUs worth reporting: the partition's are what counts
        part = await query_slurm_gpus(t, host.slurm_settings.partition)
        extra = "This is the login node; partition_gpus shows the partition's GPUs (sinfo)."
        note = f"{note} {extra}" if note else extra
        return GpuStatusOutput(
            host=host.name, gpus=gpus, partition_gpus=part, note=note, summary=f"{host.name}: {part.summary}"
        )
    return GpuStatusOutput(host=host.name, gpus=gpus, note=note, summary=_summary(host, gpus, note))


async def probe_host(transport: Transport, host: HostConfig) -> tuple[bool | None, list[tuple[str, float]], str | None]:
    """``list_hosts(check=true)``'s probe of any host, local or remote: (reachable, [(name, GiB)], note).

    Never raises for a host problem: an unreachable host is ``reachable=False`` with the transport's reason.
    """
    try:
        gpus, note = await query_gpu_status(transport, timeout_s=max(5.0, host.connect_timeout_s))
    except CommandFailed as e:
        return True, [], str(e)
    except (HostError, OpsError) as e:  # unreachable, refused key, a config that cannot connect
        return False, [], str(e)
    return True, [(g.name, g.memory_total_gib or 0.0) for g in gpus], note
