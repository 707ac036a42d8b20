"""benchmark_server: a load test whose lengths are tokens, measured the way ``vllm bench serve`` does.

Why it is built like this (vLLM 0.26.0's own benchmark is the reference; file and function
named at each rule):

* **Prompts of exactly ``input_len`` tokens, as the server counts them.** ``vllm bench
  serve --dataset-name random`` (vllm/benchmarks/datasets/datasets.py ``RandomDataset.sample``)
  makes ``input_len - num_special_tokens_to_add()`` token ids, decodes them, re-encodes to
  that length (``gen_prompt_decode_to_target_len``) and lets the server add the special
  tokens (BOS) back, then re-aligns against the server's ``/tokenize`` and ``/detokenize``
  (serve.py ``_align_prompts_to_server_tokenizer``). We have no tokenizer here (the
  controller never imports transformers), so we ask the server's: ``POST /tokenize`` with
  and without ``add_special_tokens`` tells which special tokens it adds and where, a second
  call turns a seeded random text into a pool of ordinary token ids, and each prompt is sent
  as token ids (``CompletionRequest.prompt`` accepts ``list[int]``,
  vllm/entrypoints/openai/completion/protocol.py), which vLLM takes as they are: exactly
  ``input_len`` = specials + body, no decode/re-encode drift. Each prompt starts at a
  different place in the pool, and the seed is fresh per call unless given, so prompts share
  no prefix-cache blocks with each other or with an earlier run (``RandomDataset`` uses a
  random ``offset`` per request for the same reason).
* **Exact output lengths**: ``max_tokens = output_len`` and ``ignore_eos`` (serve.py
  ``main_async`` sets ``ignore_eos`` for the random dataset; lib/endpoint_request_func.py
  ``async_request_openai_completions`` sends ``max_tokens`` and ``ignore_eos``). The
  server's usage says how many tokens each request really got; any difference is counted.
* **Times per token from the stream's token counts, not its text.** ``stream_options:
  {"include_usage": true, "continuous_usage_stats": true}`` makes vLLM put the running
  ``completion_tokens`` in every chunk (completion/serving.py
  ``completion_stream_generator``; serve/utils/api_utils.py ``should_include_usage``). A
  chunk is sent for every engine step that produced tokens, with or without text (a token
  can decode to nothing yet), and a lagging client gets several tokens in one chunk. So:
  TTFT = send → first chunk with a token; TPOT = (last token - first token) /
  (output tokens - 1) per request (serve.py ``calculate_metrics``); ITL = one gap per output
  token after the first: a chunk that brings k tokens after a gap g counts k gaps of g/k
  (``vllm bench serve`` counts one gap per chunk, endpoint_request_func.py; the two agree
  when each chunk carries one token). Output throughput = output tokens (server's usage) /
  wall time from the first send to the last answer, requests/s likewise (serve.py
  ``benchmark``). Percentiles interpolate linearly, like ``np.percentile``.

Requests go over aiohttp, the client ``vllm bench serve`` itself uses: one session per
benchmark whose connector keeps up to ``concurrency`` connections alive (serve.py
``benchmark`` builds its ``TCPConnector(limit=max_concurrency)`` the same way), the body read
as it arrives (``response.content.iter_any()``, endpoint_request_func.py
``async_request_openai_completions``), events split by hand and ``json.loads`` per chunk.
Client CPU per chunk shows up as latency at thousands of tokens per second, so the client
must cost what vLLM's costs: httpx (the ``openai`` client's transport, a pure-Python parser
and anyio layers) gave ~15 % less throughput and 4x the TTFT against the stand-in server,
the client being measured. Measured with bench/serve_client_cpu.py on the 2-core CPU box
against tests/standin_vllm_server.py (96 prompts of 256 tokens, 64 out, concurrency 8, the
same token-id prompts, 22 rounds alternated with vLLM 0.26.0's
``async_request_openai_completions`` driven as serve.py drives it): 0.92-1.16x its output
tokens/s (median 1.035x), TTFT p50 6-8 ms against 9-19 ms; the hand-written asyncio client
this replaced gave median 0.93x in the same rounds.
aiohttp is imported by the benchmark, not at server start-up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import statistics
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload
from urllib.parse import urlsplit

from pydantic import BaseModel, Field

from runners.errors import Conflict, HostError, InvalidInput, OpsError
from tools.serve.connection import JOB_ID_PATTERN, served_model, server_connection

if TYPE_CHECKING:
    import aiohttp

    from tools.context import ToolContext

__all__ = [
    "BenchmarkInput",
    "BenchmarkOutput",
    "Percentiles",
    "benchmark_server",
    "measure",
    "open_session",
    "percentile",
]

_WORDS = [
    "the",
    "quick",
    "brown",
    "fox",
    "jumps",
    "over",
    "a",
    "lazy",
    "dog",
    "while",
    "seven",
    "wise",
    "owls",
    "watch",
    "from",
    "old",
    "oak",
    "trees",
    "and",
    "count",
    "every",
    "star",
    "in",
    "the",
    "silent",
    "night",
    "sky",
    "river",
    "stone",
    "garden",
    "market",
    "window",
    "engine",
    "signal",
    "paper",
    "orange",
    "violet",
    "harbor",
    "lantern",
    "meadow",
    "canyon",
    "glacier",
    "thunder",
    "whisper",
    "copper",
    "silver",
    "marble",
    "velvet",
]
_GRACE_S = 10.0  # past the time budget, requests still streaming are stopped
_CONNECT_TIMEOUT_S = 10.0
_SHORT_TIMEOUT_S = 60.0  # a /tokenize call, connection included


class BenchmarkInput(BaseModel):
    server_job_id: str = Field(description="The server's job_id.", pattern=JOB_ID_PATTERN)
    model: str | None = Field(None, description="Served name to load; default: the base model.")
    num_prompts: int = Field(64, ge=1, le=2000)
    input_len: int = Field(
        256,
        ge=1,
        le=131_072,
        description="Prompt length in tokens as the server's tokenizer counts them, special tokens (BOS) included.",
    )
    output_len: int = Field(128, ge=1, le=32_768, description="Tokens generated per request (EOS ignored).")
    concurrency: int = Field(8, ge=1, le=512, description="Requests in flight at once.")
    time_budget_s: float = Field(90.0, gt=0, le=105.0, description="Stop sending after this; report what finished.")
    seed: int | None = Field(
        None, description="Seed of the prompt text; default: a new one per call (no prefix-cache hits across runs)."
    )


class Percentiles(BaseModel):
    mean: float | None = None
    p50: float | None = None
    p99: float | None = None


class BenchmarkOutput(BaseModel):
    completed: int
    failed: int
    duration_s: float = Field(description="First request sent to last answer received.")
    requests_per_s: float
    output_tokens_per_s: float = Field(
        description="Output tokens (as the server counted them) per second of wall time."
    )
    total_output_tokens: int
    total_input_tokens: int = Field(
        0, description="Prompt tokens of the completed requests, as the server counted them."
    )
    mean_input_tokens: float | None = Field(None, description="As the server counted them.")
    ttft_ms: Percentiles = Field(description="Time to first token (request sent → first chunk carrying a token).")
    tpot_ms: Percentiles = Field(
        default_factory=Percentiles, description="Time per output token after the first, per request."
    )
    itl_ms: Percentiles = Field(
        description="Inter-token latency: one gap per output token after the first, tokens without text included."
    )
    length_mismatches: int = Field(
        0,
        description="Completed requests whose server-counted prompt or output tokens differ from input_len/output_len.",
    )
    stream_chunks: int = Field(0, description="Streamed chunks that carried tokens (fewer than tokens: coalesced).")
    errors: list[str] = Field(default_factory=list, description="Distinct error messages (at most 5).")
    summary: str


@dataclass
class _Result:
    """One request's measurements (seconds), like vLLM's ``RequestFuncOutput``."""

    ok: bool = False
    error: str = ""
    ttft: float = 0.0
    latency: float = 0.0
    itl: list[float] = field(default_factory=list)
    output_tokens: int = 0
    prompt_tokens: int | None = None
    chunks: int = 0
    counted_by_chunk: bool = False  # the server gave no token counts: one token per chunk assumed


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation (numpy's default, as ``vllm bench serve`` uses)."""
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def _pct(values_s: list[float]) -> Percentiles:
    if not values_s:
        return Percentiles()
    ms = [v * 1000.0 for v in values_s]
    return Percentiles(
        mean=round(statistics.fmean(ms), 3), p50=round(percentile(ms, 50), 3), p99=round(percentile(ms, 99), 3)
    )


def _message(doc: Any, raw: bytes) -> str:
    err = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(err, dict):
        return str(err.get("message") or err)
    if err:
        return str(err)[:300]
    return raw.decode("utf-8", "replace")[:300] or "(empty body)"


def _http_error(status: int, doc: Any, raw: bytes, what: str) -> OpsError:
    msg = _message(doc, raw)
    if status == 401:
        return Conflict("The server refused the API key.", "Restart the server; its env file holds the key.")
    if status == 404 and "does not exist" in msg:
        return InvalidInput(f"The server does not serve that model: {msg}", "Use one of the served_models.")
    if status == 404:
        return HostError(f"The server has no {what} endpoint.", "benchmark_server needs vLLM's OpenAI server (0.26).")
    if status == 400:
        return InvalidInput(
            f"The server refused {what}: {msg}", "Lower input_len/output_len (max_model_len bounds both)."
        )
    return HostError(f"{what} answered HTTP {status}: {msg}", "Read the server's log with get_job_logs.")


def _check_endpoint(base_url: str, api_key: str | None) -> str:
    """The server's origin (``http(s)://host:port``); ValueError for anything else."""
    u = urlsplit(base_url)
    if u.scheme not in ("http", "https") or not u.hostname or u.path.strip("/") or u.query:
        raise ValueError(f"base_url must be http(s)://host:port, not {base_url!r}")
    if api_key is not None and any(c in api_key for c in "\r\n\0"):
        raise ValueError("the API key has a line break in it")
    return f"{u.scheme}://{u.netloc}"


@contextlib.asynccontextmanager
async def open_session(
    base_url: str, api_key: str | None = None, concurrency: int = 1
) -> AsyncIterator[aiohttp.ClientSession]:
    """One aiohttp session for one benchmark against one server, set up as ``vllm bench serve`` does.

    vllm/benchmarks/serve.py ``benchmark``: a ``TCPConnector`` with ``limit`` and
    ``limit_per_host`` = the concurrency, connections kept alive (60 s) and reused across
    requests. Unlike vLLM, proxy variables are not read (``trust_env`` off): the endpoint is a
    loopback port, an SSH forward or a tunnel of our own server job.
    """
    import aiohttp  # here, not at module level: server start-up never needs it

    origin = _check_endpoint(base_url, api_key)
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, keepalive_timeout=60, force_close=False
    )
    headers = {"User-Agent": "llm-ops-mcp-benchmark"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=_CONNECT_TIMEOUT_S)
    async with aiohttp.ClientSession(base_url=origin, connector=connector, headers=headers, timeout=timeout) as session:
        yield session


def _json_or_none(raw: bytes) -> Any:
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


async def _tokenize(http: aiohttp.ClientSession, model: str, text: str, special: bool) -> dict[str, Any]:
    """vLLM's ``POST /tokenize`` (serve/tokenize/protocol.py ``TokenizeCompletionRequest``)."""
    import aiohttp

    body = {"model": model, "prompt": text, "add_special_tokens": special}
    try:
        async with http.post("/tokenize", json=body, timeout=aiohttp.ClientTimeout(total=_SHORT_TIMEOUT_S)) as r:
            status, raw = r.status, await r.read()
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        raise HostError(f"Cannot reach the server's /tokenize: {type(e).__name__}: {e}", "get_job_status") from e
    doc = _json_or_none(raw)
    if status != 200:
        raise _http_error(status, doc, raw, "/tokenize")
    if not isinstance(doc, dict) or not isinstance(doc.get("tokens"), list):
        raise HostError("/tokenize answered without 'tokens'.", "benchmark_server needs vLLM's OpenAI server (0.26).")
    return doc


def _specials(with_sp: list[int], plain: list[int]) -> tuple[list[int], list[int]]:
    """(prefix, suffix) the tokenizer adds around a text with ``add_special_tokens`` (BOS, EOS…)."""
    n = len(plain)
    for k in range(len(with_sp) - n + 1):
        if with_sp[k : k + n] == plain:
            return with_sp[:k], with_sp[k + n :]
    raise HostError(
        "The server's tokenizer changes a text's tokens when it adds special tokens; exact prompts can't be built.",
        "Report this model's tokenizer; benchmark it with vllm bench serve meanwhile.",
    )


async def build_prompts(
    http: aiohttp.ClientSession, model: str, input_len: int, output_len: int, num_prompts: int, seed: int
) -> Prompts:
    """``num_prompts`` token-id prompts of exactly ``input_len`` tokens each (specials included)."""
    probe = await _tokenize(http, model, "Hello world", True)
    plain = (await _tokenize(http, model, "Hello world", False))["tokens"]
    prefix, suffix = _specials(list(probe["tokens"]), list(plain))
    limit = probe.get("max_model_len")
    if isinstance(limit, int) and input_len + output_len > limit:
        raise InvalidInput(
            f"input_len + output_len = {input_len + output_len} tokens exceeds the server's max_model_len {limit}.",
            f"Keep input_len + output_len <= {limit}.",
        )
    body_len = input_len - len(prefix) - len(suffix)
    if body_len < 1:
        raise InvalidInput(
            f"input_len {input_len} leaves no room for text: the tokenizer adds {len(prefix) + len(suffix)} "
            "special token(s) to every prompt.",
            f"Use input_len >= {len(prefix) + len(suffix) + 1}.",
        )
    rng = random.Random(seed)
    n_words = min(max(body_len, num_prompts) + 64, 40_000)
    words = [str(rng.randrange(10_000)) if rng.random() < 0.2 else rng.choice(_WORDS) for _ in range(n_words)]
    pool = list((await _tokenize(http, model, " ".join(words), False))["tokens"])
    if not pool:
        raise HostError("/tokenize returned no tokens for plain text.", "Check the server's tokenizer.")
    starts = rng.sample(range(len(pool)), min(num_prompts, len(pool)))
    return Prompts(prefix, pool, suffix, body_len, [starts[i % len(starts)] for i in range(num_prompts)])


class Prompts(Sequence[list[int]]):
    """The prompts, each made when it is sent: 2000 prompts of 128k tokens held at once would be GBs."""

    def __init__(self, prefix: list[int], pool: list[int], suffix: list[int], body_len: int, starts: list[int]) -> None:
        self.prefix, self.pool, self.suffix, self.body_len, self.starts = prefix, pool, suffix, body_len, starts

    def __len__(self) -> int:
        return len(self.starts)

    @overload
    def __getitem__(self, i: int) -> list[int]: ...
    @overload
    def __getitem__(self, i: slice) -> list[list[int]]: ...
    def __getitem__(self, i: int | slice) -> list[int] | list[list[int]]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        s, pool, n = self.starts[i], self.pool, len(self.pool)
        whole, part = divmod(self.body_len, n)
        body = (pool[s:] + pool[:s]) * whole + (pool[s:] + pool[:s])[:part]
        return [*self.prefix, *body, *self.suffix]


async def _sse_data(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent-event stream, each as soon as its line is complete.

    Read as vLLM's request function reads it (endpoint_request_func.py
    ``async_request_openai_completions``: ``response.content.iter_any()``, whatever bytes have
    arrived, not line by line through aiohttp's bounded readline). Its ``StreamedResponseHandler``
    splits events at ``"\\n\\n"`` and also takes a complete ``data:`` line before its blank
    line; splitting at every line end takes events at the same moment, and CRLF separators too.
    Blank separators and ``:`` comments (pings) carry no data and are skipped.
    """
    buf = b""
    async for piece in content.iter_any():
        buf += piece
        if b"\n" not in piece:
            continue
        *lines, buf = buf.split(b"\n")
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if buf.startswith(b"data:"):
        yield buf[5:].strip()


async def _one(http: aiohttp.ClientSession, model: str, prompt: list[int], output_len: int) -> _Result:
    """One streamed completion, timed per token (vLLM: ``async_request_openai_completions``)."""
    import aiohttp

    res = _Result()
    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_len,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
    }
    seen = 0  # tokens counted so far
    st = time.perf_counter()
    last = st
    try:
        async with http.post("/v1/completions", json=body) as r:
            if r.status != 200:
                raw = await r.read()
                res.error = str(_http_error(r.status, _json_or_none(raw), raw, "the request"))
                return res
            async with contextlib.aclosing(_sse_data(r.content)) as events:
                async for data in events:
                    if data == b"[DONE]":
                        continue  # read on to the body's end (as vLLM does): the connection is reused
                    now = time.perf_counter()
                    doc = json.loads(data)
                    if doc.get("error"):
                        err = doc["error"]
                        res.error = str(err.get("message") if isinstance(err, dict) else err)
                        return res
                    usage = doc.get("usage") or None
                    choices = doc.get("choices") or []
                    if not choices:
                        if usage:  # the final usage chunk
                            res.output_tokens = int(usage.get("completion_tokens") or 0)
                            res.prompt_tokens = usage.get("prompt_tokens")
                        continue
                    if usage and usage.get("completion_tokens") is not None:
                        k = int(usage["completion_tokens"]) - seen
                    elif choices[0].get("token_ids") is not None:
                        k = len(choices[0]["token_ids"])
                    else:
                        k, res.counted_by_chunk = 1, True
                    if k <= 0:
                        continue
                    if res.chunks == 0:
                        res.ttft = now - st
                        res.itl.extend([0.0] * (k - 1))  # tokens that came with the first one
                    else:
                        res.itl.extend([(now - last) / k] * k)
                    res.chunks += 1
                    seen += k
                    last = now
    except (aiohttp.ClientError, OSError, TimeoutError) as e:
        res.error = f"Connection to the server failed: {type(e).__name__}: {e}"
        return res
    except ValueError as e:
        res.error = f"The server sent a chunk that is not JSON: {e}"
        return res
    if res.chunks == 0:
        res.error = "The stream ended without a token."
        return res
    if not res.output_tokens:
        res.output_tokens = seen
    res.latency = last - st
    res.ok = True
    return res


async def benchmark_server(ctx: ToolContext, p: BenchmarkInput) -> BenchmarkOutput:
    """Streaming load test with token-exact lengths: throughput, requests/s, TTFT, TPOT and ITL."""
    url, key, names = await server_connection(await ctx.engine(), await ctx.serve_runtime(), p.server_job_id)
    return await measure(url, key, served_model(names, p.model, p.server_job_id), p)


async def measure(url: str, key: str | None, model: str, p: BenchmarkInput) -> BenchmarkOutput:
    """The load test itself against a server URL (no job lookup; ``p.server_job_id`` is not used).

    For benches that compare with ``vllm bench serve`` on a bare ``vllm serve`` as well.
    """
    seed = p.seed if p.seed is not None else random.SystemRandom().randrange(2**31)
    try:
        _check_endpoint(url, key)
    except ValueError as e:
        raise HostError(f"The server's endpoint is unusable: {e}", "get_job_status shows the endpoint.") from e
    async with open_session(url, key, p.concurrency) as http:
        prompts = await build_prompts(http, model, p.input_len, p.output_len, p.num_prompts, seed)
        results: list[_Result] = []
        in_flight = [0]
        sem = asyncio.Semaphore(p.concurrency)  # vLLM: --max-concurrency, all requests sent at once
        start = time.perf_counter()
        deadline = start + p.time_budget_s

        async def limited(prompt: list[int]) -> None:
            async with sem:
                if time.perf_counter() >= deadline:
                    return
                in_flight[0] += 1
                r = await _one(http, model, prompt, p.output_len)
                in_flight[0] -= 1
                results.append(r)

        tasks = [asyncio.ensure_future(limited(pr)) for pr in prompts]
        _, pending = await asyncio.wait(tasks, timeout=p.time_budget_s + _GRACE_S)
        stopped = in_flight[0]
        for t in pending:
            t.cancel()
        for t in pending:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        dur = max(time.perf_counter() - start, 1e-9)
    return _report(p, results, stopped, dur)


def _report(p: BenchmarkInput, results: list[_Result], stopped: int, dur: float) -> BenchmarkOutput:
    ok = [r for r in results if r.ok]
    errors: list[str] = []
    for r in results:
        if not r.ok and r.error not in errors and len(errors) < 5:
            errors.append(r.error)
    if stopped:
        errors.append(f"{stopped} request(s) still streaming {_GRACE_S:.0f} s past the time budget were stopped.")
    failed = len(results) - len(ok) + stopped
    if not ok and failed:
        raise HostError(f"Every benchmark request failed: {errors[0]}", "Check the server with query_model first.")
    total_out = sum(r.output_tokens for r in ok)
    total_in = sum(r.prompt_tokens or 0 for r in ok)
    has_in = [r for r in ok if r.prompt_tokens is not None]
    mismatches = sum(
        1
        for r in ok
        if r.output_tokens != p.output_len or (r.prompt_tokens is not None and r.prompt_tokens != p.input_len)
    )
    out = BenchmarkOutput(
        completed=len(ok),
        failed=failed,
        duration_s=round(dur, 3),
        requests_per_s=round(len(ok) / dur, 3),
        output_tokens_per_s=round(total_out / dur, 2),
        total_output_tokens=total_out,
        total_input_tokens=total_in,
        mean_input_tokens=round(total_in / len(has_in), 1) if has_in else None,
        ttft_ms=_pct([r.ttft for r in ok]),
        tpot_ms=_pct([(r.latency - r.ttft) / (r.output_tokens - 1) for r in ok if r.output_tokens > 1]),
        itl_ms=_pct([g for r in ok for g in r.itl]),
        length_mismatches=mismatches,
        stream_chunks=sum(r.chunks for r in ok),
        errors=errors,
        summary="",
    )
    skipped = p.num_prompts - len(results) - stopped
    notes = []
    if mismatches:
        notes.append(f"{mismatches} request(s) got other lengths than {p.input_len}/{p.output_len} tokens")
    if any(r.counted_by_chunk for r in ok):
        notes.append("the server sent no token counts per chunk: one token per chunk assumed")
    if skipped:
        notes.append(f"{skipped} not sent (time budget)")
    if failed:
        notes.append(f"{failed} failed")
    out.summary = (
        f"{len(ok)}/{p.num_prompts} requests of {p.input_len} prompt tokens → {p.output_len} output tokens at "
        f"concurrency {p.concurrency} in {dur:.1f} s: {out.output_tokens_per_s:.1f} output tok/s, "
        f"{out.requests_per_s:.2f} req/s, TTFT p50 {out.ttft_ms.p50} ms / p99 {out.ttft_ms.p99} ms, "
        f"TPOT p50 {out.tpot_ms.p50} ms, ITL p50 {out.itl_ms.p50} ms / p99 {out.itl_ms.p99} ms (per token)"
        + (f"; {'; '.join(notes)}" if notes else "")
        + "."
    )
    return out
