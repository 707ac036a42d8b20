"""What a start loads: with SSH hosts in the config, asyncssh waits for the first SSH connection.

asyncssh (and the cryptography it loads) takes a second or two to import on a small
machine; building the tools only has to make the hosts known by name for proxy_jump.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import sys, anyio
from server.app import build_server
app = build_server()
app.ensure_registered()  # what the first request does when the listing was stored
from runners.transports.ssh_hosts import HOSTS
print(len(anyio.run(app.list_tools)), sorted(HOSTS), "asyncssh" in sys.modules, "aiohttp" in sys.modules)
"""


def test_ssh_hosts_are_known_by_name_without_importing_asyncssh(tmp_path):
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        '[hosts.login]\ntransport = "ssh"\naddress = "login.example.org"\nuser = "me"\nworkdir = "/tmp/w"\n'
        '[hosts.node]\ntransport = "ssh"\naddress = "node.internal"\nuser = "me"\nproxy_jump = "login"\n'
        'workdir = "/tmp/w"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "LLM_OPS_MCP_CONFIG": str(cfg)}
    env["LLM_OPS_MCP_STATE_DIR"] = str(tmp_path / "state")
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    # the 22 tools (20 + evaluate_model and compare_runs); neither asyncssh nor aiohttp (benchmark_server's client) is loaded
    assert out.stdout.split() == ["22", "['login',", "'node']", "False", "False"], out.stdout
