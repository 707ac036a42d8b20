"""Start-up time: process start → answer to tools/list over stdio, ours against a bare MCPServer.

Target: our server at most 1.15x a bare ``MCPServer`` with one tool, measured in the
same run. The two are started alternately (ours, bare, ours, bare, ...), so both see
the same machine load, and each is timed the way an agent's client sees it: spawn the
process and speak raw JSON-RPC (initialize, initialized, tools/list) on its
stdin/stdout, so no client library's import is counted. The SDK's import is in both
figures; what the ratio shows is what our own modules add on top of it.

Ours is timed twice: as it usually starts (the tool listing stored by an earlier start
of the same code and config, ``server/tool_cache.py``) and as the first start of new
code or a new config (a fresh state dir each time: every tool is built before tools/list
is answered). The target is on the first; the second is reported beside it.

Both children write their bytecode under one temporary ``PYTHONPYCACHEPREFIX`` (warmed
by one untimed start of each), so the figures are those of an installed package with
its ``.pyc`` files and do not depend on ``PYTHONDONTWRITEBYTECODE`` in the caller's
environment; nothing is written into the venv.

Usage: ``.venv/bin/python bench/startup.py [--runs 7] [--record bench/data/startup.jsonl --label after]``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 1.15

# The yardstick: the SDK's own server with one tool, nothing else.
BARE_SERVER = """
from mcp.server.mcpserver import MCPServer

app = MCPServer("bare")


@app.tool()
def echo(text: str) -> str:
    \"\"\"Return the text.\"\"\"
    return text


app.run("stdio")
"""

MESSAGES = [
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


def one_run(argv: list[str], env: dict[str, str]) -> tuple[float, int, float]:
    """Seconds from spawn to the tools/list answer, how many tools it listed, and the child's CPU seconds.

    The CPU figure (user + system until the child exits after stdin closes) barely moves with the
    machine's load, where the wall time does: both are reported.
    """
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    assert p.stdin and p.stdout
    p.stdin.write(b"".join(json.dumps(m).encode() + b"\n" for m in MESSAGES))
    p.stdin.flush()
    while True:
        line = p.stdout.readline()
        if not line:
            p.wait(10)
            raise RuntimeError(f"{argv[1:]} exited ({p.returncode}) before answering tools/list")
        msg = json.loads(line)
        if msg.get("id") == 2:
            n_tools = len(msg["result"]["tools"])
            break
    elapsed = time.perf_counter() - t0
    p.stdin.close()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if n_tools == 0:
        raise RuntimeError(f"{argv[1:]} listed no tools")
    return elapsed, n_tools, usage.ru_utime + usage.ru_stime


def child_env(state_dir: str, pycache: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env.update(LLM_OPS_MCP_STATE_DIR=state_dir, PYTHONPYCACHEPREFIX=pycache, PYTHONPATH=str(ROOT))
    return env


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "server", "tools", "runners"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "")
    except OSError:
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=7, help="timed starts of each (median reported)")
    ap.add_argument("--record", type=Path, help="append the result as one JSON line to this file")
    ap.add_argument("--label", default="", help="a word for the record (before/after ...)")
    args = ap.parse_args()
    ours_argv = [sys.executable, "-m", "server.cli", "serve"]
    bare_argv = [sys.executable, "-c", BARE_SERVER]
    with tempfile.TemporaryDirectory() as td:
        env = child_env(f"{td}/state", f"{td}/pycache")
        one_run(ours_argv, env)  # untimed: fills the bytecode cache and stores the tool listing
        one_run(bare_argv, env)
        series: dict[str, list[float]] = {"ours": [], "first": [], "bare": []}
        cpu: dict[str, list[float]] = {"ours": [], "first": [], "bare": []}
        n_tools = 0
        for i in range(args.runs):  # interleaved, rotating which goes first
            order = ["ours", "first", "bare"]
            for what in order[i % 3 :] + order[: i % 3]:
                if what == "bare":
                    t, _, c = one_run(bare_argv, env)
                elif what == "first":  # a fresh state dir: no stored listing
                    t, _, c = one_run(ours_argv, child_env(f"{td}/fresh-{i}", f"{td}/pycache"))
                else:
                    t, n_tools, c = one_run(ours_argv, env)
                series[what].append(t)
                cpu[what].append(c)
    ours, first, bare = series["ours"], series["first"], series["bare"]
    om, fm, bm = statistics.median(ours), statistics.median(first), statistics.median(bare)
    ratio = om / bm

    def line(label: str, xs: list[float]) -> str:
        med = statistics.median(xs)
        return f"{label}: median {med * 1000:.0f} ms (min {min(xs) * 1000:.0f}, max {max(xs) * 1000:.0f})"

    print(line(f"ours, listing stored ({n_tools} tools)", ours))
    print(line("ours, first start of this code/config (no stored listing)", first) + f", {fm / bm:.2f}x bare")
    print(line("bare MCPServer (1 tool)", bare))
    paired = statistics.median(o / b for o, b in zip(ours, bare, strict=True))
    cpu_ratio = statistics.median(cpu["ours"]) / statistics.median(cpu["bare"])
    cpu_first = statistics.median(cpu["first"]) / statistics.median(cpu["bare"])
    print(
        f"ratio {ratio:.2f}x over {args.runs} interleaved runs each (process start -> tools/list answer, stdio); "
        f"target <= {TARGET_RATIO:.2f}x: {'PASS' if ratio <= TARGET_RATIO else 'FAIL'}"
    )
    print(
        f"load-robust views: median of the per-round ratios {paired:.2f}x; CPU seconds (user+sys) "
        f"{cpu_ratio:.2f}x bare with the listing stored, {cpu_first:.2f}x on a first start"
    )
    if args.record:
        rec = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "label": args.label,
            "commit": git_commit(),
            "command": "python bench/startup.py " + " ".join(sys.argv[1:]),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": cpu_model(),
                "load_avg_1m": round(os.getloadavg()[0], 2),
                "python": platform.python_version(),
            },
            "runs": args.runs,
            "ours_tools": n_tools,
            "ours_ms": [round(t * 1000) for t in ours],
            "first_start_ms": [round(t * 1000) for t in first],
            "bare_ms": [round(t * 1000) for t in bare],
            "ours_median_ms": round(om * 1000),
            "first_start_median_ms": round(fm * 1000),
            "bare_median_ms": round(bm * 1000),
            "ratio": round(ratio, 3),
            "first_start_ratio": round(fm / bm, 3),
            "paired_ratio_median": round(paired, 3),
            "cpu_ms": {k: [round(c * 1000) for c in v] for k, v in cpu.items()},
            "cpu_ratio": round(cpu_ratio, 3),
            "cpu_first_start_ratio": round(cpu_first, 3),
        }
        args.record.parent.mkdir(parents=True, exist_ok=True)
        with args.record.open("a") as f:
            f.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
