"""SlurmLauncher's pure parts: the batch script, the observe parser, the observation mapping."""

from __future__ import annotations

from runners.config import HostConfig, SlurmConfig
from runners.jobdir import PreparedJob, job_env
from runners.launchers.slurm.commands import SEP
from runners.launchers.slurm.launcher import SlurmLauncher, parse_observe_output, to_observation
from runners.launchers.slurm.states import interpret
from runners.spec import JobSpec, Resources
from runners.states import JobState

HOST = HostConfig(
    name="della-h100",
    transport="ssh",
    address="login.example.edu",
    launcher="slurm",
    workdir="/scratch/me/llm-ops",
    env={"HF_HOME": "/scratch/me/hf", "HF_HUB_OFFLINE": "1"},
    slurm=SlurmConfig(
        partition="pli",
        account="mylab",
        gres="gpu:h100",
        time_limit="06:00:00",
        header=["module load cudatoolkit/12.4"],
    ),
)


def _job(**res) -> PreparedJob:
    spec = JobSpec(kind="command", argv=["python", "train.py"], resources=Resources(**res))
    job = PreparedJob(
        job_id="command-1-abc",
        token="tok1",
        host=HOST,
        spec=spec,
        job_dir="/scratch/me/llm-ops/jobs/command-1-abc",
        command=["python", "train.py"],
        created_at=0,
    )
    job.env = job_env(job)
    return job


def test_script_is_header_then_env_then_command():
    s = SlurmLauncher(HOST).render_script(_job(gpus=4, partition="b200"))
    lines = s.splitlines()
    assert lines[0] == "#!/bin/bash"
    sub = next(ln for ln in lines if ln.startswith("# submitted with: sbatch --parsable"))
    assert "--gres=gpu:h100:4" in sub and "--partition=b200" in sub and "--account=mylab" in sub
    assert "--time=06:00:00" in sub and "--comment=tok1" in sub
    assert lines.index("module load cudatoolkit/12.4") < lines.index(". ./env") < lines.index("python train.py")
    assert "slurm_id" in s and "SLURMD_NODENAME" in s


def _obs_text(sq_rc: int, rows: list[list[str]], jobs: list[list[str]], err: str = "") -> str:
    out = [f"Q{SEP}{sq_rc}"]
    out += [f"S{SEP}" + SEP.join(r) for r in rows]
    if err:
        out.append(f"E{SEP}{err}")
    out += [f"J{SEP}" + SEP.join(j) for j in jobs]
    return "\n".join(out) + "\n"


def test_parse_observe_output():
    row = ["12", "llmops-a", "RUNNING", "None", "n1", "tok1", "0:05", "1:00:00", "pli"]
    text = _obs_text(0, [row], [["a", "1", "12", "", "0", "n1", "0", ""], ["b", "0"]])
    p = parse_observe_output(text)
    assert p.squeue_ok and p.rows[0].job_id == "12" and p.rows[0].nodes == "n1"
    assert p.jobs["a"].native_id == "12" and p.jobs["a"].exit_code is None and not p.jobs["b"].exists
    down = parse_observe_output(_obs_text(1, [], [], err="Unable to contact slurm controller"))
    assert not down.squeue_ok and "Unable to contact" in (down.squeue_error or "")
    forgot = parse_observe_output(_obs_text(1, [], [], err="slurm_load_jobs error: Invalid job id specified"))
    assert forgot.squeue_ok and forgot.rows == []


def test_to_observation():
    q = to_observation(interpret("PENDING", reason="Resources"), "12", cancel_marker=False)
    assert q.pending and q.alive and q.verdict is None and "Resources" in (q.detail or "")
    r = to_observation(interpret("RUNNING", node="n1"), "12", cancel_marker=False)
    assert r.alive and r.detail == "running on n1" and r.verdict is None
    t = to_observation(interpret("TIMEOUT", exit_code=143), "12", cancel_marker=False)
    assert t.verdict is JobState.FAILED and t.timed_out and t.exit_code == 143
    assert "time limit" in (t.detail or "") and "SIGTERM" in (t.detail or "") and "time_limit" in (t.detail or "")
    f = to_observation(interpret("FAILED", exit_code=3), "12", cancel_marker=False)
    assert (
        f.verdict is JobState.FAILED
        and f.detail == "the command failed with exit code 3. Read its log (get_job_logs) for the error"
    )
    lost = to_observation(interpret("NODE_FAIL", exit_code=1), "12", cancel_marker=False)
    assert lost.verdict is JobState.LOST and lost.exit_code is None
    ok = to_observation(interpret("COMPLETED"), "12", cancel_marker=False)
    assert ok.verdict is JobState.SUCCEEDED and ok.exit_code == 0 and ok.detail is None
