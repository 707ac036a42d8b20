"""submit_finetune: wiring only. The planning and the job are the ``tools/finetune/`` package; the job runs
through the engine."""

from __future__ import annotations

from functools import partial

from mcp.server.mcpserver import MCPServer

from server.registry import ToolSpec, add_tool
from tools.context import ToolContext
from tools.finetune.inputs import FinetuneInput
from tools.finetune.submit import SubmitFinetuneOutput, submit_finetune

__all__ = ["register"]

SUBMIT = ToolSpec(
    "submit_finetune",
    "Start a LoRA/QLoRA/full fine-tune (Unsloth, or TRL+PEFT) planned to fit the GPU.",
    open_world=True,
)


def register(app: MCPServer, ctx: ToolContext) -> None:
    add_tool(app, SUBMIT, FinetuneInput, partial(submit_finetune, ctx), SubmitFinetuneOutput)
