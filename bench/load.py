"""Load: many MCP clients over streamable HTTP against one real ``llm-ops-mcp serve --http``.

Run: ``PYTHONPATH=. .venv/bin/python bench/load.py`` (temp dirs, a loopback port, a token;
nothing else touched). Three figures (issue 10):

1. 50 concurrent clients, 20 calls each, mixed tools (tiers, estimates, hosts, jobs, logs,
   status, dry-run submits): zero errors; p50/p99 latency.
2. 100 running jobs (local ``sleep`` via submit_command on a host with allow_scripts) and
   100 concurrent ``wait_for_job`` calls on them: every call answered before its time-out
   with ``reached``, and progress notifications received.
3. A catalog of 10,000 jobs and a 1 GiB log (bench/jobs.py's helpers): ``list_jobs`` and the
   log tail, measured through MCP while the 50 clients of (1) run again.

Exits 1 when a figure misses (any error, a wait not answered in time, no progress).
The clients run in this process, on the same cores as the server: on a small machine the
latencies are mostly the clients' own work (the MCP client validates every structured
result against the tool's outputSchema; for list_jobs(limit=50) that is ~70 ms of a ~95 ms
round trip).
"""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.jobs import GIB, record
from runners.states import JobState
from runners.store import Catalog

__all__ = ["main"]

TOKEN = "load-bench-token-0123456789abcdef"
CLIENTS, CALLS = 50, 20
WAITERS = 100
REPO = Path(__file__).resolve().parents[1]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(p / 100 * (len(xs) - 1)))] * 1000


def figures(xs: list[float]) -> str:
    return f"p50 {pct(xs, 50):.1f} ms, p99 {pct(xs, 99):.1f} ms, max {max(xs) * 1000:.1f} ms (n={len(xs)})"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(tmp: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    cfg = tmp / "config.toml"
    cfg.write_text(f'[hosts.local]\nworkdir = "{tmp / "work"}"\nallow_scripts = true\n')
    env = {
        **os.environ,
        "LLM_OPS_MCP_TOKEN": TOKEN,
        "LLM_OPS_MCP_STATE_DIR": str(tmp / "state"),
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(REPO),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve", "--http", "--port", str(port), "--config", str(cfg)],
        env=env,
        cwd=str(REPO),
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("the server exited at start") from None
            time.sleep(0.1)
    raise RuntimeError("the server did not listen within 30 s")


async def with_client(url: str, fn: Callable[[Client], Awaitable[Any]]) -> Any:
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}, timeout=httpx2.Timeout(180)) as http,
        Client(streamable_http_client(url, http_client=http)) as c,
    ):
        return await fn(c)


def mixed_calls(job_id: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("list_gpu_tiers", {}),
        ("estimate_memory", {"model": "meta-llama/Llama-3.1-8B", "task": "lora"}),
        ("list_hosts", {}),
        ("list_jobs", {"limit": 50}),
        ("get_job_status", {"job_id": job_id}),
        ("get_job_logs", {"job_id": job_id, "tail_lines": 50}),
        ("submit_command", {"argv": ["echo", "hi"], "dry_run": True}),
        ("get_gpu_status", {}),
        ("estimate_memory", {"model": "Qwen/Qwen2.5-7B", "task": "inference", "seq_len": 8192}),
        ("wait_for_job", {"job_id": job_id, "timeout_s": 5}),
    ]


async def hammer(url: str, job_id: str, lat: dict[str, list[float]], errors: list[str]) -> None:
    calls = mixed_calls(job_id)

    async def one_client(k: int) -> None:
        async def go(c: Client) -> None:
            for i in range(CALLS):
                name, args = calls[(k + i) % len(calls)]
                t0 = time.perf_counter()
                try:
                    r = await c.call_tool(name, args)
                except Exception as e:  # a transport failure is an error of the figure, not of the bench
                    errors.append(f"{name}: {type(e).__name__}: {e}")
                    continue
                lat.setdefault(name, []).append(time.perf_counter() - t0)
                if r.is_error:
                    errors.append(f"{name}: {r.content[0].text[:200]}")

        await with_client(url, go)

    await asyncio.gather(*(one_client(k) for k in range(CLIENTS)))


async def phase_mixed(url: str, job_id: str, label: str) -> bool:
    lat: dict[str, list[float]] = {}
    errors: list[str] = []
    t0 = time.perf_counter()
    await hammer(url, job_id, lat, errors)
    wall = time.perf_counter() - t0
    every = [x for xs in lat.values() for x in xs]
    print(
        f"{label}: {CLIENTS} clients x {CALLS} calls = {len(every) + len(errors)} calls in {wall:.1f} s "
        f"({len(every) / wall:.0f} calls/s), {len(errors)} errors; latency {figures(every)}"
    )
    for e in errors[:5]:
        print("  error:", e, file=sys.stderr)
    return not errors


async def phase_waits(url: str) -> bool:
    async def submit_all(c: Client) -> list[str]:
        ids = []
        for i in range(WAITERS):
            r = await c.call_tool("submit_command", {"argv": ["sleep", "12"], "name": f"wait-{i}"})
            assert not r.is_error, r.content[0].text
            ids.append(r.structured_content["job_id"])
        return ids

    t0 = time.perf_counter()
    ids = await with_client(url, submit_all)
    t_sub = time.perf_counter() - t0
    progress: dict[str, int] = {}
    answered: dict[str, tuple[bool, float]] = {}
    timeout_s = 60.0

    async def wait_group(group: list[str]) -> None:
        async def go(c: Client) -> None:
            async def one(jid: str) -> None:
                async def on_progress(done: float, total: float | None, message: str | None) -> None:
                    progress[jid] = progress.get(jid, 0) + 1

                t = time.perf_counter()
                r = await c.call_tool(
                    "wait_for_job", {"job_id": jid, "timeout_s": timeout_s}, progress_callback=on_progress
                )
                ok = not r.is_error and r.structured_content["reached"]
                answered[jid] = (ok, time.perf_counter() - t)

            await asyncio.gather(*(one(j) for j in group))

        await with_client(url, go)

    t1 = time.perf_counter()
    groups = [ids[i::10] for i in range(10)]  # 10 sessions, 10 concurrent waits each
    await asyncio.gather(*(wait_group(g) for g in groups))
    wall = time.perf_counter() - t1
    ok = sum(1 for a, _ in answered.values() if a)
    in_time = sum(1 for _, dt in answered.values() if dt < timeout_s + 5)
    with_progress = sum(1 for j in ids if progress.get(j, 0) > 0)
    waits = [dt for _, dt in answered.values()]
    print(
        f"{WAITERS} running jobs submitted in {t_sub:.1f} s; {WAITERS} concurrent wait_for_job: "
        f"{ok}/{WAITERS} reached 'finished', {in_time}/{WAITERS} answered within timeout_s, "
        f"{with_progress}/{WAITERS} got progress ({sum(progress.values())} notifications); "
        f"all answered {wall:.1f} s after the waits began (jobs run 12 s; wait p50 {pct(waits, 50) / 1000:.1f} s, "
        f"max {max(waits):.1f} s)"
    )
    return ok == WAITERS and in_time == WAITERS and with_progress == WAITERS


def big_catalog(tmp: Path) -> str:
    """10,000 finished jobs in the server's catalog (same file; WAL) and one with a 1 GiB log."""
    cat = Catalog(tmp / "state" / "jobs.sqlite3")
    now = time.time()
    states = [JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED, JobState.LOST]
    work = tmp / "work" / "jobs"
    recs = [record(f"command-load-{i:05d}", str(work / f"l{i}"), states[i % 4], now - 1000 - i) for i in range(10_000)]
    big = "command-load-biglog"
    d = work / big
    d.mkdir(parents=True)
    line = b"step 123456 loss 1.2345 lr 2e-5 tokens/s 12345.6 some more text to make a realistic line\n"
    with open(d / "output.log", "wb") as f:
        block = line * (8 * 1024 * 1024 // len(line))
        while f.tell() < GIB:
            f.write(block)
    recs.append(record(big, str(d), JobState.SUCCEEDED, now))
    cat.insert_many(recs)
    cat.close()
    return big


async def phase_catalog(url: str, big: str, job_id: str) -> bool:
    lists: list[float] = []
    tails: list[float] = []
    load_done = asyncio.Event()

    async def measure(c: Client) -> None:
        while not load_done.is_set():
            t0 = time.perf_counter()
            r = await c.call_tool("list_jobs", {"limit": 50})
            lists.append(time.perf_counter() - t0)
            assert not r.is_error and r.structured_content["count"] == 50
            t0 = time.perf_counter()
            r = await c.call_tool("get_job_logs", {"job_id": big, "tail_lines": 200})
            tails.append(time.perf_counter() - t0)
            assert not r.is_error and r.structured_content["size"] >= GIB

    async def load() -> bool:
        try:
            return await phase_mixed(url, job_id, "  the 50-client load meanwhile")
        finally:
            load_done.set()

    idle_l, idle_t = [], []

    async def idle(c: Client) -> None:
        for _ in range(20):
            t0 = time.perf_counter()
            await c.call_tool("list_jobs", {"limit": 50})
            idle_l.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await c.call_tool("get_job_logs", {"job_id": big, "tail_lines": 200})
            idle_t.append(time.perf_counter() - t0)

    await with_client(url, idle)
    ok, _ = await asyncio.gather(load(), with_client(url, measure))
    print(
        f"catalog of 10,000+ jobs, 1 GiB log, through MCP over HTTP: idle list_jobs(limit=50) {figures(idle_l)}; "
        f"tail 200 lines {figures(idle_t)}"
    )
    print(f"  under the 50-client load: list_jobs {figures(lists)}; tail {figures(tails)}")
    return bool(ok)


async def amain() -> int:
    with tempfile.TemporaryDirectory(prefix="llm-ops-load-") as d:
        tmp = Path(d)
        proc, url = start_server(tmp)
        try:

            async def seed(c: Client) -> str:
                r = await c.call_tool("submit_command", {"argv": ["bash", "-c", "echo seeded; echo line2"]})
                jid = r.structured_content["job_id"]
                await c.call_tool("wait_for_job", {"job_id": jid, "timeout_s": 30})
                return str(jid)

            job_id = await with_client(url, seed)
            ok = await phase_mixed(url, job_id, "mixed tools")
            ok = await phase_waits(url) and ok
            big = big_catalog(tmp)
            ok = await phase_catalog(url, big, job_id) and ok
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    print("load held" if ok else "LOAD NOT HELD")
    return 0 if ok else 1


def main() -> int:
    return asyncio.run(amain())


if __name__ == "__main__":
    raise SystemExit(main())
