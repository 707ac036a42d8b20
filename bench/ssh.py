"""SSH transport figures on a loopback sshd: warm submit latency, batched status, connection reuse.

Why these three: over SSH every round trip is paid on each tool call, so what an
agent feels is (1) how long a submit takes once the connection is up, (2) whether
the status of many jobs costs one round trip or one per job (target: 50 jobs in
under 150 ms), and (3) whether N tool calls open one connection or N.

It starts its own throw-away sshd (tests/fixtures/sshd.py, same recipe as the tests).
Loopback hides network latency: on a LAN add ~1 RTT per round trip counted below.

  PYTHONPATH=. .venv/bin/python bench/ssh.py [--submits 20] [--jobs 50] [--calls 30]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mcp import Client

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.spec import JobSpec
from runners.transports.ssh import SSHTransport
from runners.transports.ssh_pool import close_all, connection_count
from server.app import build_server
from tests.fixtures.sshd import running_sshd
from tools.context import ToolContext

STATUS_TARGET_MS = 150.0


class _Counting(SSHTransport):
    """Counts commands: each one is a channel, i.e. one round trip."""

    def __init__(self, host: HostConfig) -> None:
        super().__init__(host)
        self.runs = 0

    async def run(self, argv, **kw):  # type: ignore[no-untyped-def]
        self.runs += 1
        return await super().run(argv, **kw)


def _ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p90 = xs[min(len(xs) - 1, int(0.9 * len(xs)))]
    return f"median {statistics.median(xs) * 1000:6.1f} ms  p90 {p90 * 1000:6.1f} ms  (n={len(xs)})"


async def bench(host: HostConfig, state: Path, submits: int, jobs: int, calls: int) -> bool:
    made: list[_Counting] = []

    def factory(h: HostConfig) -> _Counting:
        made.append(_Counting(h))
        return made[-1]

    cfg = Config(hosts={host.name: host}, default_host=host.name)
    eng = JobEngine(cfg, state / "engine", transport_factory=factory, environ={})
    ok = True
    try:
        # Warm the connection (and the engine's workdir cache) with one submit.
        await eng.submit(JobSpec(kind="command", argv=["true"]))
        t = made[0]

        lat, trips = [], []
        for _ in range(submits):
            before = t.runs
            t0 = time.perf_counter()
            await eng.submit(JobSpec(kind="command", argv=["true"]))
            lat.append(time.perf_counter() - t0)
            trips.append(t.runs - before)
        print(
            f"submit, warm connection:        {_ms(lat)}; commands per submit: {statistics.median(trips):g}"
            " (+ SFTP requests for the job files)"
        )

        ids = [(await eng.submit(JobSpec(kind="command", argv=["sleep", "60"]))).job_id for _ in range(jobs)]
        launcher = eng.launcher(host.name)
        refs = [eng._ref(eng.catalog.get(i)) for i in ids]  # type: ignore[arg-type]
        st, runs = [], []
        for _ in range(10):
            before = t.runs
            t0 = time.perf_counter()
            obs = await launcher.observe(t, refs)
            st.append(time.perf_counter() - t0)
            runs.append(t.runs - before)
            assert len(obs) == jobs and all(o.alive for o in obs.values())
        med = statistics.median(st) * 1000
        ok &= med < STATUS_TARGET_MS and max(runs) == 1
        print(
            f"status of {jobs} jobs (observe): {_ms(st)}; round trips: {max(runs)}; "
            f"target < {STATUS_TARGET_MS:g} ms: {'PASS' if med < STATUS_TARGET_MS else 'FAIL'}"
        )
        lj = []
        for _ in range(5):
            t0 = time.perf_counter()
            views = await eng.list_jobs(limit=jobs + submits + 1)
            lj.append(time.perf_counter() - t0)
        print(f"list_jobs ({len(views)} jobs, {jobs} active): {_ms(lj)}")
        for i in ids:
            await eng.cancel(i, grace_s=0)
    finally:
        await eng.aclose()
        await close_all()

    # Connection reuse through the real MCP server: N tool calls, one SSH connection.
    app = build_server(state=ToolContext(config=cfg, state_dir=state / "server"))
    async with Client(app) as c:
        r = await c.call_tool("submit_command", {"argv": ["sleep", "1"], "host": host.name})
        job_id = r.structured_content["job_id"]  # type: ignore[index]
        t0 = time.perf_counter()
        tools = ["get_job_status", "get_job_logs", "get_gpu_status", "list_jobs"]
        for i in range(calls):
            name = tools[i % len(tools)]
            args = {"job_id": job_id} if name.startswith("get_job") else ({"host": host.name} if "gpu" in name else {})
            res = await c.call_tool(name, args)
            assert not res.is_error, res.content
        per_call = (time.perf_counter() - t0) / calls
        n = connection_count(host)
        ok &= n == 1
        print(
            f"{calls + 1} MCP tool calls ({', '.join(tools)}): {n} SSH connection(s) opened; "
            f"mean {per_call * 1000:.1f} ms per call"
        )
    await close_all()
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--submits", type=int, default=20)
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--calls", type=int, default=30)
    args = ap.parse_args()
    with running_sshd() as sshd, tempfile.TemporaryDirectory(prefix="llmops-sshbench-") as d:
        host = sshd.host_config("bench", workdir=f"{d}/work", allow_scripts=True)
        print(f"sshd (OpenSSH) on 127.0.0.1:{sshd.port}; asyncssh client; host {host.name}")
        ok = asyncio.run(bench(host, Path(d), args.submits, args.jobs, args.calls))
    print("OK" if ok else "TARGET MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
