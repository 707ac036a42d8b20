"""Why do benchmark_server and ``vllm bench serve`` disagree? Variants on one server, plus the server's own view.

Used by bench/workflow_gpu.py's ``bench-agreement`` part (GPU machine, vLLM importable).
Two clients driving the same server with the same workload should see the same output
throughput; when they don't, either one client is the bottleneck or the requests differ.
This separates the two:

* ``vllm-func ids``: vLLM 0.26.0's own request function
  (vllm/benchmarks/lib/endpoint_request_func.py ``async_request_openai_completions``: its
  payload, no ``continuous_usage_stats``, ``repetition_penalty 1.0``) driven by our harness
  (benchmark_server's prompts as token ids, our semaphore and session);
* ``vllm-func text``: the same with the prompts turned into text by the server's
  ``/detokenize`` (what ``vllm bench serve`` sends: text);
* every run samples the server's Prometheus ``/metrics`` (vllm/v1/metrics/loggers.py:
  ``vllm:num_requests_running``, ``vllm:generation_tokens_total``) four times a second, so
  each row says how many requests the server really had running and how many tokens per
  second it really generated, whatever the client measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import statistics
import time
from typing import Any

__all__ = ["MetricsSampler", "vllm_func_once"]

_GAUGE = re.compile(rb"^vllm:num_requests_running\{[^}]*\}\s+([0-9.eE+-]+)", re.M)
_GEN = re.compile(rb"^vllm:generation_tokens_total\{[^}]*\}\s+([0-9.eE+-]+)", re.M)


class MetricsSampler:
    """Polls ``/metrics`` while a run lasts: mean running requests and generated tokens/s, server-side."""

    def __init__(self, base_url: str, period_s: float = 0.25) -> None:
        self.base_url = base_url.rstrip("/")
        self.period_s = period_s
        self.samples: list[tuple[float, float, float]] = []  # (time, running, generated so far)
        self._task: asyncio.Task[None] | None = None

    async def _poll(self) -> None:
        import aiohttp

        async with aiohttp.ClientSession() as http:
            while True:
                with contextlib.suppress(Exception):
                    async with http.get(f"{self.base_url}/metrics") as r:
                        body = await r.read()
                    run, gen = _GAUGE.findall(body), _GEN.findall(body)
                    if run and gen:
                        self.samples.append(
                            (time.perf_counter(), sum(float(x) for x in run), sum(float(x) for x in gen))
                        )
                await asyncio.sleep(self.period_s)

    async def __aenter__(self) -> MetricsSampler:
        self._task = asyncio.ensure_future(self._poll())
        await asyncio.sleep(0.05)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def summary(self) -> dict[str, Any]:
        """Server-side figures over the busy window (the samples with a request running)."""
        busy = [x for x in self.samples if x[1] > 0]
        if len(busy) < 2:
            return {"server_samples": len(self.samples)}
        (t0, _, g0), (t1, _, g1) = busy[0], busy[-1]
        return {
            "server_mean_running": round(statistics.mean(x[1] for x in busy), 2),
            "server_gen_tokens_per_s": round((g1 - g0) / max(t1 - t0, 1e-9), 1),
            "server_busy_s": round(t1 - t0, 2),
        }


async def _detokenize(http: Any, model: str, ids: list[int]) -> str:
    async with http.post("/detokenize", json={"model": model, "tokens": ids}) as r:
        return str((await r.json())["prompt"])


async def vllm_func_once(
    base_url: str, key: str | None, model: str, b: dict[str, int], as_text: bool, seed: int
) -> dict[str, Any]:
    """vLLM's own request function over benchmark_server's prompts (token ids or their text)."""
    import aiohttp
    from vllm.benchmarks.lib.endpoint_request_func import RequestFuncInput, async_request_openai_completions

    from tools.serve.bench import build_prompts, open_session

    n, conc = b["num_prompts"], b["concurrency"]
    async with open_session(base_url, key, conc) as http:
        prompts = await build_prompts(http, model, b["input_len"], b["output_len"], n, seed)
        items: list[Any] = [prompts[i] for i in range(n)]
        if as_text:
            items = [await _detokenize(http, model, p) for p in items]
    import os

    if key:
        os.environ["OPENAI_API_KEY"] = key  # _get_headers reads it
    connector = aiohttp.TCPConnector(limit=conc, limit_per_host=conc, keepalive_timeout=60, force_close=False)
    sem = asyncio.Semaphore(conc)
    url = base_url.rstrip("/") + "/v1/completions"
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=6 * 3600)) as s:

        async def one(p: Any) -> Any:
            inp = RequestFuncInput(prompt=p, api_url=url, prompt_len=b["input_len"], output_len=b["output_len"],
                                   model=model, ignore_eos=True, extra_body={"temperature": 0.0})  # fmt: skip
            async with sem:
                return await async_request_openai_completions(inp, s)

        async with MetricsSampler(base_url) as ms:
            t = time.perf_counter()
            outs = await asyncio.gather(*(one(p) for p in items))
            dur = time.perf_counter() - t
    ok = [o for o in outs if o.success]
    tokens = sum(o.output_tokens or 0 for o in ok)
    tpots = [(o.latency - o.ttft) / (o.output_tokens - 1) * 1000 for o in ok if (o.output_tokens or 0) > 1]
    chunks = [len(o.itl) + 1 for o in ok]
    return {
        "output_tokens_per_s": round(tokens / dur, 2),
        "duration_s": round(dur, 3),
        "completed": len(ok),
        "total_output_tokens": tokens,
        "ttft_ms": {"p50": round(statistics.median(o.ttft for o in ok) * 1000, 3)} if ok else None,
        "tpot_ms": {"p50": round(statistics.median(tpots), 3)} if tpots else None,
        "tokens_per_chunk": round(tokens / max(sum(chunks), 1), 2),
        **ms.summary(),
    }
