"""SLURM launcher figures on the real single-node test cluster (``.ci/slurm-up.sh up`` first).

1. Status of 50 SLURM jobs: one ``engine.refresh`` of 50 jobs (2 running, 48 pending on
   a 2-CPU node) — how long it takes and how many ``squeue`` processes it starts. The
   count is not inferred: a shim named ``squeue`` first on PATH logs every call before
   it execs the real one. Compared with the naive way, one ``squeue -j ID`` per job.
2. Submit → running on an idle node: ``engine.submit`` until ``engine.wait(until=
   'running')`` returns, and the raw scheduler part (sbatch returns → squeue shows
   RUNNING, polled every 20 ms). Median of ``--runs``.

Usage: ``.venv/bin/python bench/slurm.py [--jobs 50] [--runs 5] [--json out.json]``.
Local transport (the login-node case over SSH adds one round trip per call; see bench/ssh.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from runners.config import Config, HostConfig, SlurmConfig
from runners.engine import JobEngine
from runners.spec import JobSpec, Resources
from runners.states import JobState


def _spec(script: str, **res: object) -> JobSpec:
    return JobSpec(kind="command", argv=["bash", "-c", script], resources=Resources(**res))


def _shim(root: Path) -> Path:
    """A logging ``squeue`` first on PATH: every call is counted, then the real one runs."""
    d = root / "shim"
    d.mkdir()
    log = root / "squeue.calls"
    log.write_text("")
    real = "/usr/bin/squeue"
    (d / "squeue").write_text(f'#!/bin/bash\necho "$*" >> {log}\nexec {real} "$@"\n')
    (d / "squeue").chmod(0o755)
    os.environ["PATH"] = f"{d}:{os.environ['PATH']}"
    return log


def _calls(log: Path) -> int:
    return sum(1 for ln in log.read_text().splitlines() if ln.strip())


async def status_of_many(root: Path, n: int) -> dict[str, object]:
    log = _shim(root)
    host = HostConfig(
        name="slurm", launcher="slurm", workdir=str(root / "work"), slurm=SlurmConfig(time_limit="00:10:00")
    )
    eng = JobEngine(Config(hosts={"slurm": host}, default_host="slurm"), root / "state")
    try:
        ids = [(await eng.submit(_spec("sleep 300"))).job_id for _ in range(n)]
        recs = [eng.catalog.get(j) for j in ids]
        times, calls = [], []
        for _ in range(5):
            before = _calls(log)
            t0 = time.perf_counter()
            views, notes = await eng.refresh([r for r in recs if r is not None])
            times.append(time.perf_counter() - t0)
            calls.append(_calls(log) - before)
            assert not notes, notes
        states = {s.value: sum(1 for v in views if v.state is s) for s in JobState if any(v.state is s for v in views)}
        # The naive way, for comparison: one squeue per job.
        native = [v.native_id for v in views if v.native_id]
        t0 = time.perf_counter()
        for nid in native:
            subprocess.run(["squeue", "--noheader", "-j", nid], capture_output=True, check=False)
        naive_s = time.perf_counter() - t0
        return {
            "jobs": n,
            "states": states,
            "squeue_calls_per_refresh": max(calls),
            "refresh_s_median": round(statistics.median(times), 4),
            "refresh_s_all": [round(t, 4) for t in times],
            "naive_one_squeue_per_job_s": round(naive_s, 4),
            "naive_squeue_calls": len(native),
        }
    finally:
        native_ids = [r.native_id for r in (eng.catalog.get(j) for j in ids) if r and r.native_id]
        if native_ids:
            subprocess.run(["scancel", "--", *native_ids], check=False)
        await eng.aclose()


async def submit_to_running(root: Path, runs: int) -> dict[str, object]:
    host = HostConfig(
        name="slurm", launcher="slurm", workdir=str(root / "work2"), slurm=SlurmConfig(time_limit="00:10:00")
    )
    eng = JobEngine(Config(hosts={"slurm": host}, default_host="slurm"), root / "state2")
    engine_s, raw_s = [], []
    try:
        for _ in range(runs):
            while subprocess.run(
                ["squeue", "--noheader", "-t", "PD,R,CG"], capture_output=True, text=True, check=False
            ).stdout.strip():
                await asyncio.sleep(0.2)  # idle node: nothing pending, running or completing
            t0 = time.perf_counter()
            r = await eng.submit(_spec("sleep 2", gpus=1))
            v, ok = await eng.wait(r.job_id, "running", 60)
            assert ok, v
            engine_s.append(time.perf_counter() - t0)
            await eng.wait(r.job_id, "finished", 60)
        for _ in range(runs):
            while subprocess.run(
                ["squeue", "--noheader", "-t", "PD,R,CG"], capture_output=True, text=True, check=False
            ).stdout.strip():
                await asyncio.sleep(0.2)
            t0 = time.perf_counter()
            jid = subprocess.run(
                ["sbatch", "--parsable", "--gres=gpu:1", "-o", "/dev/null", "--wrap", "sleep 2"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout.strip()
            while subprocess.run(
                ["squeue", "--noheader", "-j", jid, "-o", "%T"], capture_output=True, text=True, check=False
            ).stdout.strip() not in ("RUNNING", "COMPLETING", "COMPLETED"):
                time.sleep(0.02)
            raw_s.append(time.perf_counter() - t0)
    finally:
        await eng.aclose()
    return {
        "runs": runs,
        "engine_submit_to_running_s_median": round(statistics.median(engine_s), 3),
        "engine_submit_to_running_s_all": [round(x, 3) for x in engine_s],
        "raw_sbatch_to_RUNNING_s_median": round(statistics.median(raw_s), 3),
        "raw_sbatch_to_RUNNING_s_all": [round(x, 3) for x in raw_s],
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-slurm-") as tmp:
        root = Path(tmp)
        many = await status_of_many(root, a.jobs)
        start = await submit_to_running(root, a.runs)
    out = {"status_of_many": many, "submit_to_running": start, "nproc": os.cpu_count()}
    print(json.dumps(out, indent=2))
    if a.json:
        a.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    asyncio.run(main())
