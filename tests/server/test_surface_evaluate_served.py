"""evaluate_model(server_job_id=...) through the real MCP client: lm-eval's local-completions
back-end against a ready server job, its API key read on the host from the server job's env file.

The server is the STAND-IN for ``vllm serve`` (tests/standin_vllm_server.py) serving the tiny
Llama's directory, so it tokenizes with the tiny model's own tokenizer.json, the one lm-eval loads
on its side to count context lengths. The stand-in has no weights: it answers lm-eval's
``echo`` + ``logprobs`` requests with log-probabilities from a fixed, prompt-dependent rule
(in vLLM 0.26.0's response shape), so what this checks is the plumbing — the job finds the
server, authenticates (the stand-in refuses a request without the key with 401), lm-eval parses
every answer and the metric comes back — not the score. The key must appear in no tool result,
returned log or job.json.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import AsyncIterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from server.app import build_server
from tests.helpers.tiny_eval import TASK_NAME, write_colour_task
from tests.helpers.tiny_model import build_tiny_model
from tests.standin_tokenizer import StandinTokenizer
from tests.standin_vllm_server import StandinState, _step_logprob, install_standin, make_handler
from tools.context import ToolContext

# One lm-eval job (torch + lm-eval imports on a shared 2-core box) past the suite's 300 s default.
pytestmark = [pytest.mark.anyio, pytest.mark.slow, pytest.mark.timeout(600)]
LIMIT = 3  # questions; each has four choices: 12 log-likelihood requests
MAX_MODEL_LEN = 16  # start_vllm_server's smallest


@pytest.fixture
async def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[ToolContext]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}
    host = HostConfig(name="gpubox", workdir=str(tmp_path / "work"), gpus="H100:1", env=env, allow_scripts=True)
    ctx = ToolContext(config=Config(hosts={"gpubox": host}, default_host="gpubox"), state_dir=tmp_path / "state")
    yield ctx
    engine = JobEngine(ctx.config, ctx.state_dir)  # stop whatever a failed assertion left running
    try:
        for v in await engine.list_jobs():
            if not v.terminal:
                await engine.cancel(v.job_id, grace_s=2)
    finally:
        await engine.aclose()


class Seen:
    """Every tool result an agent would see, kept for the search for the key."""

    def __init__(self, c: Client) -> None:
        self.c, self.texts = c, []

    async def call(self, tool: str, args: dict[str, Any], ok: bool = True) -> Any:
        r = await self.c.call_tool(tool, args)
        self.texts.append(json.dumps(r.model_dump(mode="json"), ensure_ascii=False))
        assert r.is_error is not ok, (tool, r.content[0].text if r.content else r)
        return r.structured_content if ok else r.content[0].text


async def test_served_model_is_evaluated_through_local_completions(state: ToolContext, tmp_path: Path) -> None:
    model = build_tiny_model(tmp_path / "model")
    task_files = [str(p) for p in write_colour_task(tmp_path / "task")]
    work = tmp_path / "work"
    async with Client(build_server(state=state), mode="auto") as c:
        s = Seen(c)
        # A context shorter than the task's two-shot prompts (about 30 tokens): the job must ask the server
        # for its max_model_len and let lm-eval cut the context to fit, or every request is refused (400).
        args = {"model": str(model), "api_key": "auto", "max_model_len": MAX_MODEL_LEN}
        srv = (await s.call("start_vllm_server", args))["job_id"]
        w = await s.call("wait_for_job", {"job_id": srv, "until": "ready", "timeout_s": 60})
        assert w["reached"], w["summary"]

        sub = await s.call("evaluate_model", {"server_job_id": srv, "tasks": [TASK_NAME], "task_files": task_files,
                                              "limit": LIMIT, "num_fewshot": 2, "output_name": "served"})  # fmt: skip
        assert sub["target"] == f"{model} served by {srv}" and sub["tasks"] == [TASK_NAME]
        job = sub["job_id"]
        for _ in range(8):
            view = (await s.call("wait_for_job", {"job_id": job, "timeout_s": 60}))["job"]
            if view["terminal"]:
                break
        await s.call("get_job_logs", {"job_id": job, "offset": 0, "max_bytes": 1 << 20})
        assert view["state"] == "succeeded", (view["summary"], view.get("error"))

        status = await s.call("get_job_status", {"job_id": job})
        end = status["metrics"]
        assert end["event"] == "end" and f"{TASK_NAME} acc" in end["summary"], end
        acc = end["scores"][TASK_NAME]["acc,none"]
        assert 0.0 <= acc <= 1.0
        manifest = json.loads((work / "jobs" / job / "outputs" / "manifest.json").read_text())
        assert manifest["tasks"]["backend"] == "local-completions"
        results = json.loads((work / "jobs" / job / "outputs" / "results.json").read_text())
        assert results["n-samples"][TASK_NAME]["effective"] == LIMIT

        # The server answered lm-eval's scoring requests (echo + logprobs, one per choice), all authorised.
        server_log = (work / "jobs" / srv / "output.log").read_text()
        # (counted, not split into lines: the stand-in's handler threads print concurrently)
        assert server_log.count("prompts=1 echo=True logprobs=1") == LIMIT * 4, server_log[-3000:]
        assert '"POST /v1/completions HTTP/1.1" 200' in server_log and '" 401 ' not in server_log
        assert '" 400 ' not in server_log and f"prompt_tokens={MAX_MODEL_LEN - 1} " in server_log

        await s.call("get_job_logs", {"job_id": srv, "offset": 0, "max_bytes": 1 << 20})
        await s.call("stop_vllm_server", {"job_id": srv, "grace_s": 5})

    env_text = (work / "jobs" / srv / "env").read_text()
    key = next(
        ln.split("=", 1)[1].strip("'\"") for ln in env_text.splitlines() if ln.startswith("export VLLM_API_KEY=")
    )
    assert len(key) >= 20
    for text in s.texts:
        assert key not in text, "the server's API key is in a tool result or returned log"
    for p in work.rglob("*"):
        if p.is_file() and p.name != "env":
            assert key.encode() not in p.read_bytes(), f"the server's API key is in {p}"


async def test_a_server_job_that_is_not_ready_or_not_a_server_is_refused(state: ToolContext) -> None:
    async with Client(build_server(state=state), mode="auto") as c:
        s = Seen(c)
        cmd = (await s.call("submit_command", {"argv": ["sleep", "30"], "name": "not-a-server"}))["job_id"]
        text = await s.call("evaluate_model", {"server_job_id": cmd, "tasks": [TASK_NAME]}, ok=False)
        assert f"Job {cmd} is a command job, not a server." in text, text
        await s.call("cancel_job", {"job_id": cmd})

        slow = await s.call("start_vllm_server", {"model": "Qwen/Qwen2.5-0.5B", "extra_args": {}})
        srv = slow["job_id"]
        await s.call("stop_vllm_server", {"job_id": srv, "grace_s": 2})
        text = await s.call("evaluate_model", {"server_job_id": srv, "tasks": [TASK_NAME]}, ok=False)
        assert f"Server job {srv} is cancelled, not ready." in text and "wait_for_job" in text, text
        jobs = (await s.call("list_jobs", {}))["jobs"]
        assert {j["kind"] for j in jobs} <= {"command", "serve"}, jobs  # nothing was submitted


def test_standin_scores_like_vllm_and_lm_eval_reads_it(tmp_path: Path) -> None:
    """The stand-in's echo + logprobs answer has vLLM 0.26.0's shape, and lm-eval's own
    parse_logprobs turns it into the sum of the stand-in's rule over the continuation."""
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    model = build_tiny_model(tmp_path / "model")
    tk = StandinTokenizer(str(model))
    st = StandinState(["m"], 4096, 0.0, "k3y", 0.0, {}, str(model), tk)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(st))
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def post(doc: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(f"http://127.0.0.1:{srv.server_address[1]}/v1/completions",
                                     data=json.dumps(doc).encode(), method="POST",
                                     headers={"Authorization": "Bearer k3y", "Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    try:
        ctx, cont = tk.encode("What colour is the sky?", False), tk.encode("The sky is blue.", False)
        ids = ctx + cont
        payload = LocalCompletionsAPI._create_payload(type("M", (), {"model": "m"})(), [ids], generate=False)
        assert payload["echo"] is True and payload["logprobs"] == 1 and payload["max_tokens"] == 1
        out = post(payload)
        ch = out["choices"][0]
        lp = ch["logprobs"]
        assert len(lp["tokens"]) == len(ids) + 1 and lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert all(len(t) <= 2 and tok in t for t, tok in zip(lp["top_logprobs"][1:], lp["tokens"][1:], strict=True))
        assert lp["text_offset"][0] == 0 and all(
            b - a == len(t) for a, b, t in zip(lp["text_offset"], lp["text_offset"][1:], lp["tokens"], strict=False)
        )
        assert ch["text"].startswith(tk.decode(ids)) and out["usage"]["prompt_tokens"] == len(ids)
        want = sum(_step_logprob(ids[:i], ids[i], 0, tk.vocab_size)[0] for i in range(len(ctx), len(ids)))
        ((got, greedy),) = LocalCompletionsAPI.parse_logprobs([out], ctxlens=[len(ctx)])
        assert got == pytest.approx(want) and got < 0 and isinstance(greedy, bool)
        # prompt-dependent: another context scores the same continuation differently
        other = tk.encode("What colour is the sea?", False)
        (got2, _), = LocalCompletionsAPI.parse_logprobs([post({**payload, "prompt": [other + cont]})],
                                                       ctxlens=[len(other)])  # fmt: skip
        assert got2 != pytest.approx(got)
        # echo with max_tokens 0: the prompt alone; a batch: one choice per prompt, in order
        zero = post({**payload, "max_tokens": 0, "prompt": [ids, other]})
        assert [c["index"] for c in zero["choices"]] == [0, 1]
        assert len(zero["choices"][0]["logprobs"]["tokens"]) == len(ids) and zero["usage"]["completion_tokens"] == 0
        # a plain completion is as before: no logprobs
        plain = post({"model": "m", "prompt": "hi", "max_tokens": 3})
        assert plain["choices"][0]["logprobs"] is None and plain["usage"]["completion_tokens"] == 3
    finally:
        srv.shutdown()
        srv.server_close()
