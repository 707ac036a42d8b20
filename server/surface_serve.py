"""Serving tools: start_vllm_server, query_model, benchmark_server, stop_vllm_server.

Only wiring (STYLE 1): the logic is in the tools/serve/ package. Each tool is handed the
server's one :class:`~tools.context.ToolContext`: its job engine makes a server an ordinary
job for get_job_status, get_job_logs and wait_for_job(until="ready"), and its serving
runtime holds the tunnels and API keys (closed with the server).
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.serve.bench import BenchmarkInput, BenchmarkOutput, benchmark_server
from tools.serve.client import QueryInput, QueryOutput, query_model
from tools.serve.schema import StartServerInput, StartServerOutput
from tools.serve.start import start_vllm_server
from tools.serve.stop import StopServerInput, StopServerOutput, stop_vllm_server

__all__ = ["register"]

START = ToolSpec(
    "start_vllm_server",
    "Serve a model (and LoRA adapters) with vLLM as a job: planned TP/context/quantization, "
    "returns job_id, endpoint and command at once.",
    open_world=True,
)
QUERY = ToolSpec(
    "query_model",
    "Ask a ready vLLM server job (chat messages or a prompt); returns text and usage.",
    open_world=True,
)
BENCH = ToolSpec(
    "benchmark_server",
    "Load-test a ready vLLM server as vllm bench serve does: prompts of exactly input_len tokens "
    "(server-counted), output_len tokens each; output tokens/s, requests/s, TTFT, TPOT, ITL per token.",
    open_world=True,
)
STOP = ToolSpec(
    "stop_vllm_server",
    "Stop a vLLM server job (graceful, then kill) and check its GPU memory is freed.",
    destructive=True,
    idempotent=True,
    open_world=True,
)


def register(app: MCPServer, ctx: ToolContext) -> None:
    async def _start(p: StartServerInput) -> StartServerOutput:
        return await start_vllm_server(ctx, p)

    async def _query(p: QueryInput) -> QueryOutput:
        return await query_model(ctx, p)

    async def _bench(p: BenchmarkInput) -> BenchmarkOutput:
        return await benchmark_server(ctx, p)

    async def _stop(p: StopServerInput) -> StopServerOutput:
        return await stop_vllm_server(ctx, p)

    add_tool(app, START, StartServerInput, _start, StartServerOutput)
    add_tool(app, QUERY, QueryInput, _query, QueryOutput)
    add_tool(app, BENCH, BenchmarkInput, _bench, BenchmarkOutput)
    add_tool(app, STOP, StopServerInput, _stop, StopServerOutput)
