"""Start-up time: process start → answer to tools/list over stdio (median of 10).

Target: under 1.0 s. Measured the way an agent's client sees it: spawn
``llm-ops-mcp serve`` with a raw JSON-RPC exchange (initialize, initialized,
tools/list) on its stdin/stdout, so the client library's own import time is not
counted. Usage: ``.venv/bin/python bench/startup.py [--runs 10]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def one_run(env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", "server.cli", "serve"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    assert p.stdin and p.stdout
    msgs = [
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "initialize",
            "params": {
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "0"},
            },
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/list"},
    ]
    p.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in msgs))
    p.stdin.flush()
    n_tools = 0
    while True:
        line = p.stdout.readline()
        if not line:
            raise RuntimeError("server exited before answering tools/list")
        msg = json.loads(line)
        if msg.get("id") == 2:
            n_tools = len(msg["result"]["tools"])
            break
    dt = time.perf_counter() - t0
    p.stdin.close()
    p.wait(10)
    if n_tools == 0:
        raise RuntimeError("no tools listed")
    return dt


def sdk_import_time() -> float:
    """The floor we cannot go under: a bare interpreter importing the MCP SDK's server."""
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import mcp.server.mcpserver"], check=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as td:
        env = {**os.environ, "LLM_OPS_MCP_STATE_DIR": td}
        one_run(env)  # warm the bytecode cache
        times, floor = [], []
        for _ in range(args.runs):  # interleaved, so both see the same machine load
            times.append(one_run(env))
            floor.append(sdk_import_time())
    med = statistics.median(times)
    fmed = statistics.median(floor)
    print(
        f"startup (process start -> tools/list answer, stdio): median {med * 1000:.0f} ms, "
        f"min {min(times) * 1000:.0f} ms, max {max(times) * 1000:.0f} ms over {args.runs} runs; "
        f"target < 1000 ms: {'PASS' if med < 1.0 else 'FAIL'}"
    )
    print(
        f"floor (python -c 'import mcp.server.mcpserver'): median {fmed * 1000:.0f} ms; "
        f"our own cost above the SDK import: {(med - fmed) * 1000:.0f} ms ({med / fmed:.2f}x the floor)"
    )


if __name__ == "__main__":
    main()
