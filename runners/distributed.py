"""Multi-process launch of a payload through torchrun, as pure argv builders.

Why torchrun (``python -m torch.distributed.run`` with the host's interpreter): it is
PyTorch's own launcher, so RANK / LOCAL_RANK / WORLD_SIZE / MASTER_ADDR are set the way
the Trainer, accelerate, FSDP and DeepSpeed expect; it tears every rank down when one
fails, and it names the failing rank ("Root Cause (first observed failure)", with the
rank's own error file) in its summary, which :func:`runners.diagnosis.diagnose` reads.
Nothing here starts a process: these functions return argv lists that end up in the
job's run.sh (``shlex.join``), so a dry run shows exactly what will run.

Two shapes:

* **One host** (direct launcher, or one SLURM node): ``torchrun --standalone
  --nproc-per-node=N``; the standalone c10d rendezvous picks a free port itself, so two
  jobs on one host never collide.
* **SLURM, several nodes**: ``srun --nodes=M --ntasks-per-node=K`` starts one torchrun
  agent per task; each agent is a torchrun "node" with ``--node-rank=$SLURM_PROCID``
  and a static rendezvous on the first host of the allocation (``scontrol show
  hostnames $SLURM_JOB_NODELIST``, first line), at a port derived from the SLURM job
  id. Those three values exist only on the compute node, so the argv carries the
  placeholders :data:`HEAD`, :data:`NODE_RANK` and :data:`PORT`, and a constant bash
  script (:data:`SRUN_AGENT_SCRIPT`, values only as positional parameters) substitutes
  them and ``exec``s the agent. K is 1 in production (one agent per node drives all
  its GPUs); the single-node test cluster uses K=2 to run the same wiring for real.

Logs: every agent writes each rank's stdout/stderr under ``torchrun/`` in the job
directory (``--log-dir``, ``--tee=3``) and shows only local rank 0 on the console
(``--local-ranks-filter=0``), so output.log reads like a one-process run while every
rank's full log stays on disk.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "HEAD",
    "LOG_DIR",
    "NODE_RANK",
    "PORT",
    "SRUN_AGENT_SCRIPT",
    "DistributedLaunch",
    "launch_argv",
    "slurm_launch_argv",
    "srun_argv",
    "torchrun_argv",
]

HEAD = "@LLMOPS_HEAD@"
NODE_RANK = "@LLMOPS_NODE_RANK@"
PORT = "@LLMOPS_PORT@"
LOG_DIR = "torchrun"
PORT_BASE, PORT_SPAN = 20000, 20000  # static rendezvous port = base + SLURM_JOB_ID % span

# $1..: the agent's argv with placeholders. Runs once per srun task, on its node.
SRUN_AGENT_SCRIPT = rf"""
head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n 1)
if [ -z "$head" ]; then echo "[llm-ops] cannot read the first node of '$SLURM_JOB_NODELIST'" >&2; exit 96; fi
case ${{SLURM_PROCID:-}} in ''|*[!0-9]*) echo "[llm-ops] SLURM_PROCID is not set: run under srun" >&2; exit 96 ;; esac
port=$(( {PORT_BASE} + ${{SLURM_JOB_ID:-0}} % {PORT_SPAN} ))
args=()
for a in "$@"; do
  a=${{a//{HEAD}/$head}}; a=${{a//{NODE_RANK}/$SLURM_PROCID}}; a=${{a//{PORT}/$port}}
  args+=("$a")
done
exec "${{args[@]}}"
"""


class DistributedLaunch(BaseModel):
    """How many torchrun agents and processes a job runs (validated before any argv is built)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    nodes: int = Field(1, ge=1, le=64, description="Hosts (SLURM nodes) the job spans.")
    nproc_per_node: int = Field(1, ge=1, le=64, description="Processes (ranks) per torchrun agent: its GPUs.")
    agents_per_node: int = Field(1, ge=1, le=8, description="torchrun agents per node (1 except in tests).")
    launcher: Literal["direct", "slurm"] = "direct"
    gpus_per_node: int = Field(0, ge=0, le=64, description="For srun's --gres (0: CPU ranks, gloo).")
    gres: str = Field("gpu", description="GRES name for srun, as the host's [slurm] table says.")

    @property
    def agents(self) -> int:
        return self.nodes * self.agents_per_node

    @property
    def world_size(self) -> int:
        return self.agents * self.nproc_per_node

    @model_validator(mode="after")
    def _shape(self) -> DistributedLaunch:
        if self.launcher == "direct" and self.agents > 1:
            raise ValueError("a direct (non-SLURM) host runs one torchrun agent; several nodes need SLURM")
        return self


def torchrun_argv(
    interpreter: str,
    script: list[str],
    *,
    nproc_per_node: int,
    nnodes: int = 1,
    node_rank: str | int | None = None,
    rdzv_endpoint: str | None = None,
    rdzv_id: str | None = None,
    log_dir: str = LOG_DIR,
) -> list[str]:
    """``python -m torch.distributed.run ... script...`` (standalone when ``rdzv_endpoint`` is None).

    A static rendezvous (``--node-rank`` + endpoint) and not c10d across nodes: node rank 0
    is then the first node, which hosts the store, so global rank 0 (the one that writes
    metrics and outputs) is always on the node whose hostname the job reports.
    """
    if not script or script[0].startswith("-"):
        raise ValueError("the script must be a file name, not a flag")
    argv = [interpreter, "-m", "torch.distributed.run"]
    if rdzv_endpoint is None:
        if nnodes != 1:
            raise ValueError("several nodes need a rendezvous endpoint")
        argv += ["--standalone", "--nnodes=1"]
    else:
        if node_rank is None:
            raise ValueError("a static rendezvous needs the node rank")
        argv += [
            f"--nnodes={nnodes}",
            f"--node-rank={node_rank}",
            "--rdzv-backend=static",
            f"--rdzv-endpoint={rdzv_endpoint}",
        ]
        if rdzv_id:
            argv.append(f"--rdzv-id={rdzv_id}")
    argv += [
        f"--nproc-per-node={nproc_per_node}",
        "--max-restarts=0",
        f"--log-dir={log_dir}",
        "--tee=3",
        "--local-ranks-filter=0",
    ]
    return argv + script


def slurm_launch_argv(d: DistributedLaunch, interpreter: str, script: list[str]) -> list[str]:
    """``srun ... bash -c SRUN_AGENT_SCRIPT torchrun-argv``: one torchrun agent per SLURM task.

    ``--kill-on-bad-exit=1``: an agent that fails stops the others at once instead of
    leaving them blocked in a collective until a timeout.
    """
    agent = torchrun_argv(
        interpreter,
        script,
        nproc_per_node=d.nproc_per_node,
        nnodes=d.agents,
        node_rank=NODE_RANK,
        rdzv_endpoint=f"{HEAD}:{PORT}",
        log_dir=f"{LOG_DIR}/agent{NODE_RANK}",
    )
    argv = srun_argv(d.nodes, d.agents_per_node, d.gpus_per_node, d.gres)
    return [*argv, "bash", "-c", SRUN_AGENT_SCRIPT, "llm-ops-torchrun", *agent]


def srun_argv(nodes: int, tasks_per_node: int, gpus_per_node: int = 0, gres: str = "gpu") -> list[str]:
    """``srun --nodes=M --ntasks-per-node=K --kill-on-bad-exit=1 [--gres=G:N]``: one task per agent.

    Shared by the torchrun agents of a fine-tune and the per-node ``vllm serve`` processes of a
    multi-node server: a task that fails stops the others at once (``--kill-on-bad-exit``)
    instead of leaving them blocked in a collective until a timeout.
    """
    argv = ["srun", f"--nodes={nodes}", f"--ntasks-per-node={tasks_per_node}", "--kill-on-bad-exit=1"]
    if gpus_per_node:
        argv.append(f"--gres={gres}:{gpus_per_node}")
    return argv


def launch_argv(d: DistributedLaunch, interpreter: str, script: list[str]) -> list[str]:
    """The job's command for ``d``: plain ``python script`` for one process, else torchrun (under srun on SLURM)."""
    if d.world_size == 1:
        return [interpreter, *script]
    if d.launcher == "slurm" and d.agents > 1:
        return slurm_launch_argv(d, interpreter, script)
    return torchrun_argv(interpreter, script, nproc_per_node=d.nproc_per_node)
