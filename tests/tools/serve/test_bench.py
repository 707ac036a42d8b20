"""benchmark_server's lengths are tokens and its times are per token, checked against the stand-in.

The server is tests/standin_vllm_server.py (a STAND-IN for ``vllm serve``) with a real
byte-level BPE tokenizer, or a real HF tokenizer directory: a word is often several tokens,
and some generated tokens decode to no text, so a benchmark that counted words or text
chunks gets other numbers than the server. What is real: the HTTP server, the tokenizer,
/tokenize, the streamed chunks and their usage counts, the job engine and the client.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from runners.config import Config, HostConfig
from runners.errors import HostError, InvalidInput
from runners.states import JobState
from tests.standin_vllm_server import install_standin
from tools.context import ToolContext
from tools.serve.bench import (
    BenchmarkInput,
    Prompts,
    _one,
    benchmark_server,
    build_prompts,
    open_session,
    percentile,
)
from tools.serve.schema import StartServerInput
from tools.serve.start import start_vllm_server
from tools.serve.stop import StopServerInput, stop_vllm_server

pytestmark = pytest.mark.anyio
STANDIN = Path(__file__).resolve().parents[2] / "standin_vllm_server.py"
MODEL = "Qwen/Qwen2.5-0.5B"  # catalog entry (planning); the stand-in's built-in tokenizer serves it


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Standin:
    """A stand-in server process on a free port (stopped by the fixture)."""

    def __init__(self, model: str, env: dict[str, str], max_model_len: int = 4096) -> None:
        self.port = _free_port()
        self.model = model
        self.url = f"http://127.0.0.1:{self.port}"
        argv = [sys.executable, str(STANDIN), "serve", model, "--host", "127.0.0.1", "--port", str(self.port)]
        argv += ["--max-model-len", str(max_model_len)]
        self.proc = subprocess.Popen(
            argv, env={**os.environ, **env}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the stand-in did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        r = httpx.post(f"{self.url}/tokenize", json={"prompt": text, "add_special_tokens": special})
        r.raise_for_status()
        return list(r.json()["tokens"])

    def detokenize(self, ids: list[int]) -> str:
        r = httpx.post(f"{self.url}/detokenize", json={"tokens": ids})
        r.raise_for_status()
        return str(r.json()["prompt"])

    def complete(self, prompt: list[int] | str, **kw: Any) -> dict[str, Any]:
        r = httpx.post(f"{self.url}/v1/completions", json={"model": self.model, "prompt": prompt, **kw}, timeout=30)
        r.raise_for_status()
        return dict(r.json())


@pytest.fixture
def standin(request: pytest.FixtureRequest) -> Iterator[Standin]:
    params = getattr(request, "param", {}) or {}
    s = Standin(params.get("model", MODEL), params.get("env", {}), params.get("max_model_len", 4096))
    try:
        yield s
    finally:
        s.stop()


BOS = {"env": {"STANDIN_VLLM_ADD_BOS": "1", "STANDIN_VLLM_TOKEN_DELAY_S": "0.001"}}


@pytest.mark.parametrize("standin", [BOS], indirect=True)
async def test_prompts_have_exactly_input_len_tokens_as_the_server_counts(standin: Standin) -> None:
    bos = standin.tokenize("x")[0]
    async with open_session(standin.url) as http:
        prompts = await build_prompts(http, MODEL, input_len=300, output_len=8, num_prompts=6, seed=7)
        # the seed picks the text: the same seed gives the same prompts, another seed others
        again = await build_prompts(http, MODEL, input_len=300, output_len=8, num_prompts=6, seed=7)
        other = await build_prompts(http, MODEL, input_len=300, output_len=8, num_prompts=6, seed=8)
    assert len(prompts) == 6
    for ids in prompts:
        assert len(ids) == 300 and ids[0] == bos and bos not in ids[1:]  # BOS counted, once, where vLLM puts it
        got = standin.complete(ids, max_tokens=4)["usage"]
        assert got["prompt_tokens"] == 300
    # the same prompt as text is as long too: ordinary tokens that survive decode → encode
    text = standin.detokenize(prompts[0][1:])
    assert len(standin.tokenize(text)) == 300
    # and it is far fewer words than tokens: a word-counting benchmark would send ~3x more
    assert len(text.split()) < 150, len(text.split())
    # no two prompts share their first KV block (16 tokens): no prefix-cache hits between them
    assert len({tuple(p[:16]) for p in prompts}) == 6
    assert list(again) == list(prompts) and other[0][:16] != prompts[0][:16]


@pytest.mark.parametrize("standin", [{**BOS, "max_model_len": 65_536}], indirect=True)
async def test_long_prompts_are_exact_and_wrap_around_the_pool(standin: Standin) -> None:
    async with open_session(standin.url) as http:
        prompts = await build_prompts(http, MODEL, 60_000, 8, num_prompts=2, seed=3)
    assert [standin.complete(p, max_tokens=1)["usage"]["prompt_tokens"] for p in prompts] == [60_000, 60_000]
    # a body longer than the pool (the pool's text is capped at 40k words) wraps around it
    short = Prompts([1], [10, 11, 12], [2], 7, [2, 0])
    assert list(short) == [[1, 12, 10, 11, 12, 10, 11, 12, 2], [1, 10, 11, 12, 10, 11, 12, 10, 2]]


async def test_prompts_with_a_real_hf_tokenizer_directory(tmp_path: Path) -> None:
    from tests.helpers.tiny_model import build_tiny_tokenizer

    build_tiny_tokenizer(tmp_path / "model")
    s = Standin(str(tmp_path / "model"), {"STANDIN_VLLM_TOKEN_DELAY_S": "0.001"})
    try:
        async with open_session(s.url) as http:
            prompts = await build_prompts(http, s.model, input_len=64, output_len=4, num_prompts=3, seed=1)
        assert [s.complete(p, max_tokens=1)["usage"]["prompt_tokens"] for p in prompts] == [64, 64, 64]
    finally:
        s.stop()


DELAY = 0.03
COALESCED = {"env": {"STANDIN_VLLM_TOKEN_DELAY_S": str(DELAY), "STANDIN_VLLM_TOKENS_PER_CHUNK": "3"}}
EARLY_EOS = {"env": {"STANDIN_VLLM_TOKEN_DELAY_S": "0.002", "STANDIN_VLLM_EOS_AFTER": "5"}}


@pytest.mark.parametrize("standin", [{"env": {"STANDIN_VLLM_TOKEN_DELAY_S": "0.002"}}], indirect=True)
async def test_itl_counts_every_token_including_those_without_text(standin: Standin) -> None:
    ids = standin.tokenize("hello world, how are you", special=False)
    async with open_session(standin.url) as http:
        r = await _one(http, MODEL, ids, 40)
    assert r.ok, r.error
    # the stream really has tokens without text (a ✓ is three byte tokens; two decode to nothing) ...
    events = _stream(standin, ids, 40)
    texts = [e["choices"][0]["text"] for e in events if e.get("choices")]
    assert len(texts) == 40 and texts.count("") >= 4
    # ... and every one of them is an output token with its gap
    assert r.output_tokens == 40 and r.chunks == 40 and len(r.itl) == 39
    assert abs(sum(r.itl) - (r.latency - r.ttft)) < 1e-9
    assert not r.counted_by_chunk


@pytest.mark.parametrize("standin", [COALESCED], indirect=True)
async def test_coalesced_chunks_give_one_gap_per_token(standin: Standin) -> None:
    async with open_session(standin.url) as http:
        r = await _one(http, MODEL, standin.tokenize("a b c", special=False), 25)
    assert r.ok, r.error
    assert r.output_tokens == 25 and r.chunks == 1 + 8 and len(r.itl) == 24  # 1 + 8 chunks of 3
    tpot = (r.latency - r.ttft) / 24
    assert abs(sum(r.itl) / 24 - tpot) < 1e-9
    # each chunk waited 3 token delays: per token that is one delay, per chunk three
    gaps = sorted(r.itl)
    assert DELAY * 0.99 <= gaps[len(gaps) // 2] < 2.0 * DELAY, gaps


@pytest.mark.parametrize("standin", [EARLY_EOS], indirect=True)
async def test_output_lengths_are_exact_even_when_the_model_would_stop(standin: Standin) -> None:
    ids = standin.tokenize("hello there", special=False)
    # the stand-in's "model" stops after 5 tokens when allowed: without ignore_eos a request is short
    assert standin.complete(ids, max_tokens=32)["usage"]["completion_tokens"] == 6
    async with open_session(standin.url) as http:
        r = await _one(http, MODEL, ids, 32)
    assert r.ok and r.output_tokens == 32 and len(r.itl) == 31


def _stream(s: Standin, ids: list[int], n: int) -> list[dict[str, Any]]:
    body = {"model": s.model, "prompt": ids, "max_tokens": n, "stream": True}
    out = []
    with httpx.stream("POST", f"{s.url}/v1/completions", json=body, timeout=30) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                out.append(json.loads(line[6:]))
    return out


@pytest.mark.parametrize("standin", [{**BOS, "max_model_len": 256}], indirect=True)
async def test_bad_lengths_and_models_are_refused_before_sending(standin: Standin) -> None:
    async with open_session(standin.url) as http:
        with pytest.raises(
            InvalidInput, match=r"input_len \+ output_len = 300 tokens exceeds the server's max_model_len 256"
        ):
            await build_prompts(http, MODEL, input_len=200, output_len=100, num_prompts=2, seed=0)
        with pytest.raises(InvalidInput, match=r"adds 1 special token.*input_len >= 2"):
            await build_prompts(http, MODEL, input_len=1, output_len=8, num_prompts=2, seed=0)
        with pytest.raises(InvalidInput, match="does not serve that model"):
            await build_prompts(http, "not-served", input_len=16, output_len=8, num_prompts=2, seed=0)
    for bad in ({"input_len": 0}, {"output_len": 0}, {"concurrency": 0}, {"num_prompts": 0}):
        with pytest.raises(ValidationError):
            BenchmarkInput(server_job_id="serve-x", **bad)  # type: ignore[arg-type]


async def test_a_server_without_tokenize_is_a_clear_error() -> None:
    class NotVllm(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.send_response(404)
            self.send_header("Content-Length", "9")
            self.end_headers()
            self.wfile.write(b"Not Found")

        def log_message(self, *_: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), NotVllm)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        async with open_session(f"http://127.0.0.1:{srv.server_address[1]}") as http:
            with pytest.raises(HostError, match="no /tokenize endpoint"):
                await build_prompts(http, MODEL, input_len=16, output_len=8, num_prompts=2, seed=0)
    finally:
        srv.shutdown()
        srv.server_close()


class _Scripted(BaseHTTPRequestHandler):
    """Answers every POST with the raw bytes in ``script`` (status line and all), in small pieces.

    HTTP/1.1 keep-alive: the connection stays open for the next request unless the script says
    ``Connection: close`` (then it is closed after the script, as a body framed by the
    connection's end or cut short needs). ``connections`` counts the connections accepted.
    """

    protocol_version = "HTTP/1.1"
    script = b""
    connections = 0

    def setup(self) -> None:
        super().setup()
        type(self).connections += 1

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        data = self.script
        for i in range(0, len(data), 7):  # in small pieces: lines and chunks split across reads
            self.wfile.write(data[i : i + 7])
            self.wfile.flush()
        self.close_connection = b"\r\nConnection: close\r\n" in data.split(b"\r\n\r\n", 1)[0] + b"\r\n"

    def log_message(self, *_: Any) -> None:
        pass


def _event(n: int, text: str = "x") -> bytes:
    doc = {"choices": [{"index": 0, "text": text}], "usage": {"prompt_tokens": 4, "completion_tokens": n}}
    return b"data: " + json.dumps(doc).encode() + b"\r\n\r\n"


def _framed(framing: str, parts: list[bytes], cut: bool = False) -> bytes:
    """A 200 event-stream response with its body framed one way; ``cut``: the connection ends early."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    if framing == "eof":
        return head + b"Connection: close\r\n\r\n" + b"".join(parts)
    close = b"Connection: close\r\n" if cut else b""
    if framing == "chunked":
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in parts)
        return head + b"Transfer-Encoding: chunked\r\n" + close + b"\r\n" + chunks + (b"" if cut else b"0\r\n\r\n")
    whole = b"".join(parts)
    return head + b"Content-Length: %d\r\n" % (len(whole) + (100 if cut else 0)) + close + b"\r\n" + whole


@pytest.mark.parametrize("framing", ["eof", "chunked", "content-length"])
async def test_stream_framings_and_an_error_mid_stream(framing: str) -> None:
    events = [_event(1), b": ping\n\n", _event(3, ""), _event(4)]
    done = [b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":4}}\n\n', b"data: [DONE]\n\n"]
    broken = [_event(1), b'data: {"error": {"message": "engine died", "code": 500}}\n\n']
    # one event longer than aiohttp's line buffer (64 KiB): the body is read as it comes, not by readline
    long = [_event(1, "y" * 100_000), _event(2), done[0].replace(b'tokens":4}', b'tokens":2}'), done[1]]

    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Scripted)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    _Scripted.connections = 0
    try:
        async with open_session(f"http://127.0.0.1:{srv.server_address[1]}") as http:
            _Scripted.script = _framed(framing, events + done)
            for _ in range(2):
                r = await _one(http, MODEL, [1, 2, 3, 4], 4)
                assert r.ok and r.output_tokens == 4 and r.prompt_tokens == 4 and r.chunks == 3 and len(r.itl) == 3
            # a body framed by its length or chunks leaves the connection open for the next request
            assert _Scripted.connections == (2 if framing == "eof" else 1)
            _Scripted.script = _framed(framing, long)
            r = await _one(http, MODEL, [1, 2, 3, 4], 2)
            assert r.ok and r.output_tokens == 2 and r.chunks == 2, r.error
            _Scripted.script = _framed(framing, broken)
            r = await _one(http, MODEL, [1, 2, 3, 4], 4)
            assert not r.ok and r.error == "engine died"
            if framing != "eof":  # the connection ends inside the body: a failed request, not a short one
                _Scripted.script = _framed(framing, events, cut=True)
                r = await _one(http, MODEL, [1, 2, 3, 4], 4)
                assert not r.ok and r.error.startswith("Connection to the server failed: ClientPayloadError"), r.error
            _Scripted.script = b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 24\r\n\r\n" + b'{"error":"Unauthorized"}'
            r = await _one(http, MODEL, [1, 2, 3, 4], 4)
            assert not r.ok and "refused the API key" in r.error
    finally:
        srv.shutdown()
        srv.server_close()
    # nothing listens on a closed port: the request fails, it does not raise
    async with open_session(f"http://127.0.0.1:{srv.server_address[1]}") as http:
        r = await _one(http, MODEL, [1, 2, 3, 4], 4)
    assert not r.ok and r.error.startswith("Connection to the server failed: ClientConnectorError"), r.error


def test_percentiles_interpolate_like_numpy() -> None:
    import numpy as np

    rng = np.random.default_rng(3)
    for n in (1, 2, 7, 100, 1001):
        v = rng.exponential(10.0, n).tolist()
        for q in (50, 90, 99):
            assert percentile(v, q) == pytest.approx(float(np.percentile(v, q)), rel=1e-12)


# -- the tool itself, through the job engine and the serve runtime -------------------------------------
@pytest.fixture
async def served(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[ToolContext, str]]:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # model facts come from the catalog, never the network
    env = {
        **install_standin(tmp_path / "vllm"),
        "STANDIN_VLLM_TOKEN_DELAY_S": "0.004",
        "STANDIN_VLLM_ADD_BOS": "1",
        "STANDIN_VLLM_EOS_AFTER": "3",
        "STANDIN_VLLM_TOKENS_PER_CHUNK": "2",
    }
    host = HostConfig(name="gpubox", workdir=str(tmp_path / "work"), gpus="H100:1", env=env)
    ctx = ToolContext(config=Config(hosts={host.name: host}, default_host=host.name), state_dir=tmp_path / "state")
    out = await start_vllm_server(ctx, StartServerInput(model=MODEL, host=host.name, max_num_seqs=8))
    view, _ = await (await ctx.engine()).wait(out.job_id, until="ready", timeout_s=60)
    assert view.state is JobState.READY, view.summary
    try:
        yield ctx, out.job_id
    finally:
        await stop_vllm_server(ctx, StopServerInput(job_id=out.job_id, grace_s=5))
        await ctx.aclose()


async def test_benchmark_server_reports_token_exact_lengths(served: tuple[ToolContext, str]) -> None:
    ctx, job_id = served
    p = BenchmarkInput(server_job_id=job_id, num_prompts=10, input_len=200, output_len=21, concurrency=4)
    b = await benchmark_server(ctx, p)
    assert b.completed == 10 and b.failed == 0 and not b.errors, b.summary
    assert b.mean_input_tokens == 200 and b.total_input_tokens == 2000  # as the server counted them
    assert b.total_output_tokens == 210 and b.length_mismatches == 0  # EOS after 3 tokens was ignored
    assert b.stream_chunks == 10 * 11  # 1 + 10 chunks of 2 tokens: fewer chunks than tokens
    assert b.output_tokens_per_s == pytest.approx(210 / b.duration_s, rel=0.01)
    assert b.ttft_ms.p50 is not None and b.tpot_ms.mean is not None and b.itl_ms.mean is not None
    # one gap per token: the mean ITL is the token-weighted TPOT (every request has 21 tokens: equal)
    assert b.itl_ms.mean == pytest.approx(b.tpot_ms.mean, rel=0.01)
    assert b.itl_ms.p50 is not None and b.itl_ms.p50 < 2 * 2 * 4.0  # per token, not per 2-token chunk
    assert "200 prompt tokens → 21 output tokens" in b.summary and "per token" in b.summary

    with pytest.raises(InvalidInput, match="max_model_len"):
        await benchmark_server(ctx, BenchmarkInput(server_job_id=job_id, input_len=32_000, output_len=2000))
    with pytest.raises(InvalidInput, match="is not served"):
        await benchmark_server(ctx, BenchmarkInput(server_job_id=job_id, model="other", input_len=8))


async def test_time_budget_bounds_the_call(served: tuple[ToolContext, str]) -> None:
    ctx, job_id = served
    t0 = time.perf_counter()
    b = await benchmark_server(
        ctx,
        BenchmarkInput(
            server_job_id=job_id, num_prompts=200, input_len=16, output_len=100, concurrency=2, time_budget_s=0.5
        ),
    )
    assert time.perf_counter() - t0 < 5
    assert 0 < b.completed < 200 and "not sent (time budget)" in b.summary
