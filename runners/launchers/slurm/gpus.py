"""GPUs of a SLURM partition, from one ``sinfo`` call: a pure parser and its argv.

Why: on a SLURM host the machine we reach (the login node) has no GPUs, so
``nvidia-smi`` there says nothing useful. What an agent needs to know before it
submits is the partition's GPUs: how many exist, how many are allocated, how many
are idle now, and how many sit on nodes that are down or drained.

``sinfo -N -O`` prints one line per node with its ``Gres`` (``gpu:h100:4(S:0-1)``)
and ``GresUsed`` (``gpu:h100:2(IDX:0-1)``); the fields are separated by ``\\x1f``
(never in SLURM's values). GRES strings hold commas inside parentheses
(``IDX:0,2``), so they are split with the parentheses in mind.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from runners.errors import InvalidInput, SchedulerError

if TYPE_CHECKING:
    from runners.transports.base import Transport

__all__ = [
    "SINFO_GPU_FIELDS",
    "NodeGpus",
    "SlurmGpuStatus",
    "gpu_count",
    "query_slurm_gpus",
    "sinfo_gpus_argv",
    "slurm_gpu_status",
    "split_gres",
]

SEP = "\x1f"
SINFO_GPU_FIELDS = ("NodeList", "Gres", "GresUsed", "StateLong", "CPUsState", "Memory", "AllocMem")
_PART_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
# States in which a node's GPUs cannot be given to a new job.
_UNUSABLE = ("down", "drain", "fail", "maint", "reserved", "inval", "future", "power", "unknown", "not_responding")


def sinfo_gpus_argv(partition: str | None) -> list[str]:
    """``sinfo --noheader --Node [--partition=P] --Format=...``: one line per node, ``\\x1f``-separated."""
    argv = ["sinfo", "--noheader", "--Node", "--Format=" + ",".join(f"{f}:{SEP}" for f in SINFO_GPU_FIELDS)]
    if partition is not None:
        if partition.startswith("-") or not _PART_RE.fullmatch(partition):
            raise InvalidInput(f"{partition!r} is not a valid partition name.", None)
        argv.append(f"--partition={partition}")
    return argv


def split_gres(gres: str) -> list[str]:
    """``gpu:a100:2(IDX:0,2),mps:0`` → ``['gpu:a100:2(IDX:0,2)', 'mps:0']`` (commas in parens kept)."""
    out, depth, cur = [], 0, []
    for ch in gres:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth = max(0, depth - 1)
        if ch == "," and depth == 0:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    if cur:
        out.append("".join(cur))
    return [s.strip() for s in out if s.strip() and s.strip() not in ("(null)", "N/A")]


def gpu_count(gres: str) -> tuple[int, str | None]:
    """GPUs in one node's GRES string, and their type when SLURM names one (``h100``)."""
    total, kind = 0, None
    for item in split_gres(gres):
        base = item.split("(", 1)[0]
        parts = base.split(":")
        if parts[0] != "gpu":
            continue
        if len(parts) == 2 and parts[1].isdigit():
            total += int(parts[1])
        elif len(parts) >= 3 and parts[-1].isdigit():
            total += int(parts[-1])
            kind = kind or parts[1]
        elif len(parts) == 2:  # 'gpu:h100' with no count means one
            total += 1
            kind = kind or parts[1]
        else:  # bare 'gpu'
            total += 1
    return total, kind


class NodeGpus(BaseModel):
    node: str
    state: str = Field(description="SLURM's node state (idle, mixed, allocated, drained, down*...).")
    gpu_type: str | None = None
    total: int
    allocated: int
    usable: bool = Field(description="False when the node is down, drained or otherwise closed to new jobs.")
    cpus_idle: int | None = None
    cpus_total: int | None = None


class SlurmGpuStatus(BaseModel):
    """A partition's GPUs: what exists, what is taken, what a new job could get now."""

    partition: str | None
    total: int = Field(description="GPUs on the partition's nodes, whatever their state.")
    allocated: int = Field(description="GPUs held by running jobs.")
    idle: int = Field(description="GPUs free on nodes that accept jobs: what a new job could get now.")
    unavailable: int = Field(description="Free GPUs on nodes that are down, drained or reserved.")
    gpu_types: list[str] = Field(default_factory=list)
    nodes: list[NodeGpus] = Field(default_factory=list)
    summary: str


def slurm_gpu_status(sinfo_output: str, partition: str | None = None) -> SlurmGpuStatus:
    """Parse :func:`sinfo_gpus_argv` output; a node listed twice (two partitions) counts once."""
    seen: dict[str, NodeGpus] = {}
    for line in sinfo_output.splitlines():
        if not line.strip():
            continue
        f = [x.strip() for x in line.split(SEP)]
        if len(f) < len(SINFO_GPU_FIELDS):
            raise ValueError(f"sinfo line has {len(f)} fields, expected {len(SINFO_GPU_FIELDS)}: {line[:200]!r}")
        node, gres, used, state, cpus = f[0], f[1], f[2], f[3].lower(), f[4]
        if node in seen:
            continue
        total, kind = gpu_count(gres)
        alloc, _ = gpu_count(used)
        ci = ct = None
        m = re.fullmatch(r"(\d+)/(\d+)/(\d+)/(\d+)", cpus)
        if m:
            ci, ct = int(m.group(2)), int(m.group(4))
        usable = not any(s in state for s in _UNUSABLE) and not state.endswith("*")
        seen[node] = NodeGpus(
            node=node,
            state=state,
            gpu_type=kind,
            total=total,
            allocated=min(alloc, total),
            usable=usable,
            cpus_idle=ci,
            cpus_total=ct,
        )
    nodes = list(seen.values())
    total = sum(n.total for n in nodes)
    allocated = sum(n.allocated for n in nodes)
    idle = sum(n.total - n.allocated for n in nodes if n.usable)
    unavailable = total - allocated - idle
    types = sorted({n.gpu_type for n in nodes if n.gpu_type})
    where = f"partition {partition}" if partition else "the cluster"
    kind = f" {'/'.join(types)}" if types else ""
    summary = (
        f"{where}: {total}{kind} GPUs on {len(nodes)} node(s); {allocated} allocated, {idle} idle"
        + (f", {unavailable} on nodes that are down or drained" if unavailable else "")
        + "."
    )
    return SlurmGpuStatus(
        partition=partition,
        total=total,
        allocated=allocated,
        idle=idle,
        unavailable=unavailable,
        gpu_types=types,
        nodes=nodes,
        summary=summary,
    )


async def query_slurm_gpus(transport: Transport, partition: str | None, timeout_s: float = 30.0) -> SlurmGpuStatus:
    """One ``sinfo`` through the host's transport (login node), parsed.

    A failed sinfo raises :class:`SchedulerError` (never an empty, "no GPUs" answer); a
    partition with no nodes is an error that lists the partitions that exist.
    """
    res = await transport.run(sinfo_gpus_argv(partition), timeout=timeout_s)
    if res.rc != 0:
        raise SchedulerError(
            f"sinfo failed (exit {res.rc}): {res.err.strip()[:200] or 'no error output'}.",
            "Check the cluster (scontrol ping) and that SLURM's commands are on the login node's PATH.",
        )
    st = slurm_gpu_status(res.out, partition)
    if not st.nodes and partition is not None:
        parts = await transport.run(["sinfo", "--noheader", "--format=%P"], timeout=timeout_s)
        names = [p.rstrip("*") for p in parts.out.split()] if parts.rc == 0 else []
        raise SchedulerError(
            f"Partition {partition!r} has no nodes on this cluster.",
            f"Use one of: {', '.join(names) or '(sinfo listed none)'} ([slurm] partition).",
        )
    return st
