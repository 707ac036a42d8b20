"""Paths: what a job writes and what is uploaded stays under the host's workdir.

Names that become path components (output_name, env_name, upload names, job ids) refuse
``..``, absolute paths, separators and dot-files; every directory a tool reports sits
under the host's workdir; and a script that reaches outside its repository through a
symlink is refused before it runs.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from runners.errors import InvalidInput
from runners.jobdir import check_uploads
from server.app import build_server
from tools.context import ToolContext

pytestmark = pytest.mark.anyio
ESCAPES = [
    "..",
    "../x",
    "../../etc/passwd",
    "/etc/passwd",
    "/tmp/elsewhere",
    "a/../../b",
    "a/b",
    ".hidden",
    "~",
    "~/x",
    "x\x00y",
    "-x",
    "",
]


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ToolContext:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    host = HostConfig(name="h", workdir=str(tmp_path / "work"), allow_scripts=True, python="/bin/true", gpus="H100:1")
    return ToolContext(config=Config(hosts={"h": host}, default_host="h"), state_dir=tmp_path / "state")


async def _call(c: Client, tool: str, args: dict[str, Any]) -> tuple[bool, Any]:
    r = await c.call_tool(tool, args)
    if r.is_error:
        assert "Traceback" not in r.content[0].text
        return False, r.content[0].text
    return True, r.structured_content


@pytest.mark.parametrize("value", ESCAPES)
async def test_path_names_cannot_escape(value: str, state: ToolContext, tmp_path: Path) -> None:
    tries = [
        ("quantize_model", {"model": "Qwen/Qwen2.5-0.5B", "method": "bnb-nf4", "output_name": value}),
        ("submit_finetune", {"model": "Qwen/Qwen2.5-0.5B", "dataset": "tatsu-lab/alpaca", "output_name": value}),
        ("setup_host", {"components": ["vllm"], "env_name": value}),
        ("get_job_logs", {"job_id": value}),
    ]
    async with Client(build_server(state=state), mode="auto") as c:
        for tool, args in tries:
            ok, out = await _call(c, tool, {**args, "dry_run": True} if tool != "get_job_logs" else args)
            assert not ok, (tool, value, out)
    with pytest.raises(InvalidInput):
        check_uploads({value: b"x"})


async def test_reported_directories_are_under_the_workdir(state: ToolContext, tmp_path: Path) -> None:
    work = str((tmp_path / "work").resolve())
    async with Client(build_server(state=state), mode="auto") as c:
        ok, q = await _call(c, "quantize_model", {"model": "Qwen/Qwen2.5-0.5B", "method": "bnb-nf4", "dry_run": True})
        assert (
            ok and q["job_dir"].startswith(work + "/jobs/") and q["output_dir"].startswith(q["job_dir"] + "/outputs/")
        )
        ok, s = await _call(c, "setup_host", {"components": ["vllm"], "env_name": "x", "dry_run": True})
        assert ok and s["env_dir"].startswith(work + "/")
        ds = tmp_path / "train.jsonl"
        ds.write_text(json.dumps({"instruction": "a", "output": "b"}) + "\n")
        ok, f = await _call(
            c, "submit_finetune", {"model": "Qwen/Qwen2.5-0.5B", "dataset": str(ds), "gpus": 0, "max_steps": 1}
        )
        assert ok, f
        job_dir = Path(f["submit"]["job_dir"])
        assert str(job_dir).startswith(work + "/jobs/")
        # The upload landed in the job directory under a fixed name, nowhere else.
        assert (job_dir / "dataset.jsonl").read_bytes() == ds.read_bytes()
        await c.call_tool("wait_for_job", {"job_id": f["job_id"], "timeout_s": 30})
    outside = {p for p in tmp_path.rglob("*") if not str(p.resolve()).startswith((work, str(tmp_path / "state")))}
    assert outside == {ds}, outside


async def test_script_symlinked_outside_the_repo_is_refused(tmp_path: Path) -> None:
    canary = tmp_path / "outside-ran"
    evil = tmp_path / "evil.py"
    evil.write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "ok.py").write_text("print('inside')\n")
    (repo / "escape.py").symlink_to(evil)
    git = ["git", "-C", str(repo), "-c", "user.email=t@e", "-c", "user.name=t"]
    subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
    subprocess.run([*git, "add", "."], check=True)
    subprocess.run([*git, "commit", "-qm", "x"], check=True)
    host = HostConfig(name="h", workdir=str(tmp_path / "work"), allow_scripts=True, python=sys.executable)
    state = ToolContext(config=Config(hosts={"h": host}, default_host="h"), state_dir=tmp_path / "state")
    async with Client(build_server(state=state), mode="auto") as c:
        results = {}
        for script in ("ok.py", "escape.py"):
            ok, out = await _call(c, "submit_script", {"repo": str(repo), "script": script})
            assert ok, out
            r = await c.call_tool("wait_for_job", {"job_id": out["job_id"], "timeout_s": 60})
            results[script] = r.structured_content["job"]
    assert results["ok.py"]["state"] == "succeeded"
    assert results["escape.py"]["state"] == "failed"
    assert not canary.exists()
    err = results["escape.py"].get("error") or {}
    assert "ScriptOutsideRepo" in json.dumps(err), err
