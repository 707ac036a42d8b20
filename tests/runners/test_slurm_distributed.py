"""A distributed fine-tune on the real single-node SLURM: sbatch --ntasks-per-node=2, srun starts two
torchrun agents, each a torchrun "node" (static rendezvous on the allocation's first host).

Why two agents on one node: the test cluster has one node, and two tasks on it run the very
srun / scontrol / SLURM_PROCID / rendezvous wiring a two-node job runs; only the host names
differ. CPU ranks over gloo, the tiny Llama, a few steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from runners.config import Config, HostConfig, SlurmConfig
from runners.engine import JobEngine
from runners.states import JobState
from tests.helpers.ci import unavailable
from tests.helpers.tiny_model import build_tiny_model, make_dataset
from tools.finetune.inputs import FinetuneInput
from tools.finetune.plan import plan_finetune
from tools.finetune.spec import build_finetune_spec

pytestmark = pytest.mark.anyio


async def test_two_tasks_srun_torchrun_wiring_runs_for_real(slurm_cluster, tmp_path: Path):
    if slurm_cluster.cpus < 2:
        unavailable("the test cluster needs 2 CPUs for 2 tasks")
    model = build_tiny_model(tmp_path / "model")
    data = make_dataset(tmp_path / "alpaca.jsonl", "alpaca")
    host = HostConfig(
        name="slurm-local",
        launcher="slurm",
        workdir=str(tmp_path / "work"),
        python=sys.executable,
        # One thread per task: the test cluster binds no CPUs (TaskPlugin=task/none), and two agents
        # of one process each would otherwise both run as many OpenMP threads as the node has cores.
        env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        slurm=SlurmConfig(time_limit="00:10:00"),
    )
    p = FinetuneInput(
        model=str(model),
        dataset=str(data),
        gpus=0,
        processes_per_node=2,
        max_steps=6,
        max_seq_length=64,
        learning_rate=5e-3,
        save_steps=0,
        per_device_batch_size=2,
        gradient_accumulation_steps=1,
    )
    plan, upload = plan_finetune(p, host)
    assert plan.world_size == 2 and plan.strategy == "ddp" and upload is not None
    spec = build_finetune_spec(p, host, plan, "dataset.jsonl", None, agents_per_node=2)
    assert spec.argv is not None and spec.argv[0] == "srun" and spec.resources.tasks_per_node == 2
    engine = JobEngine(Config(hosts={host.name: host}, default_host=host.name), tmp_path / "state", cancel_grace_s=2.0)
    try:
        r = await engine.submit(spec, uploads={"dataset.jsonl": upload.read_bytes()})
        view, reached = await engine.wait(r.job_id, "finished", 300)
        d = Path(r.job_dir)
        log = (d / "output.log").read_text()
        assert reached and view.state is JobState.SUCCEEDED, (view, log[-3000:])
    finally:
        await engine.aclose()
    assert "--ntasks-per-node=2" in (d / "run.sh").read_text()
    rows = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["world_size"] == 2 and {x.get("rank") for x in rows} == {0}
    assert rows[0]["cpu_threads"] == 1  # the host's env reached the srun tasks' workers
    assert rows[-1]["event"] == "end" and rows[-1]["steps"] == 6
    assert (d / "outputs" / "adapter" / "adapter_config.json").exists()
    assert sorted(p.name for p in (d / "torchrun").iterdir()) == ["agent0", "agent1"]
