"""Model artifacts on a host: fetch a Hub model into its cache, list what the cache holds, quantize.

Wiring only: the functions are ``tools/download.py`` and ``tools/quantize.py``.
"""

from __future__ import annotations

import os
from functools import partial

from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.download import (
    DownloadInput,
    DownloadOutput,
    ListCachedInput,
    ListCachedOutput,
    download_model,
    list_cached_models,
)
from tools.quantize import QuantizeInput, QuantizeOutput, quantize_model

__all__ = ["register"]

DOWNLOAD = ToolSpec(
    "download_model",
    "Fetch a Hub model into a host's HF cache (resumable; SLURM: on the login node); returns a job_id.",
    open_world=True,
    idempotent=True,
)
LIST_CACHED = ToolSpec(
    "list_cached_models",
    "Models and datasets in a host's Hugging Face cache, with sizes and revisions.",
    read_only=True,
    idempotent=True,
    open_world=True,
)
QUANTIZE = ToolSpec(
    "quantize_model",
    "Quantize a model on a host (bnb-nf4/int8, or awq/gptq/fp8 for vLLM); returns a job_id at once.",
    open_world=True,
)


def register(app: MCPServer, ctx: ToolContext) -> None:
    async def _download(p: DownloadInput) -> DownloadOutput:
        return await download_model(ctx, p, os.environ)  # HF_TOKEN, when set, goes to the job as a secret

    async def _list_cached(p: ListCachedInput) -> ListCachedOutput:
        host = ctx.host(p.host)
        return await list_cached_models(ctx.transport(host), host)

    add_tool(app, QUANTIZE, QuantizeInput, partial(quantize_model, ctx), QuantizeOutput)
    add_tool(app, DOWNLOAD, DownloadInput, _download, DownloadOutput)
    add_tool(app, LIST_CACHED, ListCachedInput, _list_cached, ListCachedOutput)
