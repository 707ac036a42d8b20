"""The serving lifecycle through the real job engine, locally and over a real sshd.

vLLM can't run on a CPU machine, so the host's ``vllm`` program is the STAND-IN
server of tests/standin_vllm_server.py (installed on the host's PATH with a ``vllm``
distribution of version 0.26.0): everything else — version detection, the recorded
flag list, the serve payload, readiness on the host, the SSH forward, the API key in
the env file, the OpenAI client — is the real code path.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from runners.config import Config, HostConfig
from runners.engine import JobEngine
from runners.errors import Conflict, DoesNotFit, InvalidInput, NotFound
from runners.spec import JobSpec
from runners.states import JobState
from tests.standin_vllm_server import install_standin
from tools.context import ToolContext
from tools.serve.bench import BenchmarkInput, benchmark_server
from tools.serve.client import ChatMessage, QueryInput, query_model
from tools.serve.host import parse_gpu_lines
from tools.serve.runtime import ServeRuntime
from tools.serve.schema import LoraAdapterRef, StartServerInput
from tools.serve.start import start_vllm_server
from tools.serve.stop import StopServerInput, stop_vllm_server

pytestmark = pytest.mark.anyio
MODEL = "Qwen/Qwen2.5-0.5B"  # catalog entry: 14 heads, 2 KV heads


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # model facts come from the catalog, never the network


class Serving:
    """The tools' context, its engine and serve runtime for one host."""

    def __init__(self, ctx: ToolContext, engine: JobEngine, runtime: ServeRuntime, host: HostConfig) -> None:
        self.ctx, self.engine, self.runtime, self.host = ctx, engine, runtime, host

    async def start(self, **kw: Any) -> Any:
        kw.setdefault("model", MODEL)
        kw.setdefault("host", self.host.name)
        return await start_vllm_server(self.ctx, StartServerInput(**kw))

    async def wait(self, job_id: str, until: str = "ready", timeout: float = 60.0) -> Any:
        view, _ = await self.engine.wait(job_id, until=until, timeout_s=timeout)  # type: ignore[arg-type]
        return view


def _host(kind: str, request: pytest.FixtureRequest, tmp_path: Path, switches: dict[str, str]) -> HostConfig:
    env = {**install_standin(tmp_path / "vllm"), "STANDIN_VLLM_TOKEN_DELAY_S": "0.001", **switches}
    if kind == "local":
        return HostConfig(name="gpubox", workdir=str(tmp_path / "work"), gpus="H100:2", env=env)
    sshd = request.getfixturevalue("sshd")
    return sshd.host_config("sshgpu", workdir=str(tmp_path / "work"), gpus="H100:2", env=env)


async def _serving(
    kind: str, request: pytest.FixtureRequest, tmp_path: Path, switches: dict[str, str] | None = None
) -> tuple[Serving, JobEngine, ServeRuntime]:
    host = _host(kind, request, tmp_path, switches or {})
    request.getfixturevalue("monkeypatch").setenv("MY_VLLM_KEY", "k3y-from-the-environment")
    ctx = ToolContext(config=Config(hosts={host.name: host}, default_host=host.name), state_dir=tmp_path / "state")
    engine, runtime = await ctx.engine(), await ctx.serve_runtime()
    return Serving(ctx, engine, runtime, host), engine, runtime


@pytest.fixture(params=["local", "ssh"])
async def srv(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Serving]:
    s, _, _ = await _serving(request.param, request, tmp_path)
    try:
        yield s
    finally:
        await _cleanup(s)


async def _cleanup(s: Serving) -> None:
    for v in await s.engine.list_jobs():
        if not v.terminal:
            await s.engine.cancel(v.job_id, grace_s=2)
    await s.ctx.aclose()


async def test_lifecycle_start_ready_query_benchmark_stop(srv: Serving) -> None:
    out = await srv.start(max_num_seqs=8, served_model_name="qwen-small")
    assert out.created and out.vllm_version == "0.26.0"
    assert out.command[:3] == ["vllm", "serve", MODEL]
    assert out.served_models == ["qwen-small"]
    assert out.plan.tensor_parallel_size == 1 and out.plan.reasons
    assert "--api-key" not in out.command and out.api_key == "auto"
    assert out.endpoint and out.endpoint.startswith("http://127.0.0.1:")
    view = await srv.wait(out.job_id)
    assert view.state is JobState.READY, view.summary
    # ready means: /health, /v1/models listing the name, and a one-token completion all answered
    metrics = view.metrics or {}
    assert metrics.get("event") == "ready" and metrics["time_to_ready_s"] >= 0

    q = await query_model(
        srv.ctx,
        QueryInput(server_job_id=out.job_id, messages=[ChatMessage(content="Say hi")], max_tokens=5),
    )
    assert q.completion_tokens == 5 and q.text.strip().startswith("tok0") and q.model == "qwen-small"
    q = await query_model(srv.ctx, QueryInput(server_job_id=out.job_id, prompt="a b c", max_tokens=3))
    assert q.prompt_tokens == 3 and q.finish_reason == "length"

    b = await benchmark_server(
        srv.ctx,
        BenchmarkInput(server_job_id=out.job_id, num_prompts=12, input_len=32, output_len=16, concurrency=4),
    )
    assert b.completed == 12 and b.failed == 0 and b.total_output_tokens == 12 * 16
    assert b.output_tokens_per_s > 0 and b.requests_per_s > 0 and b.mean_input_tokens == 32
    assert b.ttft_ms.p50 is not None and b.itl_ms.p99 is not None and b.itl_ms.p50 <= b.itl_ms.p99

    stopped = await stop_vllm_server(srv.ctx, StopServerInput(job_id=out.job_id, grace_s=5))
    assert stopped.job.state is JobState.CANCELLED
    assert stopped.gpu.checked is False or stopped.gpu.released is True
    with pytest.raises(Conflict, match="cancelled"):
        await query_model(srv.ctx, QueryInput(server_job_id=out.job_id, prompt="x"))


async def test_api_key_lives_only_in_the_env_file(srv: Serving) -> None:
    out = await srv.start()
    view = await srv.wait(out.job_id)
    assert view.state is JobState.READY
    t = srv.engine.transport(srv.host.name)
    env = (await t.read_range(f"{out.job_dir}/env", 0, 1 << 16)).decode()
    key = next(line.split("=", 1)[1] for line in env.splitlines() if line.startswith("export VLLM_API_KEY="))
    assert len(key) > 20
    st = await t.stat(f"{out.job_dir}/env")
    assert st is not None and st.mode == 0o600
    for name in ("job.json", "run.sh", "output.log", "metrics.jsonl", "endpoint.json"):
        assert key not in (await t.read_range(f"{out.job_dir}/{name}", 0, 1 << 20)).decode(), name
    assert key not in out.model_dump_json()
    log = await srv.engine.read_log(out.job_id)
    assert key not in log.text
    # without the key the server refuses: the key really protects it
    import openai

    url = await srv.runtime.url_for(
        srv.host, "127.0.0.1", json.loads(await t.read_range(f"{out.job_dir}/endpoint.json", 0, 4096))["port"]
    )
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        await client.models.list()
    await client.close()


async def test_api_key_from_a_named_secret_and_none(srv: Serving) -> None:
    out = await srv.start(api_key="env:MY_VLLM_KEY")
    assert (await srv.wait(out.job_id)).state is JobState.READY
    q = await query_model(srv.ctx, QueryInput(server_job_id=out.job_id, prompt="hi", max_tokens=1))
    assert q.completion_tokens == 1
    job_json = (await srv.engine.transport(srv.host.name).read_range(f"{out.job_dir}/job.json", 0, 1 << 20)).decode()
    assert "k3y-from-the-environment" not in job_json
    out2 = await srv.start(api_key="none", served_model_name="open")
    assert (await srv.wait(out2.job_id)).state is JobState.READY
    q = await query_model(srv.ctx, QueryInput(server_job_id=out2.job_id, prompt="hi", max_tokens=2))
    assert q.completion_tokens == 2


@pytest.mark.parametrize("sub", ["outputs", "outputs/adapter"])  # the payload's layout is outputs/adapter/
async def test_lora_adapter_from_a_finetune_job(srv: Serving, sub: str) -> None:
    ft = await srv.engine.submit(
        JobSpec(
            kind="finetune",
            argv=[
                "bash",
                "-c",
                f'mkdir -p {sub} && printf \'{{"r": 32, "base_model_name_or_path": "x"}}\' > {sub}/adapter_config.json',
            ],
        ),
        srv.host.name,
    )
    assert (await srv.wait(ft.job_id, until="finished")).state is JobState.SUCCEEDED
    out = await srv.start(lora_adapters=[LoraAdapterRef(name="my-adapter", job_id=ft.job_id)])
    assert out.served_models == [MODEL, "my-adapter"]
    i = out.command.index("--lora-modules")
    assert out.command[i + 1] == f"my-adapter={ft.job_dir}/{sub}"
    assert "--enable-lora" in out.command
    assert out.command[out.command.index("--max-lora-rank") + 1] == "32"
    assert (await srv.wait(out.job_id)).state is JobState.READY
    q = await query_model(
        srv.ctx, QueryInput(server_job_id=out.job_id, model="my-adapter", prompt="hello", max_tokens=2)
    )
    assert q.model == "my-adapter" and q.completion_tokens == 2
    with pytest.raises(InvalidInput, match="not served"):
        await query_model(srv.ctx, QueryInput(server_job_id=out.job_id, model="other", prompt="x"))


async def test_adapter_from_a_failed_job_is_refused(srv: Serving) -> None:
    ft = await srv.engine.submit(JobSpec(kind="finetune", argv=["bash", "-c", "echo boom; exit 3"]), srv.host.name)
    assert (await srv.wait(ft.job_id, until="finished")).state is JobState.FAILED
    with pytest.raises(InvalidInput, match=rf"fine-tune job {ft.job_id}, which failed"):
        await srv.start(lora_adapters=[LoraAdapterRef(name="a", job_id=ft.job_id)])
    with pytest.raises(NotFound, match="No LoRA adapter"):
        await srv.start(lora_adapters=[LoraAdapterRef(name="a", path="/nonexistent/adapter")])
    assert not [v for v in await srv.engine.list_jobs(kind="serve")]  # nothing was started


@pytest.mark.parametrize("kind", ["local"])
async def test_bad_input_starts_nothing(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    s, _, _ = await _serving(kind, request, tmp_path)
    try:
        # The first server on this host: its vLLM's flags are not known yet, so the call returns at
        # once and the job checks them on the host before vLLM starts (payload check_flags).
        first = await s.start(extra_args={"max_num_batch_tokens": 4096})
        view = await s.wait(first.job_id, until="finished", timeout=60)
        m = view.metrics or {}
        assert view.state is JobState.FAILED and m.get("kind") == "unknown_flag", m
        assert "no flag --max-num-batch-tokens" in m["message"] and "--max-num-batched-tokens" in m["hint"]
        # That job left the host's help behind: from now on the call itself refuses, submitting nothing.
        with pytest.raises(InvalidInput, match=r"no flag --max-num-batch-tokens.*--max-num-batched-tokens"):
            await s.start(extra_args={"max_num_batch_tokens": 4096})
        assert [v.job_id for v in await s.engine.list_jobs()] == [first.job_id]
        with pytest.raises(InvalidInput, match=r"tensor_parallel_size 8 does not divide .*28 attention heads"):
            await s.start(model="Qwen/Qwen2.5-7B", tensor_parallel_size=8)
        with pytest.raises(InvalidInput, match=r"needs 4 GPUs; only 2"):
            await s.start(model="meta-llama/Llama-3.2-1B", tensor_parallel_size=4)
        with pytest.raises(DoesNotFit, match=r"would fit on: .*H200"):
            await s.start(model="meta-llama/Llama-3.1-405B")
        with pytest.raises(ValueError):
            StartServerInput(model=MODEL, api_key="sk-literal-key")
        assert len(await s.engine.list_jobs()) == 1
        # a port that is taken: refused before the job starts
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            port = busy.getsockname()[1]
            with pytest.raises(Conflict, match=f"Port {port} is already in use"):
                await s.start(port=port)
        # the flag list was read from the host once and then cached per host and version
        assert any(p.name.startswith("gpubox--0.26.0") for p in (tmp_path / "state" / "vllm-flags").iterdir())
        dry = await s.start(dry_run=True, extra_args={"enforce_eager": True}, max_model_len=4096)
        assert dry.dry_run and dry.command[-1] == "--enforce-eager" and "--max-model-len" in dry.command
        assert len(await s.engine.list_jobs()) == 1
    finally:
        await _cleanup(s)


async def test_missing_vllm_is_a_clear_error(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    host = HostConfig(name="novllm", workdir=str(tmp_path / "work"), gpus="H100:1")
    ctx = ToolContext(config=Config(hosts={"novllm": host}), state_dir=tmp_path / "state")
    try:
        with pytest.raises(NotFound, match="vLLM is not installed"):
            await start_vllm_server(ctx, StartServerInput(model=MODEL))
    finally:
        await ctx.aclose()


@pytest.mark.parametrize("kind", ["local", "ssh"])
async def test_start_up_oom_fails_fast_with_a_hint(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    s, _, _ = await _serving(kind, request, tmp_path, {"STANDIN_VLLM_CRASH": "oom"})
    try:
        out = await s.start()
        t0 = time.monotonic()
        view = await s.wait(out.job_id, timeout=60)
        assert time.monotonic() - t0 < 20, "a crash must not wait for a time-out"
        assert view.state is JobState.FAILED
        m = view.metrics or {}
        assert m.get("event") == "error" and m.get("kind") == "cuda_oom"
        assert "tensor_parallel_size" in m["hint"] and "CUDA out of memory" in m["message"]
        assert view.error is not None and view.error.kind == "cuda_oom"
        with pytest.raises(Conflict, match="CUDA out of memory"):
            await query_model(s.ctx, QueryInput(server_job_id=out.job_id, prompt="x"))
    finally:
        await _cleanup(s)


async def test_readiness_waits_for_models_and_a_completion(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    s, _, _ = await _serving("local", request, tmp_path, {"STANDIN_VLLM_READY_LAG_S": "3"})
    try:
        out = await s.start()
        view = await s.wait(out.job_id, until="running")
        assert view.state is JobState.RUNNING
        # /health answers at once, but the model is not listed yet: not ready
        deadline = time.monotonic() + 10
        while True:
            try:
                await asyncio.get_running_loop().run_in_executor(None, _get, f"{out.endpoint}/health")
                break
            except OSError:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.1)
        assert (await s.engine.status(out.job_id)).state is JobState.RUNNING
        with pytest.raises(Conflict, match="not ready yet"):
            await query_model(s.ctx, QueryInput(server_job_id=out.job_id, prompt="x"))
        view = await s.wait(out.job_id, timeout=30)
        assert view.state is JobState.READY
        assert (view.metrics or {})["time_to_ready_s"] >= 2.5
    finally:
        await _cleanup(s)


async def test_slow_start_then_ready_and_hung_oom_is_stopped(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    s, _, _ = await _serving("local", request, tmp_path, {"STANDIN_VLLM_START_DELAY_S": "2"})
    try:
        out = await s.start()
        assert (await s.wait(out.job_id, timeout=30)).state is JobState.READY
    finally:
        await _cleanup(s)
    s, _, _ = await _serving(
        "local",
        request,
        tmp_path / "hung",
        {"STANDIN_VLLM_CRASH": "oom", "STANDIN_VLLM_HANG_AFTER_OOM": "1", "LLM_OPS_SERVE_FATAL_GRACE_S": "1"},
    )
    try:
        out = await s.start()
        view = await s.wait(out.job_id, until="finished", timeout=30)
        assert view.state is JobState.FAILED and view.exit_code == 3  # the payload stopped the hung server
        assert (view.metrics or {}).get("kind") == "cuda_oom"
    finally:
        await _cleanup(s)


def _get(url: str) -> int:
    import urllib.request

    with urllib.request.urlopen(url, timeout=2) as r:
        return int(r.status)


def test_gpu_release_parsing() -> None:
    assert parse_gpu_lines("NO_SMI\n").checked is False
    r = parse_gpu_lines("JOB 1234 30000\nGPU 0 30500 81559\nGPU 1 4 81559\n")
    assert r.checked and r.released is False and r.leftover_pids == [1234]
    assert r.gpu_memory_used_mib == {"0": 30500, "1": 4}
    r = parse_gpu_lines("GPU 0 4 81559\n")
    assert r.released is True and not r.leftover_pids
