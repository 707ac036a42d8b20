"""Prompts: the workflows an agent runs with these tools, written out once.

A prompt is text the client shows its user or feeds its model; it calls nothing. The
fine-tune → serve → evaluate loop is the product's main path, so it is spelled out
with the exact tool names and the checks between steps.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from tools.context import ToolContext

__all__ = ["register"]


def finetune_serve_evaluate(model: str, dataset: str, host: str = "", method: str = "lora") -> str:
    on = f" on host {host!r}" if host else " on the default host"
    return f"""Fine-tune {model} on {dataset}{on}, serve the result, and evaluate it.

1. estimate_memory(model={model!r}, task={method!r}) — check it fits the host's GPU; if not, use the
   recommendation (qlora, shorter seq_len, a larger tier).
2. submit_finetune(model={model!r}, dataset={dataset!r}, method={method!r}{f", host={host!r}" if host else ""},
   dry_run=true) — read the plan (batch, accumulation, estimated peak vs GPU memory); then submit for real
   with an idempotency_key.
3. Follow it: wait_for_job(job_id) in a loop (45 s per call); get_job_status(job_id, plot=true) for the loss
   curve; get_job_logs(job_id, offset=...) to read new log lines. Stop if the loss diverges (cancel_job).
4. When it succeeded: start_vllm_server(model={model!r}, lora_adapters=[{{"name": "ft", "job_id": <job_id>}}])
   and wait_for_job(server_job_id, until="ready").
5. Try it: query_model(server_job_id, model="ft", messages=[...]) on held-out examples of {dataset!r},
   beside the base model (model={model!r}) on the same prompts; benchmark_server for throughput.
6. stop_vllm_server(server_job_id) when done, so the GPU is free again.
7. Evaluate: evaluate_model(finetune_job_id=<job_id>, tasks=[...]) and the same call with use_adapter=false
   (the base on the same rows): the loss / perplexity on the fine-tune's held-out split, scored as the
   fine-tune scored it, plus lm-eval tasks (a benchmark such as "hellaswag", or your own: task_files=[a task
   YAML and its jsonl], apply_chat_template=true for a chat-tuned model); wait_for_job on both.
8. compare_runs(job_ids=[<job_id>, <base eval>, <adapter eval>]): the table (losses, perplexity, task scores,
   tokens/s, memory, time) and a PNG of the loss curves. The adapter is better when its perplexity is lower
   and its task scores higher than the base's.
"""


def register(app: MCPServer, ctx: ToolContext) -> None:
    app.prompt(
        name="finetune_serve_evaluate",
        description="Fine-tune a model, serve the adapter with vLLM, and evaluate it against the base.",
    )(finetune_serve_evaluate)
