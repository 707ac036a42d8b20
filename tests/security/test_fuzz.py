"""Property-based fuzzing of every tool's input schema through the real MCP client.

Every tool listed by ``tools/list`` (new tools join automatically) gets arguments
generated from its own JSON input schema (tests/security/schema_strategies.py):
valid-ish values, bounds and enum edges, wrong types, unknown keys, missing fields,
and hostile strings. Each call must end, within a per-call time-out, in either

* a result whose structuredContent validates against the tool's outputSchema, or
* a clean tool error: non-empty text, no traceback, no "Internal error" (an
  unexpected exception is a bug to fix, not a clean refusal).

Nothing heavy ever starts: every ``dry_run`` is forced to true, the default host
does not allow scripts' side effects beyond dry runs, and the other hosts are SSH
hosts on a closed loopback port (they fail fast). The in-memory session carries
most calls; a stdio session (a real ``llm-ops-mcp serve`` process) carries a share.
The total is asserted (>= 10,000) and printed by the last test.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncssh
import jsonschema
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from runners.config import Config, HostConfig, SlurmConfig
from server.app import build_server
from tests.helpers.ci import unavailable
from tests.security.mcp_thread import ClientThread
from tests.security.schema_strategies import arguments
from tools.context import ToolContext

REPO = Path(__file__).resolve().parents[2]
TOTAL_TARGET = 10_000
IN_MEMORY_SHARE = 10_400  # spread over the tools; stdio adds its own
STDIO_CALLS_PER_TOOL = 15
CALL_TIMEOUT_S = 30.0
SCALE = float(os.environ.get("LLM_OPS_FUZZ_SCALE", "1"))  # < 1 for quick local iterations only
CANARY = Path("/tmp/llmops-fuzz-canary")  # what HOSTILE_STRINGS try to create
ERRORS: dict[str, list[str]] = {}
COUNTS: dict[str, int] = {"in_memory": 0, "stdio": 0, "results": 0, "tool_errors": 0}


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # closed again when this returns: connects are refused


def fuzz_config(root: Path) -> Config:
    port = _closed_port()
    key = root / "id_unauthorised"
    if not key.exists():  # a valid key, so calls get as far as the (refused) TCP connect
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(key))
        key.chmod(0o600)
    (root / "known_hosts").write_text("")
    ssh = {
        "transport": "ssh",
        "address": "127.0.0.1",
        "port": port,
        "user": "nobody",
        "connect_timeout_s": 2.0,
        "identity_file": str(key),
        "known_hosts": str(root / "known_hosts"),
    }
    return Config(
        hosts={
            "local": HostConfig(
                name="local", workdir=str(root / "work"), allow_scripts=True, secrets=["LLM_OPS_FUZZ_SECRET"]
            ),
            "unreach": HostConfig(
                name="unreach", workdir="/srv/llm-ops", allow_scripts=True, gpus="A100-80GB:2", **ssh
            ),
            "unreach-slurm": HostConfig(
                name="unreach-slurm",
                workdir="/scratch/me/llm-ops",
                launcher="slurm",
                gpus="H100:4",
                allow_scripts=True,
                slurm=SlurmConfig(partition="gpu", account="lab"),
                **ssh,
            ),
        },
        default_host="local",
    )


def _existing_jobs(ct: ClientThread) -> list[str]:
    """Two real, finished jobs so job-id tools meet real ids (submitted once, before fuzzing)."""
    ids = []
    for argv in (
        ["bash", "-c", 'echo fuzz-ok; echo \'{"step": 1, "total_steps": 2, "loss": 1.5}\' >> "$LLM_OPS_METRICS"'],
        ["bash", "-c", "echo boom >&2; exit 3"],
    ):
        r = ct.call("submit_command", {"argv": argv})
        assert not r.is_error, r.content
        ids.append(r.structured_content["job_id"])
    for j in ids:
        r = ct.call("wait_for_job", {"job_id": j, "timeout_s": 30})
        assert not r.is_error and r.structured_content["job"]["terminal"], r.content
    return ids


@pytest.fixture(scope="module")
def fuzz_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ClientThread, list[str], Path]]:
    root = tmp_path_factory.mktemp("fuzz")
    old = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "LLM_OPS_FUZZ_SECRET")}
    os.environ["HF_HUB_OFFLINE"] = "1"  # model ids are resolved from the catalog only: no network waits
    os.environ["LLM_OPS_FUZZ_SECRET"] = "fuzz-secret-value-0123456789"
    CANARY.unlink(missing_ok=True)
    cfg = fuzz_config(root)
    app = build_server(state=ToolContext(config=cfg, state_dir=root / "state"))
    try:
        with ClientThread(lambda: Client(app, mode="auto")) as ct:
            jobs = _existing_jobs(ct)
            yield ct, jobs, root
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _tools() -> list[Any]:
    """tools/list of a fresh server (collection time: parametrize by name, so every tool is its own test)."""
    import anyio

    async def go() -> list[Any]:
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            app = build_server(state=ToolContext(config=fuzz_config(Path(d)), state_dir=Path(d) / "s"))
            async with Client(app, mode="auto") as c:
                return list((await c.list_tools()).tools)

    return anyio.run(go)


TOOLS = {t.name: t for t in _tools()}


FORCED: dict[str, st.SearchStrategy[Any]] = {"dry_run": st.just(True)}  # never start real work


def plausible(tool: Any, job_ids: list[str]) -> dict[str, st.SearchStrategy[Any]]:
    """Known-good values by field name, so that a good share of calls gets past validation."""
    ids = st.one_of(st.sampled_from(job_ids), st.from_regex(r"[a-z][a-z0-9-]{2,20}", fullmatch=True))
    models = st.sampled_from(
        [
            "Qwen/Qwen2.5-0.5B",
            "meta-llama/Llama-3.1-8B",
            "meta-llama/Llama-3.1-70B-Instruct",
            "mistralai/Mistral-7B-v0.1",
            "/srv/models/tiny",
            "~/models/x",
        ]
    )
    out: dict[str, st.SearchStrategy[Any]] = {
        "host": st.sampled_from(["local", "unreach", "unreach-slurm"]),
        "job_id": ids,
        "server_job_id": ids,
        "resume_from": ids,
        "model": models,
        "dataset": st.sampled_from(["tatsu-lab/alpaca", "/srv/data/train.jsonl", "~/d.jsonl"]),
        "argv": st.lists(
            st.sampled_from(["echo", "hi", "-n", "python", "train.py", "--lr=1e-4"]), min_size=1, max_size=4
        ).filter(lambda a: not a[0].startswith("-")),
        "repo": st.sampled_from(["https://github.com/org/repo.git", "git@github.com:org/repo.git", "/srv/repo"]),
        "script": st.sampled_from(["train.py", "scripts/eval.py"]),
        "ref": st.sampled_from(["main", "v1.0", "0123abcd"]),
        "time_limit": st.sampled_from(["00:10:00", "1-00:00:00", "30"]),
        "name": st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
        "output_name": st.from_regex(r"[a-z][a-z0-9_-]{0,20}", fullmatch=True),
        "env": st.dictionaries(
            st.from_regex(r"[A-Z][A-Z0-9_]{0,10}", fullmatch=True), st.text(max_size=10), max_size=2
        ),
        "grep": st.sampled_from(["fuzz", "boom|ok", "^\\[llm-ops\\]"]),
        "python": st.sampled_from(["3.11", "3.12"]),
        "revision": st.sampled_from(["main", "refs/pr/1"]),
    }
    if tool.name == "wait_for_job":  # keep waits short: a running target would hold the call
        out["timeout_s"] = st.floats(min_value=0.01, max_value=0.5)
    if tool.name in ("query_model", "benchmark_server"):
        out["timeout_s"] = st.floats(min_value=0.01, max_value=2.0)
        out["time_budget_s"] = st.floats(min_value=0.01, max_value=2.0)
    return out


_VALIDATORS: dict[str, Any] = {}


def _validator(tool: Any) -> Any:
    """One checked validator per tool (jsonschema.validate re-checks the schema on every call: slow)."""
    v = _VALIDATORS.get(tool.name)
    if v is None:
        cls = jsonschema.validators.validator_for(tool.output_schema)
        cls.check_schema(tool.output_schema)
        v = _VALIDATORS[tool.name] = cls(tool.output_schema)
    return v


def _short(args: dict[str, Any]) -> str:
    text = repr(args)
    return text if len(text) <= 600 else text[:600] + f"... ({len(text)} chars)"


def check_result(tool: Any, args: dict[str, Any], r: Any) -> None:
    if r.is_error:
        text = " ".join(getattr(c, "text", "") or "" for c in r.content).strip()
        assert text, f"{tool.name}: empty error for {_short(args)}"
        assert "Traceback" not in text, f"{tool.name}: traceback in error for {_short(args)}: {text[:500]}"
        assert "Internal error" not in text, f"{tool.name}: unexpected exception for {_short(args)}: {text[:500]}"
        COUNTS["tool_errors"] += 1
        if os.environ.get("LLM_OPS_FUZZ_DEBUG"):
            ERRORS.setdefault(tool.name, []).append(text[:140])
        return
    assert r.structured_content is not None, f"{tool.name}: no structuredContent for {_short(args)}"
    if tool.output_schema:
        _validator(tool).validate(r.structured_content)
    COUNTS["results"] += 1


# Tools whose every call does real work on the host (list_cached_models runs a Python scan of the HF
# cache, ~0.3 s) get a fixed small share: their inputs are tiny (a host name); the rest share the total.
FIXED_SHARE = {"list_cached_models": 40}


def _per_tool(name: str | None = None) -> int:
    if name in FIXED_SHARE:
        return max(1, math.ceil(SCALE * FIXED_SHARE[name]))
    rest = IN_MEMORY_SHARE - sum(FIXED_SHARE.get(n, 0) for n in TOOLS)
    flexible = max(1, sum(1 for n in TOOLS if n not in FIXED_SHARE))
    return max(1, math.ceil(SCALE * rest / flexible))


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", sorted(TOOLS))
def test_fuzz_tool_in_memory(name: str, fuzz_env: tuple[ClientThread, list[str], Path]) -> None:
    ct, job_ids, _root = fuzz_env
    tool = TOOLS[name]

    @settings(
        max_examples=_per_tool(name),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],
    )
    @given(args=arguments(tool.input_schema, FORCED, plausible(tool, job_ids)))
    def one(args: dict[str, Any]) -> None:
        r = ct.call(name, args, CALL_TIMEOUT_S)
        COUNTS["in_memory"] += 1
        check_result(tool, args, r)

    t0 = time.perf_counter()
    before = dict(COUNTS)
    one()
    print(
        f"{name}: {COUNTS['results'] - before['results']} results, {COUNTS['tool_errors'] - before['tool_errors']} errors, "
        f"{_per_tool(name)} examples, {time.perf_counter() - t0:.1f} s, in calls {ct.seconds.get(name, 0):.1f} s",
        file=sys.stderr,
    )
    assert ct.call("list_gpu_tiers", {}).is_error is False  # the server still serves


@pytest.fixture(scope="module")
def stdio_env(fuzz_env: tuple[ClientThread, list[str], Path]) -> Iterator[tuple[ClientThread, list[str]]]:
    """A real `llm-ops-mcp serve` over stdio, on the same config and catalog as the in-memory server."""
    _ct, job_ids, root = fuzz_env
    cfg = root / "config.toml"
    c = fuzz_config(root)
    lines = ['default_host = "local"']
    for name, h in c.hosts.items():
        lines.append(f'[hosts."{name}"]')
        for k, v in h.model_dump(exclude={"name"}, exclude_defaults=True).items():
            if k == "slurm":
                continue
            lines.append(f"{k} = {_toml(v)}")
        if h.slurm:
            lines.append(f'[hosts."{name}".slurm]')
            for k, v in h.slurm.model_dump(exclude_defaults=True).items():
                lines.append(f"{k} = {_toml(v)}")
    cfg.write_text("\n".join(lines) + "\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLM_OPS_MCP_STATE_DIR": str(root / "state"), "HF_HUB_OFFLINE": "1"}
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "server.cli", "serve", "--config", str(cfg)], env=env, cwd=str(REPO)
    )
    with ClientThread(lambda: Client(params, mode="auto")) as ct:
        yield ct, job_ids


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml(x) for x in v) + "]"
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


@pytest.mark.timeout(600)
def test_fuzz_every_tool_over_stdio(stdio_env: tuple[ClientThread, list[str]]) -> None:
    """A share of the calls through a real server process over stdio (the transport agents use)."""
    ct, job_ids = stdio_env

    def fuzz(name: str, tool: Any) -> None:
        @settings(
            max_examples=max(1, round(SCALE * STDIO_CALLS_PER_TOOL)),
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
            phases=[Phase.generate],
        )
        @given(args=arguments(tool.input_schema, FORCED, plausible(tool, job_ids)))
        def one(args: dict[str, Any]) -> None:
            r = ct.call(name, args, CALL_TIMEOUT_S)
            COUNTS["stdio"] += 1
            check_result(tool, args, r)

        one()

    for name, tool in sorted(TOOLS.items()):
        fuzz(name, tool)
    assert ct.call("list_gpu_tiers", {}).is_error is False


def test_total_calls_fuzzed_and_no_canary() -> None:
    total = COUNTS["in_memory"] + COUNTS["stdio"]
    print(
        f"\nfuzz: {total} calls over {len(TOOLS)} tools ({COUNTS['in_memory']} in-memory, {COUNTS['stdio']} stdio); "
        f"{COUNTS['results']} results valid against outputSchema, {COUNTS['tool_errors']} clean tool errors",
        file=sys.stderr,
    )
    for name, errs in ERRORS.items():
        import collections

        for text, n in collections.Counter(e[:90] for e in errs).most_common(6):
            print(f"  {name}: {n} x {text}", file=sys.stderr)
    assert not CANARY.exists(), "a hostile value was executed by a shell"
    if COUNTS["in_memory"] < IN_MEMORY_SHARE * 0.9 or not COUNTS["stdio"]:
        unavailable("only part of the fuzz suite ran (-k?)")
    assert total >= TOTAL_TARGET, COUNTS
