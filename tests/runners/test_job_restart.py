"""Nothing lost: a real server over stdio is SIGKILLed while its jobs run, and restarted.

Also: several server processes on one catalog submit each idempotency key once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from mcp import Client

from tests.helpers.restart import REPO, call, gated, kill_server, server_params, submit_named, wait_for_exit_codes

pytestmark = pytest.mark.anyio


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        default_host = "local"
        [hosts.local]
        transport = "local"
        launcher = "direct"
        workdir = "{tmp_path / "work"}"
        allow_scripts = true
    """)
    )
    return cfg


async def test_sigkill_the_server_and_restart(tmp_path: Path):
    cfg, pidfile = write_config(tmp_path), tmp_path / "server.pid"
    gate = tmp_path / "gate"  # jobs wait for this file, so they end while the server is down
    specs = {
        "ok": gated(gate, "echo done-ok"),
        "fail": gated(gate, "echo failing; exit 3"),
        "long": "sleep 300",
        "lost": "sleep 300",
    }
    async with Client(server_params(tmp_path, cfg, pidfile)) as client:
        submitted = await submit_named(client, specs, "restart")
        assert all(out["job"]["state"] == "running" for out in submitted.values()), submitted
        ids = {name: out["job_id"] for name, out in submitted.items()}
        kill_server(pidfile)

    # While the server is down: two jobs end on their own, one shell is killed without an exit code.
    gate.touch()
    os.killpg(int((tmp_path / "work" / "jobs" / ids["lost"] / "pid").read_text()), signal.SIGKILL)
    await wait_for_exit_codes(tmp_path / "work" / "jobs", [ids["ok"], ids["fail"]])

    async with Client(server_params(tmp_path, cfg, pidfile)) as c:
        listed = await call(c, "list_jobs", {})
        by_id = {j["job_id"]: j for j in listed["jobs"]}
        assert set(by_id) == set(ids.values())
        assert (by_id[ids["ok"]]["state"], by_id[ids["ok"]]["exit_code"]) == ("succeeded", 0)
        assert (by_id[ids["fail"]]["state"], by_id[ids["fail"]]["exit_code"]) == ("failed", 3)
        assert by_id[ids["long"]]["state"] == "running"
        assert (by_id[ids["lost"]]["state"], by_id[ids["lost"]]["exit_code"]) == ("lost", None)
        # The same idempotency key after the restart returns the same job, not a second one.
        again = await call(
            c,
            "submit_command",
            {"argv": ["bash", "-c", specs["long"]], "name": "long", "idempotency_key": "restart-long"},
        )
        assert again["job_id"] == ids["long"] and not again["created"]
        logs = await call(c, "get_job_logs", {"job_id": ids["ok"]})
        assert "done-ok" in logs["text"]
        st = await call(c, "get_job_status", {"job_id": ids["fail"]})
        assert st["error"]["kind"] == "exit_code"
        cancelled = await call(c, "cancel_job", {"job_id": ids["long"], "grace_s": 2})
        assert cancelled["state"] == "cancelled"


RACER = """
import asyncio, json, sys
from pathlib import Path
from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.spec import JobSpec

async def main(work, state, n):
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=work)})
    e = JobEngine(cfg, state)
    spec = JobSpec(kind="command", argv=["sleep", "0.5"])
    rs = await asyncio.gather(*(e.submit(spec, idempotency_key=f"key-{i % 5}") for i in range(n)))
    print(json.dumps([[r.job_id, r.created] for r in rs]))
    await e.aclose()

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
"""


def test_server_processes_sharing_a_catalog_submit_each_key_once(tmp_path: Path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, str(tmp_path / "work"), str(tmp_path / "state"), "20"],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        results += json.loads(out.strip().splitlines()[-1])
    assert len({j for j, _ in results}) == 5
    assert sum(created for _, created in results) == 5
    assert len(list((tmp_path / "work" / "jobs").iterdir())) == 5
    import sqlite3

    db = sqlite3.connect(tmp_path / "state" / "jobs.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0] == 5
