"""evaluate_model and compare_runs: wiring only. The logic is tools/evaluate.py and tools/evaluate_compare.py."""

from __future__ import annotations

import base64
from functools import partial
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp_types import CallToolResult, ImageContent, TextContent

from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.evaluate import EvaluateInput, EvaluateOutput, evaluate_model
from tools.evaluate_compare import CompareInput, CompareOutput, compare_runs

__all__ = ["register"]

EVALUATE = ToolSpec(
    "evaluate_model",
    "Evaluate a model, adapter, fine-tune job or served model: loss/perplexity on a dataset (as the fine-tune "
    "computes it) and lm-eval benchmark tasks, as a job.",
    open_world=True,
)
COMPARE = ToolSpec(
    "compare_runs",
    "Fine-tune and evaluation jobs side by side (losses, perplexity, task scores, tok/s, memory, time) "
    "plus a PNG of their loss curves.",
    read_only=True,
)


def register(app: MCPServer, ctx: ToolContext) -> None:
    add_tool(app, EVALUATE, EvaluateInput, partial(evaluate_model, ctx), EvaluateOutput)

    async def _compare(p: CompareInput) -> CallToolResult:
        out, png = await compare_runs(ctx, p)
        content: list[TextContent | ImageContent] = [TextContent(type="text", text=f"{out.summary}\n\n{out.table}")]
        if png is not None:
            content.append(ImageContent(type="image", data=base64.b64encode(png).decode(), mime_type="image/png"))
        return CallToolResult(content=content, structured_content=out.model_dump(mode="json"))

    add_tool(app, COMPARE, CompareInput, _compare, Annotated[CallToolResult, CompareOutput])
