"""Secrets end to end: known fake values for the Hub token, the wandb key and a vLLM API key
go through real jobs (a command that prints them, a failing one, a fine-tune that needs the
wandb key, a vLLM server (stand-in) with a key from the environment and one made on the host)
and appear in no tool result, no returned log or resource, no job.json and no catalog row
(the SQLite file's bytes, WAL included, are searched too). They do reach the 0600 env file.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from server.app import build_server
from tests.standin_vllm_server import install_standin
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
FAKE = {
    "HF_TOKEN": "hf_FAKEfakeFAKEfake0123456789abcdEFGH",
    "WANDB_API_KEY": "wandbFAKE0123456789abcdef0123456789abcdef",
    "VLLM_FAKE_KEY": "vllm-fake-key-7f3a9c1e5b2d4a6c8e0f",
}


class Recorder:
    """Every result an agent would see, kept for the final search."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.seen: list[str] = []

    async def call(self, tool: str, args: dict[str, Any], ok: bool = True) -> dict[str, Any]:
        r = await self.c.call_tool(tool, args)
        self.seen.append(json.dumps(r.model_dump(mode="json"), ensure_ascii=False))
        assert r.is_error is not ok, (tool, r.content[0].text if r.content else r)
        return r.structured_content or {}

    async def resource(self, uri: str) -> None:
        r = await self.c.read_resource(uri)
        self.seen.append(json.dumps(r.model_dump(mode="json"), ensure_ascii=False))


async def test_no_secret_leaves_the_env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in FAKE.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}
    hosts = {
        "h": HostConfig(
            name="h",
            workdir=str(work),
            allow_scripts=True,
            gpus="H100:1",
            env=env,
            secrets=["HF_TOKEN", "WANDB_API_KEY"],
        ),
        # fine-tunes run their payload with a no-op interpreter: the job, its env and run.sh are real
        "stub": HostConfig(name="stub", workdir=str(work), python="/bin/true", gpus="H100:1", secrets=["HF_TOKEN"]),
    }
    state = ToolContext(config=Config(hosts=hosts, default_host="h"), state_dir=tmp_path / "state")
    jobs: list[str] = []
    async with Client(build_server(state=state), mode="auto") as c:
        rec = Recorder(c)
        # A command that prints every secret, one that fails with them in its error output.
        show = 'echo "hf=$HF_TOKEN wandb=$WANDB_API_KEY"; env | grep -E "TOKEN|KEY"'
        for argv in (["bash", "-c", show], ["bash", "-c", f"{show} >&2; echo RuntimeError: $HF_TOKEN >&2; exit 1"]):
            out = await rec.call("submit_command", {"argv": argv, "name": "secrets"})
            jobs.append(out["job_id"])
        ft = await rec.call(
            "submit_finetune",
            {
                "host": "stub",
                "model": "Qwen/Qwen2.5-0.5B",
                "dataset": "tatsu-lab/alpaca",
                "wandb_project": "p",
                "wandb_mode": "online",
                "max_steps": 1,
            },
        )
        assert (
            "WANDB_API_KEY" in ft["submit"]["job"]["spec"]["secrets"]
            if ft["submit"].get("job", {}).get("spec")
            else True
        )
        jobs.append(ft["job_id"])
        dry = await rec.call("submit_command", {"argv": ["true"], "dry_run": True})
        assert FAKE["HF_TOKEN"] not in dry["run_script"] + dry["job_json"]
        # Two vLLM servers (stand-in): a key from the controller's environment, and one made on the host.
        servers = []
        for key in ("env:VLLM_FAKE_KEY", "auto"):
            s = await rec.call("start_vllm_server", {"model": "Qwen/Qwen2.5-0.5B", "api_key": key})
            servers.append(s["job_id"])
            jobs.append(s["job_id"])
            w = await rec.call("wait_for_job", {"job_id": s["job_id"], "until": "ready", "timeout_s": 60})
            assert w["reached"], w
            q = await rec.call("query_model", {"server_job_id": s["job_id"], "prompt": "hi", "max_tokens": 4})
            assert q["text"] is not None
        for j in jobs:
            if j not in servers:
                await rec.call("wait_for_job", {"job_id": j, "timeout_s": 60})
            await rec.call("get_job_status", {"job_id": j})
            await rec.call("get_job_logs", {"job_id": j, "offset": 0, "max_bytes": 1 << 20})
            await rec.call("get_job_logs", {"job_id": j})
            await rec.call("get_job_logs", {"job_id": j, "grep": "hf|wandb|KEY|TOKEN"})
            await rec.resource(f"jobs://{j}/log")
        for s in servers:
            await rec.call("stop_vllm_server", {"job_id": s, "grace_s": 5})
        await rec.call("list_jobs", {"limit": 100})
        await rec.call("list_hosts", {"check": True})

    # The host generated the 'auto' key into the job's env file: it is a secret too.
    auto_env = (work / "jobs" / servers[1] / "env").read_text()
    auto_key = next(
        line.split("=", 1)[1].strip("'\"") for line in auto_env.splitlines() if line.startswith("export VLLM_API_KEY=")
    )
    secrets = [*FAKE.values(), auto_key]

    # They were really used: the command's raw log holds them, and the env files (0600) hold them.
    raw = (work / "jobs" / jobs[0] / "output.log").read_text()
    assert FAKE["HF_TOKEN"] in raw and FAKE["WANDB_API_KEY"] in raw
    for j in jobs:
        mode = stat.S_IMODE((work / "jobs" / j / "env").stat().st_mode)
        assert mode == 0o600, (j, oct(mode))

    seen = "\n".join(rec.seen)
    assert "[REDACTED" in seen  # the logs were redacted, not empty
    files = {p: p.read_bytes() for p in work.rglob("job.json")}
    files.update({p: p.read_bytes() for p in (tmp_path / "state").rglob("*") if p.is_file()})
    assert any(p.name.startswith("jobs.sqlite3") for p in files)
    for s in secrets:
        for chunk in rec.seen:
            i = chunk.find(s)
            assert i < 0, (
                f"a secret ({s[:6]}...) is in a tool result, log or resource: ...{chunk[max(0, i - 300) : i + 60]}"
            )
        for p, data in files.items():
            assert s.encode() not in data, f"a secret ({s[:6]}...) is in {p}"
