"""Injection canaries: shell and flag injection never executes, on local, SSH and SLURM hosts.

Every string field that reaches a command — argv, env values, names, model, dataset,
paths, repo, ref, script args, output names, served names, extra_args, patterns —
gets values like ``$(touch CANARY)``, backticks, ``;``, ``&&``, ``|``, newlines,
``${IFS}`` forms and leading ``-`` flags (``--upload-pack=``, ``-oProxyCommand=``,
``-c core.sshCommand=``). Each is either refused by validation, or accepted and then
*really run*: submit_command and submit_script over the local, SSH (real sshd) and
SLURM (real single-node cluster) hosts; fine-tune, quantize, download and setup_host
jobs on a host whose interpreter is ``true`` (run.sh, the env file and the traps run
for real; the payload itself is skipped); a real vLLM start with the stand-in server.
After each job ends, the canary file must not exist. The tally (tried / refused /
accepted and run / triggered) is printed by the last test.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig, SlurmConfig
from runners.engine import JobEngine
from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
TALLY = {"tried": 0, "refused": 0, "accepted_and_run": 0, "triggered": 0}


def canaries(c: Path) -> list[str]:
    """Hostile values that create ``c`` if any shell or option parser ever interprets them."""
    return [
        f"$(touch {c})",
        f"`touch {c}`",
        f"; touch {c}",
        f"&& touch {c}",
        f"| touch {c}",
        f"x\ntouch {c}",
        f"$(touch${{IFS}}{c})",
        f";touch${{IFS}}{c}",
        f"'; touch {c}; '",
        f'"; touch {c}; "',
        f"-oProxyCommand=touch {c}",
        f"--upload-pack=touch {c}",
        f"-c core.sshCommand=touch {c}",
        f"--output={c}",
        f"-o{c}",
    ]


def compact(c: Path) -> list[str]:
    """The space-free ones: they pass the 'no whitespace' rules of path and URL validators."""
    return [v for v in canaries(c) if not any(ch.isspace() for ch in v)] + [f"/tmp/$(touch${{IFS}}{c})"]


@pytest.fixture
def canary(tmp_path: Path) -> Path:
    c = tmp_path / "CANARY"
    yield c
    if c.exists():
        TALLY["triggered"] += 1
    assert not c.exists(), "an injected command ran"


def host_for(kind: str, request: pytest.FixtureRequest, tmp_path: Path, **kw: Any) -> HostConfig:
    work = str(tmp_path / f"work-{kind}")
    if kind == "local":
        return HostConfig(name="h", workdir=work, allow_scripts=True, **kw)
    if kind == "ssh":
        return request.getfixturevalue("sshd").host_config("h", workdir=work, allow_scripts=True, **kw)
    if kind == "slurm":
        request.getfixturevalue("slurm_cluster")
        return HostConfig(
            name="h", workdir=work, allow_scripts=True, launcher="slurm", slurm=SlurmConfig(time_limit="00:05:00"), **kw
        )
    raise ValueError(kind)


@pytest.fixture
async def client_for(tmp_path: Path) -> AsyncIterator[Any]:
    """``await client_for(host)`` → a real in-memory MCP client on a server with that one host."""
    stack: list[Any] = []

    async def make(host: HostConfig) -> Client:
        state = ToolContext(
            config=Config(hosts={host.name: host}, default_host=host.name), state_dir=tmp_path / f"state-{len(stack)}"
        )
        c = Client(build_server(state=state), mode="auto")
        await c.__aenter__()
        stack.append((c, state))
        return c

    yield make
    for c, state in reversed(stack):
        engine = JobEngine(state.config, state.state_dir)
        try:
            for v in await engine.list_jobs():
                if not v.terminal:
                    await engine.cancel(v.job_id, grace_s=1)
        finally:
            await engine.aclose()
        await c.__aexit__(None, None, None)


async def submit(c: Client, tool: str, args: dict[str, Any]) -> dict[str, Any] | None:
    """One canary try: None when refused (a clean tool error), else the result."""
    TALLY["tried"] += 1
    r = await c.call_tool(tool, args)
    if r.is_error:
        text = r.content[0].text
        assert text and "Traceback" not in text and "Internal error" not in text, text
        TALLY["refused"] += 1
        return None
    return r.structured_content


async def finish(c: Client, job_id: str, timeout: float = 100) -> dict[str, Any]:
    r = await c.call_tool("wait_for_job", {"job_id": job_id, "timeout_s": timeout})
    assert not r.is_error, r.content[0].text
    job = r.structured_content["job"]
    assert job["terminal"], job
    TALLY["accepted_and_run"] += 1
    return job


async def log_of(c: Client, job_id: str) -> str:
    r = await c.call_tool("get_job_logs", {"job_id": job_id, "offset": 0})
    assert not r.is_error
    return r.structured_content["text"]


# -- submit_command: argv, env values, name, time_limit -------------------------------------------------
@pytest.mark.parametrize("kind", ["local", "ssh", "slurm"])
async def test_submit_command_canaries(kind: str, request, tmp_path: Path, canary: Path, client_for) -> None:
    c = await client_for(host_for(kind, request, tmp_path))
    values = canaries(canary)
    env = {f"CANARY_{i}": v for i, v in enumerate(values)}
    # argv values are arguments, env values are data: one real job carries all of them at once.
    script = 'printf "%s\\n" "$@"; for v in $(compgen -e CANARY_); do printf "%s=%s\\n" "$v" "${!v}"; done'
    out = await submit(
        c,
        "submit_command",
        {
            "argv": ["bash", "-c", script, "argv0", *values],
            "env": env,
            "name": values[0],
        },
    )
    TALLY["tried"] += 2 * len(values)  # the argv and env values this one submit carried (the name: submit's 1)
    assert out is not None and out["job_id"]
    job = await finish(c, out["job_id"])
    assert job["state"] == "succeeded", job
    text = await log_of(c, out["job_id"])
    for v in values:  # each value arrived verbatim (the newline one as its two lines)
        assert v.split("\n")[-1] in text
    # Flag injection into argv[0] and nonsense time limits are refused before anything runs.
    for v in values:
        if v.startswith("-"):
            assert await submit(c, "submit_command", {"argv": [v, "x"]}) is None
        assert await submit(c, "submit_command", {"argv": ["true"], "time_limit": v}) is None


# -- submit_script: repo, ref, script, args, env ----------------------------------------------------------
def make_repo(root: Path) -> Path:
    repo = root / "repo"
    repo.mkdir()
    (repo / "show.py").write_text("import os, sys\nprint('ARGS', sys.argv[1:])\nprint('ENV', os.environ.get('V'))\n")
    git = ["git", "-C", str(repo), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    return repo


@pytest.mark.parametrize("kind", ["local", "ssh", "slurm"])
async def test_submit_script_canaries(kind: str, request, tmp_path: Path, canary: Path, client_for) -> None:
    repo = make_repo(tmp_path)
    c = await client_for(host_for(kind, request, tmp_path, python=sys.executable))
    values = canaries(canary)
    base = {"repo": str(repo), "script": "show.py", "ref": "main"}
    out = await submit(c, "submit_script", {**base, "args": values, "env": {"V": values[0]}})
    TALLY["tried"] += len(values)  # each arg
    assert out is not None
    job = await finish(c, out["job_id"])
    assert job["state"] == "succeeded", job
    assert "ARGS" in await log_of(c, out["job_id"])
    if kind == "slurm":
        return  # repo/ref/script validation is host-independent: local and SSH cover it
    ran = []
    for field in ("repo", "ref", "script"):
        for v in values + compact(canary):
            out = await submit(c, "submit_script", {**base, field: v})
            if out is not None:
                ran.append(out["job_id"])
    for j in ran:  # accepted (e.g. a space-free path): it must fail as a missing repo, never run the canary
        assert (await finish(c, j))["state"] == "failed"


# -- payload jobs: fine-tune, quantize, download, setup_host on an interpreter that does nothing --------
PAYLOAD_FIELDS: dict[str, tuple[dict[str, Any], list[str]]] = {
    "submit_finetune": (
        {"model": "Qwen/Qwen2.5-0.5B", "dataset": "tatsu-lab/alpaca", "max_steps": 1, "gpus": 0},
        [
            "model",
            "dataset",
            "output_name",
            "wandb_project",
            "chat_template",
            "resume_from",
            "target_modules",
            "time_limit",
        ],
    ),
    "quantize_model": (
        {"model": "Qwen/Qwen2.5-0.5B", "method": "bnb-nf4"},
        ["model", "calibration_dataset", "output_name", "time_limit"],
    ),
    "download_model": ({"model": "Qwen/Qwen2.5-0.5B"}, ["model", "revision", "allow_patterns"]),
    "setup_host": ({"components": ["vllm"]}, ["python", "extra_packages", "env_name"]),
}
LIST_FIELDS = {"target_modules", "allow_patterns", "extra_packages"}


@pytest.mark.parametrize("tool", sorted(PAYLOAD_FIELDS))
async def test_payload_job_canaries(tool: str, request, tmp_path: Path, canary: Path, client_for, monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    c = await client_for(host_for("local", request, tmp_path, python="/bin/true", gpus="H100:1"))
    base, fields = PAYLOAD_FIELDS[tool]
    ran = []
    for field in fields:
        for v in canaries(canary) + compact(canary):
            args = {**base, field: [v] if field in LIST_FIELDS else v, "dry_run": True}
            out = await submit(c, tool, args)
            if out is None:
                continue
            # Accepted: the value may only reach job.json (data), never run.sh outside a quoted token.
            script = (out.get("submit") or out).get("run_script") or ""
            assert v not in script or _quoted_in(script, v), (tool, field, v)
            real = await submit(c, tool, {**args, "dry_run": False})
            if real is not None:
                ran.append(real["job_id"])
    for j in ran:
        await finish(c, j)


def _quoted_in(script: str, v: str) -> bool:
    import shlex

    return shlex.quote(v) in script


# -- serving: a real start with the stand-in vLLM, canaries in the names and extra_args ----------------
async def test_serve_canaries(request, tmp_path: Path, canary: Path, client_for, monkeypatch) -> None:
    from tests.standin_vllm_server import install_standin

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}
    c = await client_for(host_for("local", request, tmp_path, gpus="H100:1", env=env))
    base = {"model": "Qwen/Qwen2.5-0.5B"}
    accepted = []
    for v in canaries(canary) + compact(canary):
        tries = [
            {"model": v},
            {"served_model_name": v},
            {"api_key": v},
            {"quantization": v},
            {"lora_adapters": [{"name": v, "path": str(tmp_path)}]},
            {"lora_adapters": [{"name": "a", "path": v}]},
            {"extra_args": {v: 1}},
            {"extra_args": {"served-model-name": v}},
            {"time_limit": v},
        ]
        for t in tries:
            out = await submit(c, "start_vllm_server", {**base, **t, "dry_run": True})
            if out is not None:
                assert v not in out["command"][:1], out["command"]  # never the program
                assert not any(a.startswith(v) and v.startswith("-") for a in out["command"]), (t, out["command"])
                accepted.append(t)
    assert len(accepted) < 5 * len(canaries(canary)), accepted  # most are refused outright
    real = await submit(c, "start_vllm_server", {**base, "served_model_name": "served-x", "dry_run": False})
    assert real is not None
    r = await c.call_tool("wait_for_job", {"job_id": real["job_id"], "until": "ready", "timeout_s": 60})
    assert not r.is_error and r.structured_content["reached"], r.content[0].text
    await submit(c, "stop_vllm_server", {"job_id": real["job_id"], "grace_s": 5})
    TALLY["accepted_and_run"] += 1


def test_canary_tally() -> None:
    print(
        f"\ninjection canaries: {TALLY['tried']} tried, {TALLY['refused']} refused by validation, "
        f"{TALLY['accepted_and_run']} jobs really run with canaries, {TALLY['triggered']} triggered",
        file=sys.stderr,
    )
    assert TALLY["triggered"] == 0
