"""The product in one run: a scripted MCP client drives the server over stdio.

It starts ``llm-ops-mcp serve`` on the embedded default (one ``local`` host, no
config, no GPU needed) with a private state dir and workdir, and walks the real
workflow an agent would: look at hosts and GPU tiers, estimate memory, run and
follow a job, fine-tune a tiny model on the CPU, serve it, evaluate base vs adapter, quantize it. Every
step prints what it called and what came back. Usage: ``make demo``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import Client
from mcp.client.stdio import StdioServerParameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.helpers.tiny_model builds the demo's tiny model


def banner(text: str) -> None:
    print(f"\n=== {text} " + "=" * max(0, 70 - len(text)), flush=True)


async def call(c: Client, tool: str, args: dict[str, Any] | None = None, show: bool = True) -> dict[str, Any]:
    args = args or {}
    if show:
        print(f"> {tool}({json.dumps(args)[1:-1]})", flush=True)
    r = await c.call_tool(tool, args)
    if r.is_error:
        raise SystemExit(f"demo: {tool} failed: {r.content[0].text}")
    out = r.structured_content or {}
    if show and "summary" in out:
        print(f"  {out['summary']}", flush=True)
    return out


async def step_hosts(c: Client) -> None:
    banner("Hosts and GPU tiers")
    await call(c, "list_hosts", {"check": True})
    await call(c, "list_gpu_tiers", {"min_memory_gib": 40})


async def step_estimate(c: Client) -> None:
    banner("estimate_memory: Llama 3.1 70B, serving at 8k context")
    out = await call(
        c,
        "estimate_memory",
        {"model": "meta-llama/Llama-3.1-70B", "task": "inference", "seq_len": 8192, "batch_size": 8},
    )
    b = out["breakdown_gib"]
    print("  per GPU (GiB): " + ", ".join(f"{k} {v:.1f}" for k, v in b.items() if v))
    print(f"  {'tier':<11} {'fits':<5} {'min GPUs':>8} {'headroom GiB':>13}")
    for tier, f in out["fits"].items():
        print(f"  {tier:<11} {'yes' if f['fits'] else 'no':<5} {f['min_gpus'] or '-':>8} {f['headroom_gib']:>13.1f}")
    out = await call(
        c,
        "estimate_memory",
        {"model": "meta-llama/Llama-3.1-8B", "task": "qlora", "seq_len": 2048, "batch_size": 2, "gpu": "RTX4090"},
    )


async def follow_job(c: Client, job_id: str, max_s: float = 600) -> dict[str, Any]:
    """What an agent does: read the log by offset while the job runs, then wait for the end."""
    print(f"  following {job_id}: get_job_logs(offset=...) + wait_for_job(timeout_s=5) until it ends")
    offset = 0
    deadline = time.monotonic() + max_s
    shown = 0
    while time.monotonic() < deadline:
        logs = await call(c, "get_job_logs", {"job_id": job_id, "offset": offset}, show=False)
        for line in logs["text"].splitlines():
            if shown < 12 or "loss" in line:
                print(f"  | {line[:150]}")
            shown += 1
        offset = logs["next_offset"]
        if logs["eof"] and logs["state"] in ("succeeded", "failed", "cancelled", "lost"):
            break
        st = await call(c, "wait_for_job", {"job_id": job_id, "timeout_s": 5}, show=False)
        job = st["job"]
        if job.get("metrics") and job["metrics"].get("loss") is not None:
            m = job["metrics"]
            print(
                f"  progress: step {m.get('step')}/{m.get('total_steps')}, loss {m.get('loss'):.3f}, "
                f"ETA {job.get('eta_s') or 0:.0f} s"
            )
    return await call(c, "get_job_status", {"job_id": job_id})


async def step_finetune(c: Client, work: Path) -> str:
    banner("submit_finetune: LoRA of a tiny random-init Llama on the CPU (TRL + PEFT)")
    from tests.helpers.tiny_model import build_tiny_model, make_dataset

    model = build_tiny_model(work / "tiny-llama")
    data = make_dataset(work / "colours.jsonl", "alpaca", n=64)
    print(f"  built {model} (~125k parameters) and {data.name} (64 alpaca rows)")
    args = {
        "model": str(model),
        "dataset": str(data),
        "max_steps": 30,
        "max_seq_length": 64,
        "learning_rate": 5e-3,
        "save_steps": 15,
        "output_name": "tiny-colours",
        "save_merged": True,
    }
    await call(c, "submit_finetune", {**args, "dry_run": True})
    out = await call(c, "submit_finetune", args)
    job_id = out["job_id"]
    status = await follow_job(c, job_id)
    if status["state"] != "succeeded":
        raise SystemExit(f"demo: the fine-tune ended {status['state']}: {status.get('summary')}")
    outputs = Path(status["job_dir"]) / "outputs"
    print("  outputs: " + ", ".join(sorted(p.name for p in outputs.iterdir())))
    return job_id


async def step_quantize(c: Client, finetune_job: str) -> None:
    banner("quantize_model: bnb-nf4 of the fine-tuned tiny model (CPU), then the HF cache listing")
    status = await call(c, "get_job_status", {"job_id": finetune_job}, show=False)
    manifest = json.loads((Path(status["job_dir"]) / "outputs" / "manifest.json").read_text())
    model = manifest["paths"]["merged"]  # the 16-bit merged model the fine-tune saved
    out = await call(c, "quantize_model", {"model": model, "method": "bnb-nf4", "output_name": "tiny-nf4"})
    status = await follow_job(c, out["job_id"], max_s=300)
    if status["state"] != "succeeded":
        raise SystemExit(f"demo: quantization ended {status['state']}: {status.get('summary')}")
    q = json.loads((Path(status["job_dir"]) / "outputs" / "manifest.json").read_text())
    keys = ("size_before_bytes", "size_after_bytes", "perplexity_before", "perplexity_after")
    print("  manifest: " + ", ".join(f"{k} {q[k]}" for k in keys if k in q))
    await call(c, "list_cached_models", {})


async def step_evaluate(c: Client, work: Path, finetune_job: str) -> None:
    banner("evaluate_model: base vs adapter (loss on the fine-tune's rows, a local lm-eval task), compare_runs")
    from tests.helpers.tiny_eval import TASK_NAME, write_colour_task

    files = [str(p) for p in write_colour_task(work / "eval-task")]
    print(f"  local lm-eval task {TASK_NAME}: " + ", ".join(Path(f).name for f in files))
    common = {"finetune_job_id": finetune_job, "tasks": [TASK_NAME], "task_files": files, "apply_chat_template": True}
    jobs = [
        (await call(c, "evaluate_model", {**common, "use_adapter": False, "output_name": "eval-base"}))["job_id"],
        (await call(c, "evaluate_model", {**common, "output_name": "eval-adapter"}))["job_id"],
    ]  # both run at once, like any two jobs
    for job in jobs:
        st = await call(c, "wait_for_job", {"job_id": job, "timeout_s": 30}, show=False)
        while not st["job"]["terminal"]:
            st = await call(c, "wait_for_job", {"job_id": job, "timeout_s": 30}, show=False)
        if st["job"]["state"] != "succeeded":
            raise SystemExit(f"demo: evaluation {job} ended {st['job']['state']}: {st['job']['summary']}")
        print(f"  {job}: {st['job']['metrics'].get('summary')}")
    out = await call(c, "compare_runs", {"job_ids": [finetune_job, *jobs]})
    print("\n".join("  " + line for line in out["table"].splitlines()))


def standin_env(work: Path) -> dict[str, str]:
    """Without vLLM on this machine, serve through the test stand-in, and say so plainly."""
    if shutil.which("vllm") or importlib.util.find_spec("vllm") is not None:
        print("vLLM is installed here: the serving step runs real vLLM.")
        return {}
    from tests.standin_vllm_server import install_standin

    print(
        "NOTE: vLLM is not installed on this machine (it needs a CUDA GPU), so the serving step runs\n"
        "      against tests/standin_vllm_server.py, a STAND-IN OpenAI-compatible server with no model\n"
        "      behind it. Everything else in that step (planning, flag checks against vLLM 0.26.0's help,\n"
        "      the job engine, readiness checks, the OpenAI client) is the real code."
    )
    return install_standin(work / "vllm-standin")


async def step_serve(c: Client, model: str, finetune_job: str) -> None:
    banner("start_vllm_server: the tiny base model plus the fresh LoRA adapter, query, benchmark, stop")
    out = await call(
        c,
        "start_vllm_server",
        {"model": model, "max_num_seqs": 4, "lora_adapters": [{"name": "colours", "job_id": finetune_job}]},
    )
    print(f"  command: {out['command_line']}")
    job = out["job_id"]
    await call(c, "wait_for_job", {"job_id": job, "until": "ready", "timeout_s": 90})
    q = await call(
        c,
        "query_model",
        {
            "server_job_id": job,
            "model": "colours",
            "max_tokens": 8,
            "messages": [{"role": "user", "content": "What colour is the sky?"}],
        },
    )
    print(f"  answer: {q['text']!r}")
    await call(
        c,
        "benchmark_server",
        {"server_job_id": job, "num_prompts": 16, "input_len": 32, "output_len": 16, "concurrency": 4},
    )
    await call(c, "stop_vllm_server", {"job_id": job})


async def main() -> None:
    with tempfile.TemporaryDirectory(prefix="llm-ops-demo-") as td:
        env = {**os.environ, "LLM_OPS_MCP_STATE_DIR": str(Path(td) / "state"), "HOME": os.environ.get("HOME", td)}
        env.pop("LLM_OPS_MCP_CONFIG", None)
        # The embedded default host works in ~/llm-ops; the demo keeps it private.
        env["LLM_OPS_MCP_DEFAULT_WORKDIR"] = str(Path(td) / "work")
        env["HF_HUB_OFFLINE"] = "1"  # the demo needs no network: its model is built on the spot
        extra = standin_env(Path(td))
        if extra:  # the local host's jobs inherit the server's environment: `vllm` is the stand-in there
            env["PATH"], env["PYTHONPATH"] = extra["PATH"], extra["PYTHONPATH"]
        params = StdioServerParameters(command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=ROOT)
        t0 = time.monotonic()
        async with Client(params, mode="auto") as c:
            tools = {t.name for t in (await c.list_tools()).tools}
            print(f"connected over stdio; {len(tools)} tools: {', '.join(sorted(tools))}")
            await step_hosts(c)
            await step_estimate(c)
            ft = await step_finetune(c, Path(td))
            await step_serve(c, str(Path(td) / "tiny-llama"), ft)
            await step_evaluate(c, Path(td), ft)
            await step_quantize(c, ft)
        banner(f"demo finished in {time.monotonic() - t0:.1f} s")


if __name__ == "__main__":
    anyio.run(main)
