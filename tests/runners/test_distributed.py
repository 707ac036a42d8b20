"""torchrun / srun launch argv (pure), diagnose on torchrun's failure summary, and the srun agent
script run for real as two torchrun "nodes" on localhost (static rendezvous, node ranks 0 and 1).

Why the agent script for real: on a multi-node SLURM job the head host, node rank and port
only exist on the compute node, so a bash script substitutes them; a wrong substitution
would only show on a real cluster. Here a ``scontrol`` shim answers ``localhost`` and two
agents meet exactly as two nodes would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners.diagnosis import diagnose
from runners.distributed import (
    HEAD,
    NODE_RANK,
    PORT,
    SRUN_AGENT_SCRIPT,
    DistributedLaunch,
    launch_argv,
    slurm_launch_argv,
    torchrun_argv,
)
from runners.payloads import finetune as payload_mod
from runners.payloads import shipped_files
from runners.spec import JobSpec
from tests.helpers.tiny_model import build_tiny_model, finetune_args, make_dataset

PY = "/opt/py/bin/python"
SCRIPT = ["finetune.py", "job.json"]


def test_one_process_is_plain_python():
    assert launch_argv(DistributedLaunch(), PY, SCRIPT) == [PY, *SCRIPT]
    assert launch_argv(DistributedLaunch(launcher="slurm"), PY, SCRIPT) == [PY, *SCRIPT]


def test_one_host_is_standalone_torchrun_with_per_rank_logs():
    argv = launch_argv(DistributedLaunch(nproc_per_node=4, gpus_per_node=4), PY, SCRIPT)
    assert argv[:3] == [PY, "-m", "torch.distributed.run"]
    assert "--standalone" in argv and "--nproc-per-node=4" in argv and "--max-restarts=0" in argv
    assert "--log-dir=torchrun" in argv and "--tee=3" in argv and "--local-ranks-filter=0" in argv
    assert argv[-2:] == SCRIPT
    # one SLURM node: the batch script runs on it, no srun needed
    assert launch_argv(DistributedLaunch(nproc_per_node=2, launcher="slurm"), PY, SCRIPT)[0] == PY


def test_slurm_nodes_go_through_srun_with_placeholders():
    d = DistributedLaunch(nodes=2, nproc_per_node=4, launcher="slurm", gpus_per_node=4, gres="gpu:h100")
    argv = launch_argv(d, PY, SCRIPT)
    assert argv[:5] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=1", "--gres=gpu:h100:4"]
    i = argv.index("bash")
    assert argv[i + 1] == "-c" and argv[i + 2] == SRUN_AGENT_SCRIPT
    agent = argv[i + 4 :]
    assert agent[:3] == [PY, "-m", "torch.distributed.run"]
    assert "--nnodes=2" in agent and f"--node-rank={NODE_RANK}" in agent and "--rdzv-backend=static" in agent
    assert f"--rdzv-endpoint={HEAD}:{PORT}" in agent and "--nproc-per-node=4" in agent
    assert "--standalone" not in agent and agent[-2:] == SCRIPT
    assert "scontrol show hostnames" in SRUN_AGENT_SCRIPT and "SLURM_PROCID" in SRUN_AGENT_SCRIPT


def test_two_agents_per_node_count_as_two_torchrun_nodes():
    d = DistributedLaunch(nodes=1, nproc_per_node=1, agents_per_node=2, launcher="slurm")
    assert d.world_size == 2
    argv = slurm_launch_argv(d, PY, SCRIPT)
    assert "--ntasks-per-node=2" in argv and "--nnodes=2" in argv and not any(a.startswith("--gres") for a in argv)


def test_invalid_shapes_are_refused():
    with pytest.raises(ValueError, match="SLURM"):
        DistributedLaunch(nodes=2, launcher="direct")
    with pytest.raises(ValueError, match="flag"):
        torchrun_argv(PY, ["--evil"], nproc_per_node=2)
    with pytest.raises(ValueError, match="endpoint"):
        torchrun_argv(PY, SCRIPT, nproc_per_node=2, nnodes=2)
    with pytest.raises(ValueError, match=r"must run finetune\.py"):
        JobSpec(kind="finetune", payload="finetune", argv=["python", "other.py"])
    spec = JobSpec(
        kind="finetune", payload="finetune", argv=launch_argv(DistributedLaunch(nproc_per_node=2), PY, SCRIPT)
    )
    assert spec.argv is not None and spec.payload == "finetune"


TORCHRUN_FAILURE = """\
[default0]:step 2/10  loss 11.84
W1126 torch/distributed/elastic/multiprocessing/api.py:1028] Sending process 13820 closing signal SIGTERM
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
finetune.py FAILED
------------------------------------------------------------
Failures:
[1]:
  time      : 2026-11-26_20:42:10
  host      : node-a
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 13820)  (SIGTERM)
  error_file: <N/A>
  traceback : Signal 15 (SIGTERM) received by PID 13820
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-11-26_20:42:09
  host      : node-b
  rank      : 3 (local_rank: 1)
  exitcode  : 1 (pid: 13821)
  error_file: /w/jobs/x/torchrun/agent1/none_x/attempt_0/1/error.json
  traceback : Traceback (most recent call last):
    File "/w/jobs/x/finetune.py", line 8, in <module>
      raise RuntimeError("boom")
  RuntimeError: boom
============================================================
"""


def test_diagnose_names_the_root_cause_rank():
    err = diagnose(TORCHRUN_FAILURE, 1)
    assert err.kind == "rank_failure"
    assert err.line == "rank 3 (local rank 1 on node-b) failed first: RuntimeError: boom"
    assert "torchrun/" in err.hint
    oom = TORCHRUN_FAILURE.replace("RuntimeError: boom", "torch.OutOfMemoryError: CUDA out of memory. Tried 2 GiB")
    e2 = diagnose(oom, 1)
    assert e2.kind == "cuda_oom" and e2.line.startswith("rank 3 ") and e2.hint.startswith("On rank 3:")
    killed = TORCHRUN_FAILURE.replace(
        "error_file: /w/jobs/x/torchrun/agent1/none_x/attempt_0/1/error.json", "error_file: <N/A>"
    ).split("  traceback : Traceback")[0]
    killed += "  traceback : Signal 9 (SIGKILL) received by PID 13821\n=====\n"
    assert "Signal 9 (SIGKILL)" in diagnose(killed, 1).line


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("tiny-dist")
    return {"model": build_tiny_model(d / "model"), "alpaca": make_dataset(d / "alpaca.jsonl", "alpaca")}


def test_two_node_rendezvous_on_localhost(tiny, tmp_path: Path):
    """Two agents (node ranks 0 and 1, one process each) meet through the srun agent script."""
    job = tmp_path / "job"
    job.mkdir()
    src = Path(payload_mod.__file__).parent
    for name in shipped_files("finetune"):
        (job / f"{name}.py").write_bytes((src / f"{name}.py").read_bytes())
    cfg = finetune_args(tiny["model"], tiny["alpaca"], max_steps=6, save_steps=0, per_device_batch_size=2,
                        gradient_accumulation_steps=1, strategy="ddp")  # fmt: skip
    (job / "job.json").write_text(json.dumps({"payload_config": cfg}))
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "scontrol").write_text("#!/bin/sh\necho localhost\necho otherhost\n")
    (shim / "scontrol").chmod(0o755)
    d = DistributedLaunch(nodes=2, nproc_per_node=1, launcher="slurm")
    argv = slurm_launch_argv(d, sys.executable, SCRIPT)
    agent_cmd = argv[argv.index("bash") :]
    env = {
        **os.environ,
        "PATH": f"{shim}:{os.environ['PATH']}",
        "SLURM_JOB_NODELIST": "localhost,otherhost",
        "SLURM_JOB_ID": str(40000 + os.getpid() % 9000),
        "HF_HUB_OFFLINE": "1",
        "WANDB_DISABLED": "true",
    }
    # Each agent writes to its own file, not a pipe: a pipe read only after the other agent has
    # finished can fill (64 KiB) and stop that agent mid-collective, which hangs both. Each
    # simulated node gets one thread, as a real node's agent would have its own cores.
    logs = [tmp_path / f"agent{r}.log" for r in (0, 1)]
    procs = []
    for r, log in zip((0, 1), logs, strict=True):
        agent_env = {**env, "SLURM_PROCID": str(r), "OMP_NUM_THREADS": "1"}
        with log.open("wb") as fh:
            procs.append(subprocess.Popen(agent_cmd, cwd=job, env=agent_env, stdout=fh, stderr=subprocess.STDOUT,
                                          start_new_session=True))  # fmt: skip
    deadline = time.monotonic() + 240
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:  # torchrun forwards SIGTERM to its workers, which sit in sessions of their own
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    outs = [f"--- agent {r} ---\n" + log.read_text(errors="replace")[-4000:] for r, log in enumerate(logs)]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
    start = rows[0]
    assert start["event"] == "start" and start["world_size"] == 2 and start["rank"] == 0
    assert {r.get("rank") for r in rows} == {0}  # only global rank 0 writes metrics
    assert rows[-1]["event"] == "end"
    assert (job / "outputs" / "adapter" / "adapter_config.json").exists()
    assert sorted(p.name for p in (job / "torchrun").iterdir()) == ["agent0", "agent1"]  # per-node rank logs
