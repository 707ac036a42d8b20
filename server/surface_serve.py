"""Serving tools: start_vllm_server, query_model, benchmark_server, stop_vllm_server.

Only wiring (STYLE 1): the logic is in tools/serve.py, tools/serve_client.py and
tools/serve_host.py. The job engine is the one of server/surface_jobs.py, so a
server is an ordinary job for get_job_status, get_job_logs and
wait_for_job(until="ready"). Tunnels and API keys live in ``state.services["serve"]``
(closed with the server).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from server.state import AppState
from server.surface_jobs import get_engine
from tools.serve import (
    StartServerInput,
    StartServerOutput,
    StopServerInput,
    StopServerOutput,
    start_vllm_server,
    stop_vllm_server,
)
from tools.serve_client import (
    BenchmarkInput,
    BenchmarkOutput,
    QueryInput,
    QueryOutput,
    benchmark_server,
    query_model,
)
from tools.serve_host import ServeRuntime
from tools.vllm_args import FlagCache

__all__ = ["get_runtime", "register"]


async def get_runtime(state: AppState) -> ServeRuntime:
    """The server's one ServeRuntime (tunnels, keys), built on first use."""
    rt = state.services.get("serve")
    if rt is None:
        rt = ServeRuntime(await get_engine(state))
        state.services["serve"] = rt
    return rt  # type: ignore[no-any-return]


def register(app: MCPServer, state: AppState) -> None:
    async def _start(p: StartServerInput) -> StartServerOutput:
        engine = await get_engine(state)
        return await start_vllm_server(engine, await get_runtime(state), FlagCache(state.state_dir), p)

    add_tool(
        app,
        ToolSpec(
            "start_vllm_server",
            "Serve a model (and LoRA adapters) with vLLM as a job: planned TP/context/quantization, "
            "returns job_id, endpoint and command at once.",
            open_world=True,
        ),
        StartServerInput,
        _start,
        StartServerOutput,
    )

    async def _query(p: QueryInput) -> QueryOutput:
        return await query_model(await get_engine(state), await get_runtime(state), p)

    add_tool(
        app,
        ToolSpec(
            "query_model",
            "Ask a ready vLLM server job (chat messages or a prompt); returns text and usage.",
            open_world=True,
        ),
        QueryInput,
        _query,
        QueryOutput,
    )

    async def _bench(p: BenchmarkInput) -> BenchmarkOutput:
        return await benchmark_server(await get_engine(state), await get_runtime(state), p)

    add_tool(
        app,
        ToolSpec(
            "benchmark_server",
            "Load-test a ready vLLM server as vllm bench serve does: prompts of exactly input_len tokens "
            "(server-counted), output_len tokens each; output tokens/s, requests/s, TTFT, TPOT, ITL per token.",
            open_world=True,
        ),
        BenchmarkInput,
        _bench,
        BenchmarkOutput,
    )

    async def _stop(p: StopServerInput) -> StopServerOutput:
        return await stop_vllm_server(await get_engine(state), await get_runtime(state), p)

    add_tool(
        app,
        ToolSpec(
            "stop_vllm_server",
            "Stop a vLLM server job (graceful, then kill) and check its GPU memory is freed.",
            destructive=True,
            idempotent=True,
            open_world=True,
        ),
        StopServerInput,
        _stop,
        StopServerOutput,
    )
