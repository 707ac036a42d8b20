"""The MCP server SIGKILLed mid-job on an SSH host (real sshd) and restarted: every job accounted for.

The local and SLURM versions are tests/runners/test_job_restart.py and
tests/runners/test_slurm_restart.py (same helpers); this adds the SSH transport, so all
three host kinds are covered: jobs that end while the server is down get their real exit
codes, a running job is still running (and cancellable), a job whose shell died without
an exit code is lost, and an idempotency key still returns the same job.
"""

from __future__ import annotations

import os
import signal
import textwrap
from pathlib import Path

import pytest
from mcp import Client

from tests.fixtures.sshd import SSHD
from tests.helpers.restart import call, gated, kill_server, server_params, submit_named, wait_for_exit_codes

pytestmark = pytest.mark.anyio


def ssh_config(tmp_path: Path, sshd: SSHD) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        default_host = "box"
        [hosts.box]
        transport = "ssh"
        address = "{sshd.host}"
        port = {sshd.port}
        user = "{sshd.user}"
        identity_file = "{sshd.client_key}"
        known_hosts = "{sshd.known_hosts}"
        workdir = "{tmp_path / "work"}"
        allow_scripts = true
    """)
    )
    return cfg


async def test_sigkill_the_server_mid_ssh_jobs_and_restart(tmp_path: Path, sshd: SSHD) -> None:
    cfg, pidfile = ssh_config(tmp_path, sshd), tmp_path / "server.pid"
    gate = tmp_path / "gate"
    specs = {"ok": gated(gate, "echo done-ok"), "fail": gated(gate, "exit 3"), "long": "sleep 300", "lost": "sleep 300"}
    async with Client(server_params(tmp_path, cfg, pidfile)) as client:
        submitted = await submit_named(client, specs, "ssh-restart")
        assert all(out["job"]["state"] == "running" for out in submitted.values()), submitted
        ids = {name: out["job_id"] for name, out in submitted.items()}
        kill_server(pidfile)

    gate.touch()
    os.killpg(int((tmp_path / "work" / "jobs" / ids["lost"] / "pid").read_text()), signal.SIGKILL)
    await wait_for_exit_codes(tmp_path / "work" / "jobs", [ids["ok"], ids["fail"]])

    async with Client(server_params(tmp_path, cfg, pidfile)) as c:
        by_id = {j["job_id"]: j for j in (await call(c, "list_jobs", {}))["jobs"]}
        assert set(by_id) == set(ids.values())
        assert (by_id[ids["ok"]]["state"], by_id[ids["ok"]]["exit_code"]) == ("succeeded", 0)
        assert (by_id[ids["fail"]]["state"], by_id[ids["fail"]]["exit_code"]) == ("failed", 3)
        assert by_id[ids["long"]]["state"] == "running"
        assert by_id[ids["lost"]]["state"] == "lost"
        again = await call(
            c,
            "submit_command",
            {"argv": ["bash", "-c", specs["long"]], "name": "long", "idempotency_key": "ssh-restart-long"},
        )
        assert again["job_id"] == ids["long"] and not again["created"]
        assert "done-ok" in (await call(c, "get_job_logs", {"job_id": ids["ok"]}))["text"]
        assert (await call(c, "cancel_job", {"job_id": ids["long"], "grace_s": 2}))["state"] == "cancelled"
