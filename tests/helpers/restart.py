"""Kill-the-server-and-restart tests share one shape; these are its parts.

A real server runs over stdio (``server_params``: its pid lands in a file, so a test can
SIGKILL exactly it), jobs wait on a gate file so they end while the server is down, and
the restarted server must report what happened meanwhile. Used by the local, SSH and
SLURM variants (tests/runners/test_job_restart.py, tests/faults/test_server_killed.py,
tests/runners/test_slurm_restart.py).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from mcp import Client
from mcp.client.stdio import StdioServerParameters

__all__ = ["call", "gated", "kill_server", "server_params", "submit_named", "wait_for_exit_codes"]

REPO = Path(__file__).resolve().parents[2]


def server_params(tmp_path: Path, cfg: Path, pidfile: Path) -> StdioServerParameters:
    """``llm-ops-mcp serve --config cfg`` over stdio; exec keeps the pid, so ``pidfile`` names the server itself."""
    argv = [sys.executable, "-m", "server.cli", "serve", "--config", str(cfg)]
    return StdioServerParameters(
        command="bash",
        args=["-c", f'echo $$ > {pidfile}; exec "$@"', "server", *argv],
        env={"PYTHONPATH": str(REPO), "LLM_OPS_MCP_STATE_DIR": str(tmp_path / "state")},
        cwd=str(REPO),
    )


async def call(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """A tool call that must succeed; its structured content."""
    r = await c.call_tool(tool, args)
    assert not r.is_error, r.content
    assert r.structured_content is not None
    return r.structured_content


def gated(gate: Path, then: str) -> str:
    """A bash script that waits for ``gate`` to exist, then runs ``then``."""
    return f"while [ ! -e {gate} ]; do sleep 0.05; done; {then}"


async def submit_named(c: Client, specs: dict[str, str], key_prefix: str) -> dict[str, dict[str, Any]]:
    """submit_command for each ``name: bash script``, with idempotency key ``key_prefix-name``."""
    out = {}
    for name, script in specs.items():
        args = {"argv": ["bash", "-c", script], "name": name, "idempotency_key": f"{key_prefix}-{name}"}
        out[name] = await call(c, "submit_command", args)
    return out


def kill_server(pidfile: Path) -> None:
    """SIGKILL: no lifespan clean-up, no chance to write anything."""
    os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def wait_for_exit_codes(jobs_dir: Path, job_ids: list[str], tries: int = 200) -> None:
    """Until each job's wrapper has written its exit_code (the jobs end while no server watches)."""
    for job_id in job_ids:
        for _ in range(tries):
            if (jobs_dir / job_id / "exit_code").exists():
                break
            await asyncio.sleep(0.05)
