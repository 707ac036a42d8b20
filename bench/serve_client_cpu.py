"""benchmark_server's request loop against vLLM 0.26.0's own request function, on a CPU.

Why: benchmark_server must cost the client no more than ``vllm bench serve`` does, or the
client is what gets measured (client CPU per streamed chunk shows up as TTFT and lost
throughput at thousands of tokens per second). Both run against the stand-in server
(tests/standin_vllm_server.py) on the same machine, with the same token-id prompts (ours,
from the server's /tokenize), in alternating order so both see the same load. vLLM's side
is its ``async_request_openai_completions`` (vllm/benchmarks/lib/endpoint_request_func.py,
loaded from the given vLLM source tree, no vLLM install needed) in a session built as
vllm/benchmarks/serve.py ``benchmark`` builds it, all requests sent at once under a
semaphore of the concurrency (``--max-concurrency``).

Usage: ``.venv/bin/python bench/serve_client_cpu.py --vllm-src /path/to/vllm [--rounds 6]``
(the directory of the ``vllm`` package: it holds ``benchmarks/lib/endpoint_request_func.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.serve.bench import BenchmarkInput, build_prompts, measure, open_session, percentile  # noqa: E402

MODEL = "Qwen/Qwen2.5-0.5B"  # the stand-in's built-in tokenizer serves it


def _load_request_funcs(vllm_src: Path) -> ModuleType:
    path = vllm_src / "benchmarks" / "lib" / "endpoint_request_func.py"
    spec = importlib.util.spec_from_file_location("vllm_endpoint_request_func", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"no {path}")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


async def _vllm(erf: ModuleType, url: str, p: BenchmarkInput) -> tuple[float, float]:
    async with open_session(url) as http:
        prompts = list(await build_prompts(http, MODEL, p.input_len, p.output_len, p.num_prompts, p.seed or 0))
    c = p.concurrency
    connector = aiohttp.TCPConnector(
        limit=c, limit_per_host=c, ttl_dns_cache=300, use_dns_cache=True, keepalive_timeout=60, force_close=False
    )
    timeout = aiohttp.ClientTimeout(total=6 * 60 * 60)
    async with aiohttp.ClientSession(connector=connector, trust_env=True, timeout=timeout) as session:
        sem = asyncio.Semaphore(c)

        async def one(prompt: list[int]) -> Any:
            async with sem:
                inp = erf.RequestFuncInput(
                    prompt=prompt,
                    api_url=f"{url}/v1/completions",
                    prompt_len=p.input_len,
                    output_len=p.output_len,
                    model=MODEL,
                    ignore_eos=True,
                )
                return await erf.async_request_openai_completions(inp, session)

        t0 = time.perf_counter()
        outs = await asyncio.gather(*[one(pr) for pr in prompts])
        dur = time.perf_counter() - t0
    ok = [o for o in outs if o.success]
    if len(ok) != len(outs):
        raise SystemExit(f"vLLM's request function failed: {[o.error for o in outs if not o.success][:1]}")
    return sum(o.output_tokens for o in ok) / dur, percentile([o.ttft * 1000 for o in ok], 50)


async def _ours(url: str, p: BenchmarkInput) -> tuple[float, float]:
    b = await measure(url, None, MODEL, p)
    if b.completed != p.num_prompts:
        raise SystemExit(b.summary)
    return b.output_tokens_per_s, float(b.ttft_ms.p50 or 0.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vllm-src", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=6)
    args = ap.parse_args()
    erf = _load_request_funcs(args.vllm_src)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, str(ROOT / "tests" / "standin_vllm_server.py"), "serve", MODEL]
    proc = subprocess.Popen(
        [*argv, "--host", "127.0.0.1", "--port", str(port), "--max-model-len", "4096"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)

        def work(seed: int) -> BenchmarkInput:
            return BenchmarkInput(
                server_job_id="serve-x", num_prompts=96, input_len=256, output_len=64, concurrency=8, seed=seed
            )

        asyncio.run(_ours(url, work(999)))  # warm-up
        ratios = []
        for i in range(args.rounds):
            got: dict[str, tuple[float, float]] = {}
            for name in ("ours", "vllm") if i % 2 == 0 else ("vllm", "ours"):
                p = work(100 + i)
                got[name] = asyncio.run(_ours(url, p) if name == "ours" else _vllm(erf, url, p))
            ratios.append(got["ours"][0] / got["vllm"][0])
            print(
                f"round {i}: ours {got['ours'][0]:.1f} tok/s, TTFT p50 {got['ours'][1]:.1f} ms | "
                f"vLLM {got['vllm'][0]:.1f} tok/s, TTFT p50 {got['vllm'][1]:.1f} ms | ratio {ratios[-1]:.3f}",
                flush=True,
            )
        print(f"ours/vLLM output tok/s: {min(ratios):.2f}-{max(ratios):.2f}x, median {statistics.median(ratios):.2f}x")
    finally:
        proc.terminate()
        proc.wait(10)


if __name__ == "__main__":
    main()
