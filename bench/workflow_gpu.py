"""GPU benchmark: the whole product through its MCP server on one GPU host, as an agent would run it.

Why (issue 16): each tool is tested on its own on a CPU, but what a user sees is the chain
on a real GPU: estimate_memory → submit_finetune (Unsloth LoRA, merged copy) → wait_for_job →
start_vllm_server with the fresh adapter → ready → query_model on base and adapter →
benchmark_server beside ``vllm bench serve`` (same server, lengths and concurrency) →
stop_vllm_server (nvidia-smi shows the memory back) → quantize_model fp8 of the merged model →
serve that checkpoint → query → stop; and the time to ready of ``start_vllm_server`` against
a bare ``vllm serve`` with exactly the job's flags. A real MCP client drives
``llm-ops-mcp serve`` over stdio (as examples/demo.py does), on one local host whose
interpreter is the GPU machine's own Python.

The GPU machine allows 10 minutes per call and keeps /tmp only while it stays warm, so the
run is cut in parts, each its own call, each appending rows (JSON lines) to
OUT/workflow_gpu.jsonl and the jobs' logs to OUT/logs/:

  setup           the random-init Llama-3.2-1B shape (bf16, on the GPU), a BPE tokenizer
                  trained with `tokenizers` with a chat template, a chat dataset
  finetune-serve  the fine-tune, the server with the adapter, queries, both benchmarks, stop
  quantize        fp8 of the merged model (llm-compressor), served, queried, stopped
  ready-time      start_vllm_server vs bare `vllm serve` with the job's own argv, alternating
                  (tool, bare, tool, bare, ...); the first run only warms the caches
  evaluate        evaluate_model of the fine-tune's base and adapter (loss + a local lm-eval task on
                  its vllm back-end, and through local-completions against the served adapter), compare_runs
  bench-agreement benchmark_server vs `vllm bench serve` on one server of the base model:
                  --rounds rounds of both, the order flipping each round; the ratio of medians

The host config (written to WORK/config.toml) gives each kind of job its own env through
``kind_env``, because the machine keeps three package trees apart: vLLM (/tmp/vsite, with
compressed-tensors 0.17), the fine-tune stack (/tmp/site: ``import unsloth`` patches vLLM
whenever vLLM imports, so training must not see /tmp/vsite) and llm-compressor
(/tmp/llmc, compressed-tensors 0.19: bench/gpu_llmc_bundle.sh), used as /tmp/llmc:/tmp/site.

``--standin`` runs the same flow on a CPU: a tiny Llama, TRL instead of Unsloth (what
backend='auto' picks without CUDA), tests/standin_vllm_server.py in vLLM's place, the
llm-compressor tree of ``--llmc-site``. Only the host config's trees and the model differ;
``vllm bench serve`` and nvidia-smi are skipped there (rows say so).

  python bench/workflow_gpu.py --part setup --out $OUT                   # on the GPU machine, per part
  python bench/workflow_gpu.py --standin --part all --work /tmp/wfs --out /tmp/wfs/out \\
      --llmc-site /tmp/llmc-cpu                                           # CPU
  python bench/workflow_gpu.py --table bench/data/workflow_gpu.jsonl      # the table of recorded rows
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

ROWS = "workflow_gpu.jsonl"
ADAPTER = "chat-lora"
READY_LINE = re.compile(r"Application startup complete")
GPU_PYTHON = "/opt/torch/.venv/bin/python"


@dataclass(frozen=True)
class Sizes:
    """What one mode runs: the model shape and the sizes of each step."""

    shape: str
    vocab: int
    rows: int
    ft_steps: int
    ft_seq: int
    max_num_seqs: int
    bench: dict[str, int]
    agreement_prompts: int
    calib_samples: int
    ready_timeout_s: float


GPU = Sizes(
    shape="llama-3.2-1b",
    vocab=8192,
    rows=512,
    ft_steps=60,
    ft_seq=512,
    max_num_seqs=32,
    bench={"num_prompts": 200, "input_len": 512, "output_len": 128, "concurrency": 32},
    agreement_prompts=800,  # ~20 s a run at ~5,000 output tokens/s on the H200
    calib_samples=64,
    ready_timeout_s=300.0,
)
STANDIN = Sizes(
    shape="tiny",
    vocab=1024,
    rows=64,
    ft_steps=8,
    ft_seq=64,
    max_num_seqs=4,
    bench={"num_prompts": 16, "input_len": 32, "output_len": 16, "concurrency": 4},
    agreement_prompts=16,
    calib_samples=16,
    ready_timeout_s=60.0,
)


@dataclass
class Ctx:
    """One part's run: where things are, what mode, where rows go."""

    args: argparse.Namespace
    sizes: Sizes
    work: Path
    out: Path
    t0: float = field(default_factory=time.monotonic)

    @property
    def mode(self) -> str:
        return "standin" if self.args.standin else "gpu"

    @property
    def model(self) -> Path:
        return self.work / "model"

    @property
    def dataset(self) -> Path:
        return self.work / "data" / "chat.jsonl"

    @property
    def state_file(self) -> Path:
        return self.work / "bench_state.json"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.t0)

    def state(self) -> dict[str, Any]:
        return json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    def save_state(self, **kv: Any) -> None:
        self.state_file.write_text(json.dumps({**self.state(), **kv}, indent=1))

    def row(self, part: str, step: str, ok: bool, **data: Any) -> dict[str, Any]:
        """Append one row to OUT/workflow_gpu.jsonl at once (a part cut off keeps what it measured)."""
        r = {"bench": "workflow_gpu", "part": part, "step": step, "ok": ok, "mode": self.mode,
             "gpu": gpu_name(), "date": time.strftime("%Y-%m-%d"), "t_s": round(time.monotonic() - self.t0, 1),
             **data}  # fmt: skip
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / ROWS).open("a") as fh:
            fh.write(json.dumps(r, default=str) + "\n")
        brief = {k: v for k, v in data.items() if not isinstance(v, dict | list) and k != "command"}
        print(f"[{part}] {step}: {'ok' if ok else 'FAILED'} {json.dumps(brief, default=str)[:400]}", flush=True)
        return r


class StepFailed(RuntimeError):
    """A step whose failure makes the rest of the part meaningless (its row is written first)."""


# ------------------------------------------------------------------------------ machine
def gpu_name() -> str | None:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip().splitlines()[0] if res.returncode == 0 and res.stdout.strip() else None


def gpu_used_mib() -> int | None:
    """nvidia-smi's memory.used of GPU 0 (None without nvidia-smi)."""
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        return int(res.stdout.split()[0])
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


def wait_gpu_back(baseline: int | None, wait_s: float = 30.0) -> int | None:
    """Poll until memory.used is within 512 MiB of ``baseline`` (or ``wait_s`` passes); the last reading."""
    used = gpu_used_mib()
    deadline = time.monotonic() + wait_s
    while used is not None and baseline is not None and used > baseline + 512 and time.monotonic() < deadline:
        time.sleep(0.5)
        used = gpu_used_mib()
    return used


def gpu_tier() -> str:
    """The config's `gpus` for this machine: its tier from nvidia-smi's name (the stand-in plans for an H200)."""
    name = (gpu_name() or "").upper()
    for tier in ("H200", "H100", "B200", "A100", "L40S", "A6000"):
        if tier in name:
            return f"{tier}:1"
    return "H200:1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --------------------------------------------------------------------------------- setup
_WORD_TEXT = ("river field stone village baker morning water bread weather market garden window letter winter "
         "summer harbour engine signal number answer question colour sky grass sun snow coal sea lemon rose "
         "cloud leaf milk road bridge tower forest mountain valley island light shadow music paper glass "
         "silver copper iron wooden quiet bright early late small large old new warm cold green blue red "
         "yellow white black grey the a of and to in is was for on that with as by at from it an are were "
         "be this which or you we they he she what where when how why who can will would should could")  # fmt: skip
WORDS = _WORD_TEXT.split()
THINGS = {"sky": "blue", "grass": "green", "sun": "yellow", "snow": "white", "coal": "black", "blood": "red",
          "sea": "blue", "lemon": "yellow", "rose": "red", "cloud": "grey", "leaf": "green", "milk": "white"}  # fmt: skip
# Llama-3's chat markup: vLLM's chat endpoint needs a template, and the fine-tune uses the tokenizer's own.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
    "{{ m['content'] }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|pad|>"]  # fmt: skip


def chat_rows(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """Questions with one right answer (the adapter can learn them), each with some prose around it."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        thing = rng.choice(sorted(THINGS))
        lead = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 24)))
        rows.append({"messages": [
            {"role": "user", "content": f"{lead.capitalize()}. What colour is the {thing}?"},
            {"role": "assistant", "content": f"The {thing} is {THINGS[thing]}."},
        ]})  # fmt: skip
    return rows


def build_tokenizer(out: Path, vocab: int) -> Any:
    """A byte-level BPE trained on the spot (no Hub), with Llama-3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(1)
    corpus = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) for _ in range(20000)]
    corpus += [m["content"] for r in chat_rows(512) for m in r["messages"]]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # fmt: skip
    tok.train_from_iterator(corpus, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                   pad_token="<|pad|>", model_max_length=131072)  # fmt: skip
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(str(out))
    return fast


def build_model(out: Path, sizes: Sizes) -> dict[str, Any]:
    """Random-init bf16 checkpoint of the shape (on the GPU when there is one) plus the tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from bench.serve_memory_gpu import SHAPES

    out.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer(out, sizes.vocab)
    _, model_type, dims = SHAPES[sizes.shape]
    dims = {**dims, "vocab_size": max(dims["vocab_size"], len(tok))}  # the tiny shape's 512 < the tokenizer's
    cfg = AutoConfig.for_model(model_type, **dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, dtype="bfloat16")  # fmt: skip
    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    with torch.device("cuda" if cuda else "cpu"):
        torch.set_default_dtype(torch.bfloat16)
        model = AutoModelForCausalLM.from_config(cfg)
        torch.set_default_dtype(torch.float32)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(str(out))
    del model
    if cuda:
        torch.cuda.empty_cache()
    return {"params": params, "tokenizer_vocab": len(tok), "cuda": cuda}


def part_setup(ctx: Ctx) -> None:
    t = time.monotonic()
    if (ctx.model / "config.json").exists() and ctx.args.reuse:
        info = {"reused": True}
    else:
        shutil.rmtree(ctx.model, ignore_errors=True)
        info = build_model(ctx.model, ctx.sizes)
    ctx.dataset.parent.mkdir(parents=True, exist_ok=True)
    ctx.dataset.write_text("".join(json.dumps(r) + "\n" for r in chat_rows(ctx.sizes.rows)))
    trees = {name: Path(p).is_dir() for name, p in trees_of(ctx).items()}
    ctx.row("setup", "build", True, shape=ctx.sizes.shape, model=str(ctx.model), dataset_rows=ctx.sizes.rows,
            seconds=round(time.monotonic() - t, 1), trees=trees, **info)  # fmt: skip


# --------------------------------------------------------------------------- host config
def trees_of(ctx: Ctx) -> dict[str, str]:
    a = ctx.args
    return {"vllm": a.vllm_site, "finetune": a.ft_site, "llmc": a.llmc_site}


def toml_table(name: str, values: dict[str, str]) -> str:
    return f"[{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items())


def host_config(ctx: Ctx) -> Path:
    """One local host: the machine's python, and per job kind the package tree that kind needs."""
    a = ctx.args
    base_env = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
    if a.standin:
        from tests.standin_vllm_server import install_standin

        python = sys.executable
        serve = install_standin(ctx.work / "vllm-standin")
        finetune: dict[str, str] = {}
    else:
        python = a.host_python
        bindir = str(Path(python).parent)  # `vllm`'s shebang is `env python3`: the machine's python first
        serve = {"PYTHONPATH": a.vllm_site, "PATH": f"{a.vllm_site}/bin:{bindir}:/usr/local/bin:/usr/bin:/bin",
                 "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0"}  # fmt: skip
        finetune = {"PYTHONPATH": a.ft_site}
    quantize = {"PYTHONPATH": os.pathsep.join(p for p in (a.llmc_site, "" if a.standin else a.ft_site) if p)}
    host = {"transport": "local", "launcher": "direct", "gpus": gpu_tier(), "workdir": str(ctx.work / "host"),
            "python": python}  # fmt: skip
    text = (
        'default_host = "gpu"\n\n'
        + toml_table("hosts.gpu", host)
        + toml_table("hosts.gpu.env", base_env)
        + toml_table("hosts.gpu.kind_env.serve", serve)
        + (toml_table("hosts.gpu.kind_env.finetune", finetune) if finetune else "")
        + toml_table("hosts.gpu.kind_env.quantize", quantize)
        + (toml_table("hosts.gpu.kind_env.evaluate", evaluate_env(a, a.lmeval_site)) if not a.standin else "")
    )
    path = ctx.work / "config.toml"
    path.write_text(text)
    return path


def serve_env(ctx: Ctx) -> dict[str, str]:
    """What a serve job of this host sees (the bench's own env, then the host's): for the bare `vllm serve`."""
    from runners.config import load_config

    host = load_config(ctx.work / "config.toml", environ={}).host("gpu")
    return {**os.environ, **host.env_for("serve")}


# ----------------------------------------------------------------------------------- MCP
class ToolFailed(RuntimeError):
    pass


@contextlib.asynccontextmanager
async def session(ctx: Ctx) -> AsyncIterator[Any]:
    """``llm-ops-mcp serve`` over stdio with this run's config and state dir, and a client on it."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    cfg = host_config(ctx)
    env = {**os.environ, "LLM_OPS_MCP_STATE_DIR": str(ctx.work / "state"), "LLM_OPS_MCP_CONFIG": str(cfg),
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    params = StdioServerParameters(command=sys.executable, args=["-m", "server.cli", "serve"], env=env, cwd=ROOT)
    async with Client(params, mode="auto") as c:
        yield c


async def call(c: Any, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    r = await c.call_tool(tool, args)
    if r.is_error:
        raise ToolFailed(f"{tool}: {r.content[0].text if r.content else 'error'}")
    return dict(r.structured_content or {})


async def wait_job(c: Any, job_id: str, until: str, max_s: float) -> tuple[dict[str, Any], bool]:
    """wait_for_job in calls of at most 45 s (what an agent whose client cancels at 60 s does) until reached."""
    deadline = time.monotonic() + max_s
    while True:
        left = deadline - time.monotonic()
        out = await call(c, "wait_for_job", {"job_id": job_id, "until": until, "timeout_s": max(1.0, min(45.0, left))})
        if out["reached"] or out["job"]["terminal"]:
            return out["job"], bool(out["reached"])
        if time.monotonic() >= deadline:  # give up, and leave nothing holding the GPU for the next step
            with contextlib.suppress(ToolFailed):
                await call(c, "cancel_job", {"job_id": job_id})
            return out["job"], False


def save_log(ctx: Ctx, job_dir: str, name: str, tail_bytes: int = 400_000) -> None:
    """The job's output.log (its end) and metrics into OUT/logs/, for reading a failure after the call."""
    d = ctx.out / "logs"
    d.mkdir(parents=True, exist_ok=True)
    for src, dst in (("output.log", f"{name}.log"), ("metrics.jsonl", f"{name}.metrics.jsonl")):
        p = Path(job_dir) / src
        if p.exists():
            data = p.read_bytes()
            (d / dst).write_bytes(data[-tail_bytes:])


def metrics_events(job_dir: str) -> dict[str, dict[str, Any]]:
    """The last record of each event in the job's metrics.jsonl."""
    out: dict[str, dict[str, Any]] = {}
    p = Path(job_dir) / "metrics.jsonl"
    for line in p.read_text().splitlines() if p.exists() else []:
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            if isinstance(doc, dict) and "event" in doc:
                out[str(doc["event"])] = doc
    return out


class LogWatch:
    """Tails a growing log file in a thread and notes the wall time a line first matches ``READY_LINE``."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen_at = path, None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        buf, pos = "", 0
        while not self._stop.is_set() and self.seen_at is None:
            try:
                with self.path.open("rb") as fh:
                    fh.seek(pos)
                    data = fh.read()
                    pos += len(data)
            except FileNotFoundError:
                data = b""
            if data:
                buf = (buf + data.decode("utf-8", "replace"))[-4096:]
                if READY_LINE.search(buf):
                    self.seen_at = time.time()
            time.sleep(0.02)

    def close(self) -> float | None:
        self._stop.set()
        self._t.join(2)
        return self.seen_at


async def start_ready(ctx: Ctx, c: Any, part: str, step: str, request: dict[str, Any]) -> dict[str, Any]:
    """start_vllm_server, then wait_for_job(until='ready'); times from the call, with the job's own events."""
    t_call = time.time()
    out = await call(c, "start_vllm_server", request)
    t_ret = time.time()
    watch = LogWatch(Path(out["job_dir"]) / "output.log")
    view, reached = await wait_job(c, out["job_id"], "ready", ctx.sizes.ready_timeout_s)
    t_ready = time.time()
    app_at = watch.close()
    ev = metrics_events(out["job_dir"])
    starting, ready = ev.get("starting", {}), ev.get("ready", {})
    timing = {
        "tool_call_s": round(t_ret - t_call, 2),
        "to_ready_s": round(t_ready - t_call, 2),
        "call_to_payload_start_s": round(starting["time"] - t_call, 2) if "time" in starting else None,
        "payload_start_to_app_started_s": round(app_at - starting["time"], 2) if app_at and starting else None,
        "app_started_to_ready_mark_s": round(ready["time"] - app_at, 2) if app_at and "time" in ready else None,
        "ready_mark_to_wait_return_s": round(t_ready - ready["time"], 2) if "time" in ready else None,
        "payload_time_to_ready_s": ready.get("time_to_ready_s"),
    }
    plan = out.get("plan") or {}
    r = ctx.row(part, step, reached, job_id=out["job_id"], state=view["state"], served=out.get("served_models"),
                quantization=plan.get("quantization"), max_model_len=plan.get("max_model_len"),
                plan_reasons=plan.get("reasons"), vllm=out.get("vllm_version"), command=out.get("command_line"),
                error=(view.get("error") or {}).get("message") if not reached else None, **timing)  # fmt: skip
    if not reached:
        save_log(ctx, out["job_dir"], f"{step}-{out['job_id']}")
        with contextlib.suppress(ToolFailed):
            await call(c, "stop_vllm_server", {"job_id": out["job_id"]})
        raise StepFailed(f"{step}: server not ready ({view['state']}): {view.get('summary')}")
    return {**out, **r}


async def stop(ctx: Ctx, c: Any, part: str, step: str, job_id: str, job_dir: str, baseline: int | None) -> None:
    out = await call(c, "stop_vllm_server", {"job_id": job_id})
    used = wait_gpu_back(baseline)
    gpu = out.get("gpu") or {}
    back = None if used is None or baseline is None else used <= baseline + 512
    ok = out["job"]["terminal"] and gpu.get("released") is not False and back is not False
    ctx.row(part, step, ok, job_id=job_id, state=out["job"]["state"], tool_gpu_checked=gpu.get("checked"),
            tool_gpu_released=gpu.get("released"), smi_used_before_mib=baseline, smi_used_after_mib=used,
            memory_back=back, note=gpu.get("note"))  # fmt: skip
    save_log(ctx, job_dir, f"{step}-{job_id}")


async def chat(c: Any, job_id: str, model: str | None, question: str) -> dict[str, Any]:
    args: dict[str, Any] = {"server_job_id": job_id, "messages": [{"role": "user", "content": question}],
                            "max_tokens": 16, "temperature": 0.0}  # fmt: skip
    if model:
        args["model"] = model
    return await call(c, "query_model", args)


# ---------------------------------------------------------------------- finetune + serve
async def part_finetune_serve(ctx: Ctx) -> None:
    s, part = ctx.sizes, "finetune-serve"
    if not (ctx.model / "config.json").exists():
        raise StepFailed(f"no model in {ctx.model}: run --part setup first (in the call just before)")
    async with session(ctx) as c:
        est_ft = await call(c, "estimate_memory", {"model": str(ctx.model), "task": "lora", "seq_len": s.ft_seq,
                                                   "batch_size": 4, "gpu": gpu_tier().split(":")[0]})  # fmt: skip
        est_srv = await call(c, "estimate_memory", {"model": str(ctx.model), "task": "inference",
                                                    "batch_size": s.max_num_seqs, "gpu": gpu_tier().split(":")[0]})  # fmt: skip
        ctx.row(part, "estimate_memory", True, lora_total_gib=est_ft.get("total_gib"),
                serve_total_gib=est_srv.get("total_gib"), serve_kv_tokens=est_srv.get("max_kv_tokens"),
                serve_concurrency=est_srv.get("max_concurrency"))  # fmt: skip

        ft_args = {"model": str(ctx.model), "dataset": str(ctx.dataset), "dataset_format": "messages",
                   "method": "lora", "backend": "auto", "max_steps": s.ft_steps, "max_seq_length": s.ft_seq,
                   "learning_rate": 1e-3, "save_steps": 0, "save_merged": True, "output_name": "workflow-lora"}  # fmt: skip
        t = time.monotonic()
        ft = await call(c, "submit_finetune", ft_args)
        view, _ = await wait_job(c, ft["job_id"], "finished", max(60.0, ctx.left() - 300))
        manifest_p = Path(view["job_dir"]) / "outputs" / "manifest.json"
        man = json.loads(manifest_p.read_text()) if manifest_p.exists() else {}
        ok = view["state"] == "succeeded" and (ctx.args.standin or man.get("backend") == "unsloth")
        ctx.row(part, "finetune", ok, job_id=ft["job_id"], state=view["state"], backend=man.get("backend"),
                steps=man.get("steps"), final_loss=man.get("final_loss"), train_s=man.get("train_s"),
                wall_s=round(time.monotonic() - t, 1), merged="merged" in man.get("paths", {}),
                gpu_mem_peak=man.get("gpu_mem_peak_reserved_gib"), summary=ft.get("summary"),
                error=(view.get("error") or {}).get("message"))  # fmt: skip
        save_log(ctx, view["job_dir"], f"finetune-{ft['job_id']}")
        if view["state"] != "succeeded":
            raise StepFailed(f"fine-tune {view['state']}: {view.get('summary')}")
        ctx.save_state(finetune_job=ft["job_id"], adapter=man["paths"].get("adapter"),
                       merged=man["paths"].get("merged"))  # fmt: skip

        baseline = gpu_used_mib()
        request = {"model": str(ctx.model), "max_num_seqs": s.max_num_seqs,
                   "lora_adapters": [{"name": ADAPTER, "job_id": ft["job_id"]}]}  # fmt: skip
        srv = await start_ready(ctx, c, part, "serve+adapter ready", request)
        try:
            q = "What colour is the sky?"
            base = await chat(c, srv["job_id"], None, q)
            lora = await chat(c, srv["job_id"], ADAPTER, q)
            answered = bool(lora.get("completion_tokens")) and bool(base.get("completion_tokens"))
            # random-init weights answer nonsense; a trained adapter must at least change the greedy answer
            ok = answered and (ctx.args.standin or base["text"] != lora["text"])
            ctx.row(part, "query base and adapter", ok, base_text=base["text"], adapter_text=lora["text"],
                    adapter_differs=base["text"] != lora["text"], base_latency_s=base["latency_s"],
                    adapter_latency_s=lora["latency_s"], adapter_completion_tokens=lora.get("completion_tokens"))  # fmt: skip
            await benchmarks(ctx, c, part, srv)
        finally:
            await stop(ctx, c, part, "stop (adapter server)", srv["job_id"], srv["job_dir"], baseline)


def _bench_fields(r: dict[str, Any]) -> dict[str, Any]:
    keys = ("output_tokens_per_s", "requests_per_s", "mean_input_tokens", "total_output_tokens", "ttft_ms",
            "tpot_ms", "itl_ms", "duration_s", "length_mismatches", "errors", "wall_s", "error")  # fmt: skip
    return {k: r.get(k) for k in keys if k in r}


async def ours_once(c: Any, srv: dict[str, Any], b: dict[str, int]) -> dict[str, Any]:
    """benchmark_server through MCP."""
    return await call(c, "benchmark_server", {"server_job_id": srv["job_id"], **b})


async def theirs_once(
    ctx: Ctx, srv: dict[str, Any], b: dict[str, int], tag: str, seed: int = 0
) -> dict[str, Any] | None:
    """`vllm bench serve` on the same server (None with the stand-in, which has no such command)."""
    from bench.vllm_bench_serve import run_vllm_bench_serve

    key = parse_env_key(srv)
    kwargs = dict(base_url=srv["endpoint"], model=srv["served"][0], tokenizer=str(ctx.model), api_key=key,
                  env=serve_env(ctx), result_dir=ctx.out / "vllm-bench" / tag, seed=seed, **b)  # fmt: skip
    if ctx.args.standin:  # the stand-in has no `vllm bench serve`; check the call binds, run nothing
        import inspect

        inspect.signature(run_vllm_bench_serve).bind(**kwargs)
        return None
    return await asyncio.to_thread(run_vllm_bench_serve, **kwargs)


async def benchmarks(ctx: Ctx, c: Any, part: str, srv: dict[str, Any]) -> None:
    """benchmark_server, then `vllm bench serve` on the same server, lengths and concurrency; their ratio."""
    from bench.vllm_bench_serve import format_table, side_by_side

    b = ctx.sizes.bench
    ours = await ours_once(c, srv, b)
    ctx.row(part, "benchmark_server", ours.get("failed", 1) == 0, **b, **_bench_fields(ours))
    theirs = await theirs_once(ctx, srv, b, "finetune-serve")
    if theirs is None:
        ctx.row(part, "vllm bench serve", True, skipped="the stand-in has no `vllm bench serve` (call checked)")
        return
    pairs = side_by_side(ours, theirs)
    print(format_table(pairs), flush=True)
    ratio = next((r["ratio"] for r in pairs if r["metric"] == "output_tokens_per_s"), None)
    ctx.row(part, "vllm bench serve", bool(theirs.get("ok")), **b, **_bench_fields(theirs),
            output_tail=None if theirs.get("ok") else theirs.get("output_tail"),
            ours_over_vllm_output_tok_s=ratio, side_by_side=pairs,
            within_5_percent=None if ratio is None else abs(ratio - 1) <= 0.05)  # fmt: skip


# ------------------------------------------------------------------ benchmark agreement
async def agreement_run(
    ctx: Ctx, c: Any, srv: dict[str, Any], b: dict[str, int], who: str, seed: int
) -> tuple[dict[str, Any], bool]:
    """One run of one variant, with the server's own /metrics view around it (GPU only)."""
    from bench.bench_agreement import MetricsSampler, vllm_func_once

    sampler = MetricsSampler(srv["endpoint"]) if not ctx.args.standin else contextlib.nullcontext()
    async with sampler as ms:
        if who == "ours":
            r = _bench_fields(await ours_once(c, srv, {**b, "seed": seed}))
            ok = not r.get("errors") and r.get("length_mismatches") == 0
        elif who == "theirs":
            r = _bench_fields(await theirs_once(ctx, srv, b, f"seed-{seed}", seed=seed) or {})
            ok = r.get("error") is None or ctx.args.standin
        else:
            key = parse_env_key(srv)
            r = await vllm_func_once(srv["endpoint"], key, srv["served"][0], b, who.endswith("text"), seed)
            ok = r["completed"] == b["num_prompts"]
    if ms is not None:
        r.update(ms.summary())
    return r, ok


def parse_env_key(srv: dict[str, Any]) -> str | None:
    from runners.jobdir import parse_env

    return parse_env((Path(srv["job_dir"]) / "env").read_text()).get("VLLM_API_KEY")


async def part_bench_agreement(ctx: Ctx) -> None:
    """benchmark_server vs `vllm bench serve` on one server, alternated in both orders, several rounds.

    Why a part of its own: one pair of 5-second runs (the finetune-serve part's) cannot tell a
    5 % difference from run-to-run noise or from which of the two ran first on a fresh server.
    Here each round runs both on the same server with the same workload, the order flips every
    round, and the verdict is the ratio of the medians (the per-round ratios are kept too).
    """
    part, s = "bench-agreement", ctx.sizes
    if not (ctx.model / "config.json").exists():
        raise StepFailed(f"no model in {ctx.model}: run --part setup first (in the call just before)")
    b = {**s.bench, "num_prompts": s.agreement_prompts}
    async with session(ctx) as c:
        baseline = gpu_used_mib()
        srv = await start_ready(ctx, c, part, "serve ready", {"model": str(ctx.model), "max_num_seqs": s.max_num_seqs})
        try:
            warm = await ours_once(c, srv, {**b, "num_prompts": 2 * b["concurrency"]})  # first kernels, graphs
            ctx.row(part, "warm-up (not counted)", warm.get("failed", 1) == 0, **_bench_fields(warm))
            ours_v: list[float] = []
            theirs_v: list[float] = []
            variants = ["ours", "theirs"] + ([] if ctx.args.standin else ["vllm-func ids", "vllm-func text"])
            for i in range(ctx.args.rounds):
                if ctx.left() < 120:
                    ctx.row(part, f"round {i}", True, skipped=f"{ctx.left():.0f} s left")
                    break
                order = variants[i % len(variants) :] + variants[: i % len(variants)]
                if i % 2 and len(variants) > 2:  # rotated and reversed: each variant before and after each other
                    order.reverse()
                got: dict[str, float | None] = {}
                for who in order:
                    r, ok = await agreement_run(ctx, c, srv, b, who, seed=1000 + i)
                    got[who] = r.get("output_tokens_per_s")
                    ctx.row(part, f"round {i} {who}", ok, round=i, order=order, **b, **r)
                if got.get("ours") and got.get("theirs"):
                    ours_v.append(float(got["ours"]))
                    theirs_v.append(float(got["theirs"]))
            if ours_v:
                med_o, med_t = statistics.median(ours_v), statistics.median(theirs_v)
                ratio = round(med_o / med_t, 3)
                ctx.row(part, "agreement", abs(ratio - 1) <= 0.05, rounds=len(ours_v), **b,
                        ours_output_tok_s=ours_v, vllm_output_tok_s=theirs_v,
                        per_round_ratio=[round(o / t, 3) for o, t in zip(ours_v, theirs_v, strict=True)],
                        ours_over_vllm_output_tok_s=ratio, within_5_percent=abs(ratio - 1) <= 0.05)  # fmt: skip
            elif ctx.args.standin:
                ctx.row(part, "agreement", True, skipped="the stand-in has no `vllm bench serve`")
        finally:
            await stop(ctx, c, part, "stop", srv["job_id"], srv["job_dir"], baseline)


# ------------------------------------------------------------------------------ quantize
async def part_quantize(ctx: Ctx) -> None:
    part, st = "quantize", ctx.state()
    merged = st.get("merged")
    if not merged or not Path(merged).is_dir():
        raise StepFailed("no merged model recorded: run --part finetune-serve first (in the call just before)")
    async with session(ctx) as c:
        t = time.monotonic()
        q = await call(c, "quantize_model", {"model": merged, "method": "fp8", "output_name": "merged-fp8",
                                             "calibration_dataset": str(ctx.dataset),
                                             "num_calibration_samples": ctx.sizes.calib_samples})  # fmt: skip
        view, _ = await wait_job(c, q["job_id"], "finished", max(60.0, ctx.left() - 200))
        mp = Path(q["manifest_path"])
        man = json.loads(mp.read_text()) if mp.exists() else {}
        ok = view["state"] == "succeeded"
        ctx.row(part, "quantize_model fp8", ok, job_id=q["job_id"], state=view["state"],
                wall_s=round(time.monotonic() - t, 1), format=man.get("format"),
                size_before_bytes=man.get("size_before_bytes"), size_after_bytes=man.get("size_after_bytes"),
                perplexity_before=man.get("perplexity_before"), perplexity_after=man.get("perplexity_after"),
                versions=man.get("versions"), error=(view.get("error") or {}).get("message"))  # fmt: skip
        save_log(ctx, view["job_dir"], f"quantize-{q['job_id']}")
        if not ok:
            raise StepFailed(f"quantize {view['state']}: {view.get('summary')}")
        baseline = gpu_used_mib()
        srv = await start_ready(ctx, c, part, "serve fp8 ready", {"model": q["output_dir"],
                                                                  "max_num_seqs": ctx.sizes.max_num_seqs})  # fmt: skip
        try:
            a = await chat(c, srv["job_id"], None, "What colour is the sky?")
            ctx.row(part, "query fp8", bool(a.get("completion_tokens")), text=a["text"],
                    completion_tokens=a.get("completion_tokens"), latency_s=a["latency_s"])  # fmt: skip
        finally:
            await stop(ctx, c, part, "stop (fp8 server)", srv["job_id"], srv["job_dir"], baseline)


# ---------------------------------------------------------------------------- ready time
def bare_serve(ctx: Ctx, job: dict[str, Any], n: int, baseline: int | None) -> dict[str, Any]:
    """`vllm serve` with the job's argv (a new port), the host's serve env and an API key, as the payload
    runs it; ready = the payload's own probe (health, models listed, one-token completion) passes, polled
    every 50 ms; then SIGTERM to its process group."""
    from runners.payloads.serve import probe

    cfg = job["payload_config"]
    argv = [str(a) for a in cfg["argv"]]
    port = free_port()
    argv[argv.index("--port") + 1] = str(port)
    env = {**serve_env(ctx), "VLLM_API_KEY": secrets.token_urlsafe(32)}
    prog = shutil.which(argv[0], path=env.get("PATH")) or argv[0]
    log = ctx.out / "logs" / f"bare-{n}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    run_dir = ctx.work / f"bare-{n}"
    run_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    proc = subprocess.Popen([prog, *argv[1:]], stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env,
                            cwd=run_dir, start_new_session=True, stdin=subprocess.DEVNULL)  # fmt: skip
    watch = LogWatch(log)
    base = f"http://127.0.0.1:{port}"
    names = [str(x) for x in cfg.get("served_names") or []]
    ready_at, why = None, ""
    try:
        while time.time() - t0 < ctx.sizes.ready_timeout_s and proc.poll() is None:
            ok, why = probe(base, env["VLLM_API_KEY"], names, str(cfg.get("probe_model") or names[0]))
            if ok:
                ready_at = time.time()
                break
            time.sleep(0.05)
    finally:
        app_at = watch.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    used = wait_gpu_back(baseline)
    return {"how": "bare", "ok": ready_at is not None, "to_ready_s": round(ready_at - t0, 2) if ready_at else None,
            "to_app_started_s": round(app_at - t0, 2) if app_at else None,
            "app_started_to_ready_s": round(ready_at - app_at, 2) if ready_at and app_at else None,
            "waiting_for": None if ready_at else why, "exit_code": proc.returncode, "smi_used_after_mib": used}  # fmt: skip


async def part_ready_time(ctx: Ctx) -> None:
    """Alternating runs, tool first (its job gives the argv); the first run warms caches and is left out."""
    part, st = "ready-time", ctx.state()
    adapters = [{"name": ADAPTER, "job_id": st["finetune_job"]}] if st.get("finetune_job") else []
    request = {"model": str(ctx.model), "max_num_seqs": ctx.sizes.max_num_seqs, "lora_adapters": adapters}
    runs: list[dict[str, Any]] = []
    job: dict[str, Any] | None = None
    async with session(ctx) as c:
        for n in range(ctx.args.ready_runs):
            how = "tool" if n % 2 == 0 else "bare"
            last = max((r.get("to_ready_s") or 0 for r in runs), default=ctx.sizes.ready_timeout_s / 3)
            if ctx.left() < 1.3 * last + 40:
                ctx.row(part, f"run {n} ({how})", True, skipped=f"{ctx.left():.0f} s left")
                break
            baseline = gpu_used_mib()
            if how == "tool":
                srv = await start_ready(ctx, c, part, f"run {n} (start_vllm_server)", request)
                job = json.loads((Path(srv["job_dir"]) / "job.json").read_text())
                runs.append({"how": "tool", "n": n, **{k: srv.get(k) for k in ("to_ready_s", "payload_time_to_ready_s",
                             "call_to_payload_start_s", "payload_start_to_app_started_s",
                             "app_started_to_ready_mark_s", "ready_mark_to_wait_return_s")}})  # fmt: skip
                await stop(ctx, c, part, f"run {n} stop", srv["job_id"], srv["job_dir"], baseline)
            else:
                assert job is not None
                r = await asyncio.to_thread(bare_serve, ctx, job, n, baseline)
                runs.append({"n": n, **r})
                ctx.row(part, f"run {n} (bare vllm serve)", r.pop("ok"), argv=job["payload_config"]["argv"], **r)
                r["ok"] = r.get("to_ready_s") is not None
                if not r["ok"]:
                    raise StepFailed(
                        f"bare vllm serve not ready (waiting for {r.get('waiting_for')}); see logs/bare-{n}.log"
                    )
    warm = runs[1:]
    tool = [r["to_ready_s"] for r in warm if r["how"] == "tool" and r.get("to_ready_s")]
    bare = [r["to_ready_s"] for r in warm if r["how"] == "bare" and r.get("to_ready_s")]
    if tool and bare:
        t, b = sum(tool) / len(tool), sum(bare) / len(bare)
        ctx.row(part, "overhead", t - b <= 2.0, tool_to_ready_s=round(t, 2), bare_to_ready_s=round(b, 2),
                overhead_s=round(t - b, 2), target_s=2.0, tool_runs=tool, bare_runs=bare, first_run=runs[0])  # fmt: skip
    else:
        ctx.row(part, "overhead", False, note="not enough warm runs of both kinds", runs=runs)


# --------------------------------------------------------------------------------- table
def table(rows: list[dict[str, Any]]) -> str:
    """A compact markdown table of the rows: one line per step, the figures that matter for it."""
    keys = ("to_ready_s", "overhead_s", "tool_to_ready_s", "bare_to_ready_s", "output_tokens_per_s",
            "ours_over_vllm_output_tok_s", "server_gen_tokens_per_s", "server_mean_running", "tokens_per_chunk",
            "requests_per_s", "train_s", "final_loss", "backend", "quantization",
            "memory_back", "smi_used_after_mib", "perplexity_before", "perplexity_after", "size_after_bytes",
            "adapter_differs", "skipped", "error")  # fmt: skip
    lines = ["| part | step | ok | figures |", "|---|---|---|---|"]
    for r in rows:
        figs = ", ".join(f"{k} {r[k]}" for k in keys if r.get(k) is not None)
        lines.append(f"| {r.get('part')} | {r.get('step')} | {'yes' if r.get('ok') else 'NO'} | {figs} |")
    return "\n".join(lines)


def first_leaf(e: BaseException) -> BaseException:
    """The first exception inside (nested) exception groups."""
    while isinstance(e, BaseExceptionGroup) and e.exceptions:
        e = e.exceptions[0]
    return e


async def part_evaluate(ctx: Ctx) -> None:
    """evaluate_model of base and adapter, compare_runs (bench/workflow_gpu_evaluate.py; after finetune-serve)."""
    from bench.workflow_gpu_evaluate import part_evaluate as run

    await run(ctx)


def evaluate_env(args: argparse.Namespace, site: str) -> dict[str, str]:
    from bench.workflow_gpu_evaluate import evaluate_env as env

    return env(args, site)


PARTS = {"finetune-serve": part_finetune_serve, "quantize": part_quantize, "ready-time": part_ready_time,
         "bench-agreement": part_bench_agreement, "evaluate": part_evaluate}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["setup", *PARTS, "all"], default=None)
    ap.add_argument("--standin", action="store_true", help="CPU: tiny model, stand-in vLLM, TRL")
    ap.add_argument("--work", default="/tmp/wf")
    ap.add_argument("--out", default=os.environ.get("OUT", "/tmp/wf/out"))
    ap.add_argument("--budget-s", type=float, default=None,
                    help="one part's time (default 540: the GPU machine allows 600 s a call; stand-in 1800)")  # fmt: skip
    ap.add_argument("--host-python", default=GPU_PYTHON, help="the host's interpreter for jobs (GPU mode)")
    ap.add_argument("--vllm-site", default="/tmp/vsite", help="vLLM's tree (.gpu/vllm/INSTALL.sh)")
    ap.add_argument("--ft-site", default="/tmp/site", help="the fine-tune tree (.gpu/site.tgz)")
    ap.add_argument("--lmeval-site", default="/tmp/lmeval", help="lm-eval's tree (bench/gpu_lmeval_bundle.sh)")
    ap.add_argument("--llmc-site", default="/tmp/llmc", help="llm-compressor's tree (bench/gpu_llmc_bundle.sh)")
    ap.add_argument("--ready-runs", type=int, default=5, help="alternating tool/bare starts (the first warms up)")
    ap.add_argument("--rounds", type=int, default=4, help="bench-agreement: rounds (the order flips each round)")
    ap.add_argument("--reuse", action="store_true", help="setup: keep an existing model")
    ap.add_argument("--table", metavar="JSONL", help="print the table of recorded rows and exit")
    args = ap.parse_args(argv)
    if args.table:
        print(table([json.loads(x) for x in Path(args.table).read_text().splitlines() if x.strip()]))
        return 0
    if args.part is None:
        ap.error("--part is required (or --table)")
    if args.budget_s is None:
        args.budget_s = 1800.0 if args.standin else 540.0
    ctx = Ctx(args=args, sizes=STANDIN if args.standin else GPU, work=Path(args.work), out=Path(args.out))
    ctx.work.mkdir(parents=True, exist_ok=True)
    parts = ["setup", *PARTS] if args.part == "all" else [args.part]
    first = len((ctx.out / ROWS).read_text().splitlines()) if (ctx.out / ROWS).exists() else 0
    rc = 0
    for name in parts:
        try:
            if name == "setup":
                part_setup(ctx)
            else:
                asyncio.run(PARTS[name](ctx))
        except BaseException as e:  # the MCP client's task groups wrap what a step raised
            leaf = first_leaf(e)
            if not isinstance(leaf, StepFailed | ToolFailed):
                raise
            ctx.row(name, "abort", False, error=str(leaf)[:1000])
            rc = 1
            break
    rows = [json.loads(x) for x in (ctx.out / ROWS).read_text().splitlines()[first:] if x.strip()]
    print(table(rows), flush=True)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
