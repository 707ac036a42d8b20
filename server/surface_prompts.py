"""Prompts: the workflows an agent runs with these tools, written out once.

A prompt is text the client shows its user or feeds its model; it calls nothing. The
fine-tune → serve → evaluate loop is the product's main path, so it is spelled out
with the exact tool names and the checks between steps.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

from server.state import AppState

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
5. Evaluate: query_model(server_job_id, model="ft", messages=[...]) on held-out examples of {dataset!r},
   compare with the base model (model={model!r}) on the same prompts; benchmark_server for throughput.
6. stop_vllm_server(server_job_id) when done, so the GPU is free again.
"""


def register(app: MCPServer, state: AppState) -> None:
    app.prompt(
        name="finetune_serve_evaluate",
        description="Fine-tune a model, serve the adapter with vLLM, and evaluate it against the base.",
    )(finetune_serve_evaluate)
