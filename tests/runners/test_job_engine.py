"""The job engine with real processes on a real host (parametrized over transports)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from runners.engine import JobEngine
from runners.errors import InvalidInput, NotFound
from runners.spec import JobSpec, Resources
from runners.states import JobState

pytestmark = pytest.mark.anyio


def cmd(script: str, **kw) -> JobSpec:
    return JobSpec(kind="command", argv=["bash", "-c", script], **kw)


async def finish(engine: JobEngine, job_id: str, timeout: float = 20):
    view, reached = await engine.wait(job_id, "finished", timeout)
    assert reached, view
    return view


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_success_failure_and_the_job_directory(engine: JobEngine):
    ok = await engine.submit(cmd("echo out; echo err >&2; echo $LLM_OPS_TEST_HOST_ENV; exit 0"))
    bad = await engine.submit(cmd("exit 7"))
    assert ok.created and ok.job and ok.job.state in (JobState.RUNNING, JobState.SUCCEEDED)
    v_ok, v_bad = await finish(engine, ok.job_id), await finish(engine, bad.job_id)
    assert (v_ok.state, v_ok.exit_code) == (JobState.SUCCEEDED, 0)
    assert (v_bad.state, v_bad.exit_code) == (JobState.FAILED, 7)
    assert v_bad.error is not None and v_bad.error.kind == "exit_code"
    d = Path(ok.job_dir)
    for name in ["job.json", "run.sh", "env", "output.log", "exit_code", "pid", "outputs"]:
        assert (d / name).exists(), name
    assert stat.S_IMODE((d / "env").stat().st_mode) == 0o600
    log = (d / "output.log").read_text()
    assert "out\n" in log and "err\n" in log and "host-env" in log


async def test_secrets_only_in_env_file_and_redacted_in_logs(engine: JobEngine):
    r = await engine.submit(cmd('echo "secret is $LLM_OPS_TEST_SECRET"'))
    await finish(engine, r.job_id)
    d = Path(r.job_dir)
    assert "s3cr3t-value-42" in (d / "env").read_text()
    assert "s3cr3t-value-42" in (d / "output.log").read_text()  # the job did see it
    for name in ["job.json", "run.sh"]:
        assert "s3cr3t-value-42" not in (d / name).read_text(), name
    assert "s3cr3t-value-42" not in engine.catalog.get(r.job_id).spec_json
    chunk = await engine.read_log(r.job_id)
    assert "s3cr3t-value-42" not in chunk.text and "[REDACTED:LLM_OPS_TEST_SECRET]" in chunk.text
    status = await engine.status(r.job_id)
    assert "s3cr3t-value-42" not in status.model_dump_json()


async def test_cancel_kills_the_whole_process_group(engine: JobEngine, tmp_path: Path):
    pids = tmp_path / "children"
    # Children that ignore nothing and one grandchild in a subshell, as torchrun/vLLM spawn workers.
    script = f"sleep 300 & echo $! >> {pids}; (sleep 300 & echo $! >> {pids}; wait) & sleep 300"
    r = await engine.submit(cmd(script))
    for _ in range(100):
        if pids.exists() and len(pids.read_text().split()) == 2:
            break
        await asyncio.sleep(0.05)
    children = [int(p) for p in pids.read_text().split()]
    leader = int(r.job.native_id)
    assert all(alive(p) for p in [*children, leader])
    t0 = time.monotonic()
    view = await engine.cancel(r.job_id)
    assert view.state is JobState.CANCELLED and view.terminal
    assert time.monotonic() - t0 < 3
    await asyncio.sleep(0.2)
    assert not any(alive(p) for p in [*children, leader])
    again = await engine.cancel(r.job_id)  # idempotent
    assert again.state is JobState.CANCELLED and "nothing to cancel" in again.summary


async def test_cancel_escalates_to_sigkill(engine: JobEngine):
    r = await engine.submit(cmd("trap '' TERM; sleep 300 & trap '' TERM; while :; do sleep 0.1; done"))
    await engine.wait(r.job_id, "running", 5)
    await asyncio.sleep(0.2)
    view = await engine.cancel(r.job_id, grace_s=0.5)
    assert view.state is JobState.CANCELLED


async def test_time_limit(engine: JobEngine):
    r = await engine.submit(cmd("sleep 60", resources=Resources(time_limit_s=1)))
    view = await finish(engine, r.job_id, 15)
    assert view.state is JobState.FAILED and "time limit" in (view.reason or "")


async def test_killed_shell_without_exit_code_is_lost(engine: JobEngine):
    r = await engine.submit(cmd("sleep 300"))
    pgid = int(r.job.native_id)
    os.killpg(pgid, signal.SIGKILL)
    view = await finish(engine, r.job_id, 10)
    assert view.state is JobState.LOST and view.exit_code is None
    assert view.error is not None and "SIGKILL" in (view.reason or "")


async def test_reused_pid_is_not_taken_for_the_job(engine: JobEngine):
    r = await engine.submit(cmd("sleep 300"))
    os.killpg(int(r.job.native_id), signal.SIGKILL)
    await asyncio.sleep(0.1)
    # Pretend the pid was reused by an unrelated live process (this test process).
    (Path(r.job_dir) / "pid").write_text(f"{os.getpid()}\n")
    view = await engine.status(r.job_id)
    assert view.state is JobState.LOST


async def test_idempotency_key(engine: JobEngine):
    a = await engine.submit(cmd("sleep 0.2"), idempotency_key="same")
    b = await engine.submit(cmd("sleep 0.2"), idempotency_key="same")
    assert a.job_id == b.job_id and a.created and not b.created
    with pytest.raises(InvalidInput):
        await engine.submit(cmd("sleep 5"), idempotency_key="same")
    assert len(await engine.list_jobs()) == 1


async def test_two_engines_on_one_catalog_submit_once(job_config, tmp_path: Path):
    engines = [JobEngine(job_config, tmp_path / "state") for _ in range(4)]
    try:
        results = await asyncio.gather(
            *(e.submit(cmd("sleep 0.5"), idempotency_key=f"k{i % 3}") for i in range(24) for e in engines[:1]),
            *(e.submit(cmd("sleep 0.5"), idempotency_key=f"k{i % 3}") for i in range(6) for e in engines[1:]),
        )
        ids = {r.job_id for r in results}
        assert len(ids) == 3
        assert sum(r.created for r in results) == 3
        jobs_dir = Path(job_config.hosts[job_config.default].workdir) / "jobs"
        assert len(list(jobs_dir.iterdir())) == 3  # nothing started twice
        for j in ids:
            await finish(engines[2], j)
        assert engines[3].catalog.count() == 3
    finally:
        for e in engines:
            await e.aclose()


async def test_logs_by_offset_and_tail(engine: JobEngine):
    r = await engine.submit(cmd("for i in $(seq 1 500); do echo line $i; done; echo ERROR boom"))
    await finish(engine, r.job_id)
    tail = await engine.read_log(r.job_id, tail_lines=3)
    assert tail.text == "line 499\nline 500\nERROR boom\n" and tail.eof and tail.truncated
    # Follow from 0 in small chunks: reassembles the whole log, whole lines per chunk.
    text, off = "", 0
    while True:
        c = await engine.read_log(r.job_id, offset=off, max_bytes=100)
        assert c.text == "" or c.text.endswith("\n")
        text += c.text
        off = c.next_offset
        if c.eof:
            break
    assert text == (Path(r.job_dir) / "output.log").read_text()
    g = await engine.read_log(r.job_id, offset=0, max_bytes=1 << 20, grep=r"^line 4\d\d$|ERROR")
    assert g.text.splitlines()[0] == "line 400" and g.text.splitlines()[-1] == "ERROR boom"
    with pytest.raises(InvalidInput):
        await engine.read_log(r.job_id, offset=c.size + 1)
    with pytest.raises(InvalidInput):
        await engine.read_log(r.job_id, offset=-1)
    with pytest.raises(InvalidInput):
        await engine.read_log(r.job_id, grep="(")
    with pytest.raises(NotFound):
        await engine.read_log("command-does-not-exist")


async def test_metrics_progress_and_wait_progress(engine: JobEngine):
    script = (
        'for i in 1 2 3 4; do echo "{\\"step\\": $i, \\"total_steps\\": 4, \\"loss\\": 1.5}" >> '
        '"$LLM_OPS_METRICS"; sleep 0.3; done'
    )
    r = await engine.submit(cmd(script))
    seen: list[tuple[float, float | None, str]] = []

    async def progress(p, t, m):
        seen.append((p, t, m))

    view, reached = await engine.wait(r.job_id, "finished", 20, progress)
    assert reached and view.state is JobState.SUCCEEDED
    assert view.metrics == {"step": 4, "total_steps": 4, "loss": 1.5} and view.progress_percent == 100.0
    assert any(t == 4.0 for _, t, _ in seen) and "step" in seen[-1][2]
    steps = [p for p, t, _ in seen if t == 4.0]
    assert steps == sorted(steps)


async def test_wait_timeout_returns_status(engine: JobEngine):
    r = await engine.submit(cmd("sleep 30"))
    t0 = time.monotonic()
    view, reached = await engine.wait(r.job_id, "finished", 0.5)
    assert not reached and view.state is JobState.RUNNING and time.monotonic() - t0 < 3
    with pytest.raises(InvalidInput):
        await engine.wait(r.job_id, "ready", 1)
    await engine.cancel(r.job_id)


async def test_a_failure_gets_a_hint(engine: JobEngine):
    r = await engine.submit(cmd("echo 'torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20 GiB'; exit 1"))
    view = await finish(engine, r.job_id)
    assert view.error and view.error.kind == "cuda_oom" and "batch" in view.error.hint
    assert view.next_action == view.error.hint


async def test_dry_run_starts_nothing(engine: JobEngine, job_config):
    r = await engine.submit(cmd("echo hi"), dry_run=True)
    assert r.dry_run and r.job is None and "echo hi" in (r.run_script or "")
    assert "LLM_OPS_TEST_SECRET" in r.env_names and "s3cr3t" not in r.model_dump_json()
    assert json.loads(r.job_json or "{}")["spec"]["argv"] == ["bash", "-c", "echo hi"]
    assert not Path(r.job_dir).exists() and engine.catalog.count() == 0


async def test_missing_secret_is_an_error(engine: JobEngine):
    with pytest.raises(InvalidInput):
        await engine.submit(cmd("true", secrets=["NOT_SET_ANYWHERE_XYZ"]))


async def test_catalog_lost_job_dir_means_lost(engine: JobEngine):
    r = await engine.submit(cmd("sleep 300"))
    os.killpg(int(r.job.native_id), signal.SIGKILL)
    import shutil

    shutil.rmtree(r.job_dir)
    view = await engine.status(r.job_id)
    assert view.state is JobState.LOST and "gone" in (view.reason or "")
