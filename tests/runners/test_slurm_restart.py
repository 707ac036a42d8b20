"""Nothing lost on SLURM: a real MCP server over stdio is SIGKILLed while its SLURM jobs are
running and pending, jobs end while it is down, and a new server finds every one of them."""

from __future__ import annotations

import asyncio
import textwrap
from pathlib import Path

import pytest
from mcp import Client

from tests.helpers.restart import call, gated, kill_server, server_params, submit_named, wait_for_exit_codes

pytestmark = pytest.mark.anyio


def write_config(tmp_path: Path) -> Path:
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        textwrap.dedent(f"""
        default_host = "cluster"
        [hosts.cluster]
        transport = "local"
        launcher = "slurm"
        workdir = "{tmp_path / "work"}"
        allow_scripts = true
        [hosts.cluster.slurm]
        time_limit = "00:10:00"
        [hosts.cluster.env]
        HF_HUB_OFFLINE = "1"
    """)
    )
    return cfg


async def test_sigkill_the_server_mid_slurm_jobs_and_restart(tmp_path: Path, slurm_cluster):
    cfg, pidfile = write_config(tmp_path), tmp_path / "server.pid"
    gate = tmp_path / "gate"
    # The node has slurm_cluster.cpus CPUs; one CPU per job, so the last "long" jobs wait in the queue.
    specs = {"ok": gated(gate, "echo done-ok"), "fail": gated(gate, "exit 3")}
    for i in range(slurm_cluster.cpus + 1):
        specs[f"long{i}"] = "sleep 300"
    ids: dict[str, str] = {}
    native: dict[str, str] = {}
    try:
        async with Client(server_params(tmp_path, cfg, pidfile)) as client:
            submitted = await submit_named(client, specs, "slurm-restart")
            for name, out in submitted.items():
                assert out["job"]["state"] in ("queued", "running"), out
                ids[name] = out["job_id"]
                native[name] = out["job"]["native_id"]
            kill_server(pidfile)  # no clean-up of any kind

        gate.touch()  # while the server is down, two jobs end on their own
        await wait_for_exit_codes(tmp_path / "work" / "jobs", [ids["ok"], ids["fail"]], tries=400)

        async with Client(server_params(tmp_path, cfg, pidfile)) as c:
            listed = await call(c, "list_jobs", {})
            by_id = {j["job_id"]: j for j in listed["jobs"]}
            assert set(by_id) == set(ids.values())
            assert (by_id[ids["ok"]]["state"], by_id[ids["ok"]]["exit_code"]) == ("succeeded", 0)
            assert (by_id[ids["fail"]]["state"], by_id[ids["fail"]]["exit_code"]) == ("failed", 3)
            longs = [by_id[ids[n]] for n in specs if n.startswith("long")]
            assert all(j["state"] in ("queued", "running") for j in longs), longs
            assert any(j["state"] == "queued" for j in longs), longs  # more jobs than CPUs
            for name in specs:
                assert by_id[ids[name]]["native_id"] == native[name]  # the same SLURM jobs
            again = await call(
                c,
                "submit_command",
                {"argv": ["bash", "-c", "sleep 300"], "name": "long0", "idempotency_key": "slurm-restart-long0"},
            )
            assert again["job_id"] == ids["long0"] and not again["created"]
            logs = await call(c, "get_job_logs", {"job_id": ids["ok"]})
            assert "done-ok" in logs["text"]
            for name in specs:
                if name.startswith("long"):
                    out = await call(c, "cancel_job", {"job_id": ids[name], "grace_s": 1})
                    assert out["state"] in ("cancelled", "queued", "running"), out
    finally:
        ids_left = [n for n in native.values() if n]
        if ids_left:
            await asyncio.create_subprocess_exec("scancel", "--", *ids_left)
