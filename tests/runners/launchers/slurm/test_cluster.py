"""The SLURM launcher against a real single-node SLURM, through a local transport and
through SSH to the same machine (the login-node case)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import uuid
from pathlib import Path

import pytest

from runners.config import Config, HostConfig, SlurmConfig
from runners.engine import JobEngine
from runners.errors import HostError, SchedulerError
from runners.factories import make_transport
from runners.jobdir import PreparedJob
from runners.launchers.slurm.commands import parse_squeue, squeue_by_name_argv
from runners.launchers.slurm.gpus import sinfo_gpus_argv, slurm_gpu_status
from runners.launchers.slurm.launcher import SLURM_ID, SUBMITTING, SlurmLauncher, job_name_for
from runners.spec import JobSpec, Resources
from runners.states import JobState
from runners.transports.local import LocalTransport

pytestmark = pytest.mark.anyio

HOST_ENV = {"HF_HOME": "/tmp/llm-ops-hf", "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}


def slurm_host(kind: str, request: pytest.FixtureRequest, workdir: Path, **slurm: object) -> HostConfig:
    cfg = SlurmConfig(time_limit="00:10:00", header=["export LLM_OPS_HEADER_RAN=yes"], **slurm)
    common = {
        "launcher": "slurm",
        "workdir": str(workdir),
        "allow_scripts": True,
        "env": HOST_ENV,
        "slurm": cfg,
        "secrets": ["LLM_OPS_TEST_SECRET"],
    }
    if kind == "local":
        return HostConfig(name="slurm-local", **common)
    sshd = request.getfixturevalue("sshd")
    return sshd.host_config("slurm-ssh", **common)


@pytest.fixture(params=["local", "ssh"])
def host(request: pytest.FixtureRequest, slurm_cluster, tmp_path: Path) -> HostConfig:
    return slurm_host(request.param, request, tmp_path / "work")


def new_engine(host: HostConfig, state: Path, **kw) -> JobEngine:
    return JobEngine(
        Config(hosts={host.name: host}, default_host=host.name),
        state,
        environ={"LLM_OPS_TEST_SECRET": "s3cr3t-slurm-7"},
        cancel_grace_s=2.0,
        **kw,
    )


@pytest.fixture
async def engine(host: HostConfig, tmp_path: Path):
    eng = new_engine(host, tmp_path / "state")
    try:
        yield eng
    finally:
        await eng.aclose()


def cmd(script: str, **res) -> JobSpec:
    return JobSpec(kind="command", argv=["bash", "-c", script], resources=Resources(**res))


async def until(engine: JobEngine, job_id: str, what: str, timeout: float = 60):
    view, reached = await engine.wait(job_id, what, timeout)
    assert reached, view
    return view


async def scancel_all(engine: JobEngine, *job_ids: str) -> None:
    for j in job_ids:
        with contextlib.suppress(Exception):  # cleanup only: never hide the test's own failure
            await engine.cancel(j)


async def test_submit_runs_on_a_gpu_node_and_succeeds(engine: JobEngine, slurm_cluster):
    script = (
        'echo "gpus=$CUDA_VISIBLE_DEVICES hf=$HF_HOME off=$HF_HUB_OFFLINE wandb=$WANDB_MODE '
        'header=$LLM_OPS_HEADER_RAN sid=$SLURM_JOB_ID"; sleep 2; exit 0'
    )
    r = await engine.submit(cmd(script, gpus=1))
    assert r.created and r.job is not None and r.job.state in (JobState.QUEUED, JobState.RUNNING)
    running = await until(engine, r.job_id, "running")
    assert running.native_id and running.native_id.isdigit()
    v = await until(engine, r.job_id, "finished")
    assert (v.state, v.exit_code) == (JobState.SUCCEEDED, 0), v
    d = Path(r.job_dir)
    for name in ("job.json", "run.sh", "env", "output.log", "exit_code", SLURM_ID, "node", "outputs"):
        assert (d / name).exists(), name
    assert stat.S_IMODE((d / "env").stat().st_mode) == 0o600
    assert (d / SLURM_ID).read_text().strip() == v.native_id
    assert (d / "node").read_text().strip() == slurm_cluster.node
    log = (d / "output.log").read_text()
    assert "gpus=0 " in log  # SLURM gave the job one of the two GRES GPUs
    assert "hf=/tmp/llm-ops-hf off=1 wandb=offline header=yes" in log
    assert f"sid={v.native_id}" in log
    assert "s3cr3t-slurm-7" not in (d / "run.sh").read_text()


async def test_running_job_records_its_node(engine: JobEngine, slurm_cluster):
    r = await engine.submit(cmd("sleep 20"))
    try:
        v = await until(engine, r.job_id, "running")
        for _ in range(50):
            v = await engine.status(r.job_id)
            if v.reason:
                break
            await asyncio.sleep(0.1)
        assert v.reason == f"running on {slurm_cluster.node}", v
    finally:
        await scancel_all(engine, r.job_id)


@pytest.mark.parametrize("code", [1, 7, 255])
async def test_failure_exit_codes(engine: JobEngine, code: int):
    r = await engine.submit(cmd(f"echo about to fail; exit {code}"))
    v = await until(engine, r.job_id, "finished")
    assert (v.state, v.exit_code) == (JobState.FAILED, code), v
    assert f"exit code {code}" in (v.reason or "")


async def test_queued_with_a_reason_then_cancel_pending_and_running(engine: JobEngine, slurm_cluster):
    gpus = slurm_cluster.gpus
    first = await engine.submit(cmd("sleep 120", gpus=gpus))
    second = await engine.submit(cmd("sleep 120", gpus=gpus))
    try:
        await until(engine, first.job_id, "running")
        v2 = await engine.status(second.job_id)
        for _ in range(30):
            if v2.reason and ("Resources" in v2.reason or "Priority" in v2.reason):
                break
            await asyncio.sleep(0.2)
            v2 = await engine.status(second.job_id)
        assert v2.state is JobState.QUEUED, v2
        assert "Resources" in (v2.reason or "") or "Priority" in (v2.reason or ""), v2
        c2 = await engine.cancel(second.job_id)  # pending: leaves the queue at once
        for _ in range(50):
            if c2.state is JobState.CANCELLED:
                break
            await asyncio.sleep(0.1)
            c2 = await engine.status(second.job_id)
        assert c2.state is JobState.CANCELLED and c2.exit_code is None, c2
        await engine.cancel(first.job_id)
        c1 = await until(engine, first.job_id, "finished", 30)
        assert c1.state is JobState.CANCELLED, c1
        assert c1.exit_code == 143  # the trap saw SLURM's SIGTERM
    finally:
        await scancel_all(engine, first.job_id, second.job_id)


async def test_bad_partition_is_a_clear_error_listing_the_partitions(host: HostConfig, tmp_path: Path, slurm_cluster):
    eng = new_engine(host, tmp_path / "state2")
    try:
        with pytest.raises(SchedulerError) as e:
            await eng.submit(cmd("true", partition="nosuchpart"))
        msg = str(e.value)
        assert "nosuchpart" in msg and "invalid partition" in msg.lower()
        for p in slurm_cluster.partitions:
            assert p in e.value.message
        assert f"{slurm_cluster.default_partition} (default)" in e.value.message
        jobs = await eng.list_jobs()
        assert [j.state for j in jobs] == [JobState.FAILED]
    finally:
        await eng.aclose()


async def test_second_partition_and_dry_run_script(engine: JobEngine, host: HostConfig, slurm_cluster):
    other = slurm_cluster.partitions[1]
    dry = await engine.submit(cmd("echo hi", partition=other, gpus=1, time_limit_s=90), dry_run=True)
    s = dry.run_script or ""
    assert s.startswith("#!/bin/bash\n")
    assert f"--partition={other}" in s and "--gres=gpu:1" in s and "--time=00:02:00" in s
    assert "export LLM_OPS_HEADER_RAN=yes" in s
    assert s.index("export LLM_OPS_HEADER_RAN=yes") < s.index(". ./env")
    assert not Path(dry.job_dir).exists()  # nothing was written or submitted
    r = await engine.submit(cmd("echo on $SLURM_JOB_PARTITION", partition=other))
    v = await until(engine, r.job_id, "finished")
    assert v.state is JobState.SUCCEEDED
    assert f"on {other}" in Path(r.job_dir, "output.log").read_text()


async def test_one_squeue_call_for_many_jobs(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch, slurm_cluster
):
    # Local transport only: the counting squeue shim is on this process's PATH.
    host = slurm_host("local", request, tmp_path / "work")
    shim = tmp_path / "shim"
    shim.mkdir()
    calls = tmp_path / "squeue.calls"
    (shim / "squeue").write_text(f'#!/bin/bash\necho "$*" >> {calls}\nexec /usr/bin/squeue "$@"\n')
    (shim / "squeue").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    eng = new_engine(host, tmp_path / "state3")
    try:
        ids = [(await eng.submit(cmd("exit 0"))).job_id for _ in range(12)]
        for j in ids:  # let them end (each status is its own call here)
            await until(eng, j, "finished")
        calls.write_text("")
        listing = await eng.list_jobs()
        assert len(listing) == 12
        views, _ = await eng.refresh([eng.catalog.get(j) for j in ids])  # type: ignore[misc]
        assert {v.state for v in views} == {JobState.SUCCEEDED}
        lines = [ln for ln in calls.read_text().splitlines() if ln]
        # list_jobs + refresh: one squeue each, for all twelve jobs.
        assert len(lines) <= 2, lines
    finally:
        await eng.aclose()


async def test_lost_sbatch_reply_is_resolved_without_a_second_submission(
    host: HostConfig, tmp_path: Path, slurm_cluster
):
    """The reply to sbatch is lost (the transport raises after sbatch ran): the job is found, not resubmitted."""

    class LosesSbatchReply:
        def __init__(self, inner):
            self.inner = inner
            self.host = inner.host
            self.lost = 0

        async def run(self, argv, **kw):
            res = await self.inner.run(argv, **kw)
            if "llm-ops-sbatch" in argv and self.lost == 0:
                self.lost += 1
                raise HostError("connection lost while waiting for sbatch's reply", None)
            return res

        def __getattr__(self, name):
            return getattr(self.inner, name)

    holder: dict[str, LosesSbatchReply] = {}

    def factory(h: HostConfig):
        holder["t"] = LosesSbatchReply(make_transport(h))
        return holder["t"]

    eng = new_engine(host, tmp_path / "state4", transport_factory=factory)
    try:
        r = await eng.submit(cmd("sleep 1; exit 0"))
        assert holder["t"].lost == 1
        v = await until(eng, r.job_id, "finished")
        assert v.state is JobState.SUCCEEDED and v.native_id
        res = await holder["t"].inner.run(squeue_by_name_argv(job_name_for(r.job_id)))
        assert [row.job_id for row in parse_squeue(res.out)] == [v.native_id]  # exactly one SLURM job
    finally:
        await eng.aclose()


async def test_ambiguous_start_is_looked_up_by_token(slurm_cluster, tmp_path: Path):
    """An earlier attempt left its marker and no id (its shell died after sbatch): start finds the job."""
    host = HostConfig(
        name="slurm-local", launcher="slurm", workdir=str(tmp_path / "w"), slurm=SlurmConfig(time_limit="00:05:00")
    )
    t = LocalTransport(host)
    launcher = SlurmLauncher(host)
    u = uuid.uuid4().hex  # ids and tokens are unique per job, as the engine makes them
    d = tmp_path / "w" / "jobs" / f"command-amb-{u[:8]}"
    d.mkdir(parents=True)
    job = PreparedJob(
        job_id=f"command-amb-{u[:8]}",
        token=f"tok-{u}",
        host=host,
        spec=cmd("sleep 5"),
        job_dir=str(d),
        command=["sleep", "5"],
        created_at=0.0,
    )
    (d / "env").write_text("")
    (d / "run.sh").write_text(launcher.render_script(job))
    first = await launcher.start(t, job)
    (d / SLURM_ID).unlink()
    (d / SUBMITTING).write_text("")
    again = await launcher.start(t, job)
    assert again == first
    assert (d / SLURM_ID).read_text().strip() == first
    assert not (d / SUBMITTING).exists()
    # A marker with no job behind it (sbatch never ran): SLURM does not know the token, so it submits.
    job2 = PreparedJob(
        job_id=f"command-amb2-{u[:8]}",
        token=f"tok2-{u}",
        host=host,
        spec=cmd("true"),
        job_dir=str(d),
        command=["true"],
        created_at=0.0,
    )
    (d / SLURM_ID).unlink()
    (d / SUBMITTING).write_text("")
    third = await launcher.start(t, job2)
    assert third != first
    await t.run(["scancel", "--", first, third])


async def test_slurmctld_restarted_mid_job_status_recovers(engine: JobEngine, slurm_cluster):
    r = await engine.submit(cmd("sleep 25; exit 3"))  # squeue needs ~9 s to give up on a dead controller
    try:
        await until(engine, r.job_id, "running")
        with slurm_cluster.controller_down():
            v = await engine.status(r.job_id)
            assert v.state is JobState.RUNNING and v.stale, v  # unknown is not lost
            assert "did not answer" in (v.note or "")
        v = await engine.status(r.job_id)
        assert v.state is JobState.RUNNING and not v.stale, v
        v = await until(engine, r.job_id, "finished")
        assert (v.state, v.exit_code) == (JobState.FAILED, 3), v
    finally:
        slurm_cluster.ensure_up()


async def test_server_restarted_mid_job_loses_nothing(host: HostConfig, tmp_path: Path, slurm_cluster):
    state = tmp_path / "state5"
    first = new_engine(host, state)
    queued = await first.submit(cmd("sleep 60", gpus=slurm_cluster.gpus))
    ok = await first.submit(cmd("sleep 3; echo done", gpus=0))
    await until(first, ok.job_id, "running")
    first.catalog.close()  # the server dies: no clean shutdown of its transports or jobs
    second = new_engine(host, state)
    try:
        v = await second.status(ok.job_id)
        assert v.state in (JobState.RUNNING, JobState.SUCCEEDED), v
        v = await until(second, ok.job_id, "finished")
        assert ok.job is not None
        assert v.state is JobState.SUCCEEDED and v.native_id == ok.job.native_id
        q = await second.status(queued.job_id)
        assert q.state in (JobState.QUEUED, JobState.RUNNING), q
        await second.cancel(queued.job_id)
        q = await until(second, queued.job_id, "finished", 30)
        assert q.state is JobState.CANCELLED
    finally:
        await second.aclose()


async def test_partition_gpu_status_from_sinfo(host: HostConfig, engine: JobEngine, slurm_cluster):
    t = engine.transport(host.name)
    r = await engine.submit(cmd("sleep 30", gpus=1))
    try:
        await until(engine, r.job_id, "running")
        res = await t.run(sinfo_gpus_argv(slurm_cluster.default_partition))
        st = slurm_gpu_status(res.check("sinfo").out, slurm_cluster.default_partition)
        assert st.total == slurm_cluster.gpus
        assert st.allocated >= 1 and st.idle == st.total - st.allocated
    finally:
        await scancel_all(engine, r.job_id)


@pytest.mark.slow
async def test_time_limit_hit_is_failed_with_reason_timeout(engine: JobEngine):
    """SLURM's smallest limit is one minute and it checks limits every ~30 s: this takes 60-95 s."""
    r = await engine.submit(cmd("sleep 600", time_limit_s=60))
    v = await until(engine, r.job_id, "finished", 150)
    assert v.state is JobState.FAILED, v
    assert "time limit" in (v.reason or "") and "time_limit" in (v.reason or ""), v
    assert "DUE TO TIME LIMIT" in Path(r.job_dir, "output.log").read_text()
