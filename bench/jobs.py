"""Job engine figures: log tail on 1 GiB, list_jobs on 10,000 jobs, submit latency, 200 jobs.

Run: ``PYTHONPATH=. .venv/bin/python bench/jobs.py`` (local host, temp dirs; nothing else touched).
Targets (issue 4): tail < 20 ms with < 50 MB memory growth; list_jobs < 50 ms; 200
concurrent jobs all tracked and all in their right final state.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.spec import JobSpec
from runners.states import JobState
from runners.store import JobRecord

__all__ = ["main"]

GIB = 1 << 30


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    return f"median {statistics.median(xs) * 1000:.2f} ms, p95 {xs[int(len(xs) * 0.95) - 1] * 1000:.2f} ms"


def record(job_id: str, job_dir: str, state: JobState, created: float, kind: str = "command") -> JobRecord:
    return JobRecord(
        job_id=job_id,
        token=uuid.uuid4().hex,
        host="local",
        kind=kind,
        state=state,
        job_dir=job_dir,
        spec_json='{"kind": "command", "argv": ["true"]}',
        spec_hash="x",
        created_at=created,
        updated_at=created,
        phase="launched",
        exit_code=0 if state is JobState.SUCCEEDED else 1,
        started_at=created,
        ended_at=created + 1,
    )


async def bench_tail(engine: JobEngine, work: Path) -> None:
    job_id = "command-bench-tail"
    d = work / "jobs" / job_id
    d.mkdir(parents=True)
    log = d / "output.log"
    line = b"step 123456 loss 1.2345 lr 2e-5 tokens/s 12345.6 some more text to make a realistic line\n"
    with open(log, "wb") as f:  # 1 GiB of real lines (written once, ~1 s)
        block = line * (8 * 1024 * 1024 // len(line))
        while f.tell() < GIB:
            f.write(block)
    engine.catalog.insert_many([record(job_id, str(d), JobState.SUCCEEDED, time.time())])
    before = rss_mb()
    times = []
    for _ in range(50):
        t0 = time.perf_counter()
        chunk = await engine.read_log(job_id, tail_lines=200, max_bytes=65536)
        times.append(time.perf_counter() - t0)
    assert chunk.text.count("\n") == 200 and chunk.size >= GIB
    follow = []
    off = chunk.size - 10 * 65536
    for _ in range(10):
        t0 = time.perf_counter()
        c = await engine.read_log(job_id, offset=off, max_bytes=65536)
        follow.append(time.perf_counter() - t0)
        off = c.next_offset
    growth = rss_mb() - before
    print(
        f"tail of a {chunk.size / GIB:.2f} GiB log (200 lines): {ms(times)}; "
        f"follow by offset (64 KiB): {ms(follow)}; RSS growth {growth:.1f} MB"
    )
    log.unlink()


async def bench_list(engine: JobEngine, work: Path) -> None:
    now = time.time()
    states = [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST]
    kinds = ["command", "finetune", "serve", "quantize", "download"]
    recs = [
        record(f"command-bench-{i:05d}", str(work / "jobs" / f"b{i}"), states[i % 4], now - i, kinds[i % 5])
        for i in range(10_000)
    ]
    engine.catalog.insert_many(recs)
    n = engine.catalog.count()
    for label, kw in [
        ("all", {}),
        ("state=failed", {"state": JobState.FAILED}),
        ("kind=serve", {"kind": "serve"}),
        ("host=local, limit=1000", {"host": "local", "limit": 1000}),
    ]:
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            jobs = await engine.list_jobs(**kw)
            times.append(time.perf_counter() - t0)
        print(f"list_jobs over {n} jobs, {label} ({len(jobs)} returned): {ms(times)}")


async def bench_submit(engine: JobEngine) -> None:
    times = []
    for _ in range(30):
        t0 = time.perf_counter()
        r = await engine.submit(JobSpec(kind="command", argv=["sleep", "0.2"]))
        dt = time.perf_counter() - t0
        assert r.job is not None and r.job.state is JobState.RUNNING, r.summary
        times.append(dt)
    print(f"submit-to-running of a trivial local job (30 runs): {ms(times)}")


async def bench_200(engine: JobEngine) -> None:
    """A quarter each: succeed, fail with a code, get cancelled, lose their shell to SIGKILL."""
    t0 = time.perf_counter()
    specs = []
    for i in range(200):
        if i % 4 == 0:
            specs.append(JobSpec(kind="command", argv=["bash", "-c", f"sleep 0.{i % 10}; echo ok"]))
        elif i % 4 == 1:
            specs.append(JobSpec(kind="command", argv=["bash", "-c", f"sleep 0.{i % 10}; exit {i % 7 + 1}"]))
        else:
            specs.append(JobSpec(kind="command", argv=["sleep", "120"]))
    subs = await asyncio.gather(*(engine.submit(s, idempotency_key=f"c200-{i}") for i, s in enumerate(specs)))
    t_sub = time.perf_counter() - t0
    ids = [s.job_id for s in subs]
    assert len(set(ids)) == 200
    await asyncio.gather(*(engine.cancel(ids[i], grace_s=2) for i in range(200) if i % 4 == 2))
    for i in range(200):
        if i % 4 == 3:
            os.killpg(int(subs[i].job.native_id), signal.SIGKILL)  # type: ignore[union-attr]
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        views = {v.job_id: v for v in await engine.list_jobs(limit=1000) if v.job_id in set(ids)}
        if len(views) == 200 and all(v.terminal for v in views.values()):
            break
        await asyncio.sleep(0.2)
    want = {
        0: (JobState.SUCCEEDED, lambda i: 0),
        1: (JobState.FAILED, lambda i: i % 7 + 1),
        2: (JobState.CANCELLED, None),
        3: (JobState.LOST, lambda i: None),
    }
    wrong = []
    for i, jid in enumerate(ids):
        v = views[jid]
        state, code = want[i % 4]
        if v.state is not state or (code is not None and v.exit_code != code(i)):
            wrong.append((jid, v.state.value, v.exit_code))
    total = time.perf_counter() - t0
    print(
        f"200 concurrent local jobs: submitted in {t_sub:.2f} s, all final in {total:.2f} s; "
        f"tracked {len(views)}/200, right final state {200 - len(wrong)}/200 "
        f"(50 succeeded, 50 failed with their codes, 50 cancelled, 50 lost)"
    )
    if wrong:
        print("  wrong:", wrong[:10], file=sys.stderr)


async def amain() -> int:
    with tempfile.TemporaryDirectory(prefix="llm-ops-bench-") as tmp:
        work = Path(tmp) / "work"
        cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(work))})
        engine = JobEngine(cfg, Path(tmp) / "state", environ={})
        try:
            await bench_tail(engine, work)
            await bench_submit(engine)
            await bench_200(engine)
            await bench_list(engine, work)
        finally:
            await engine.aclose()
    return 0


def main() -> int:
    return asyncio.run(amain())


if __name__ == "__main__":
    raise SystemExit(main())
