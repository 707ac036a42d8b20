"""GPU benchmark: what `vllm serve` (default flags) budgets on one GPU, against our serving estimate.

Why: start_vllm_server plans from tools/memory.py's vLLM model (weights + profile-run
activation peak + non-torch memory + CUDA graphs, the rest of gpu_memory_utilization x
total is KV cache; vllm/v1/worker/gpu_worker.py ``determine_available_memory``). The
estimate must stay within 3 % of vLLM's own "Available KV cache memory" (issue 16), so
this measures it: for each random-init checkpoint of a real shape it starts a bare
``vllm serve DIR`` (default flags, ``--enable-lora`` for items that ask), waits for
"Application startup complete", reads vLLM's log lines

  Model loading took X GiB memory ...                       (weights)
  Free memory on device (F/T GiB) on startup. Desired ... (U, R GiB). Actual usage is
    W GiB for weight, A GiB for peak activation, N GiB for non-torch memory, and
    G GiB for CUDAGraph memory ...                           (gpu_worker.compile_or_warm_up_model)
  Estimated CUDA graph memory: E GiB total                   (gpu_model_runner.profile_cudagraph_memory)
  Available KV cache memory: K GiB                           (gpu_worker.determine_available_memory)
  GPU KV cache size: N tokens / Maximum concurrency for L tokens per request: X x
                                                             (kv_cache_utils.get_kv_cache_configs)

and nvidia-smi's memory.used once ready, then stops the server (SIGTERM to its process
group, SIGKILL after 20 s) before the next. Rows go to OUT/serve_memory_gpu.jsonl as each
item ends (a run cut off by its time limit keeps what finished), vLLM's logs to OUT/logs/.

  python bench/serve_memory_gpu.py measure --work /tmp/smem --out $OUT --budget-s 500 \\
      --items qwen2.5-7b,llama-3.1-8b,llama-3.2-1b+lora
  python bench/serve_memory_gpu.py compare bench/data/serve_memory_gpu.jsonl    # CPU: estimate vs measured

The comparison is the estimator of the current tree (tools/memory.py), so rerunning
``compare`` after a change of the model shows its effect on the recorded measurements.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

# Real architectures' config.json values (meta-llama/Llama-3.2-1B, Qwen/Qwen2.5-7B, meta-llama/Llama-3.1-8B).
_LLAMA3_ROPE = {"rope_type": "llama3", "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8192}  # fmt: skip
SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama-3.2-1b": ("meta-llama/Llama-3.2-1B", "llama", dict(
        hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
        num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_scaling={**_LLAMA3_ROPE, "factor": 32.0})),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", "qwen2", dict(
        hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
        num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False, rope_theta=1000000.0,
        max_position_embeddings=32768, rms_norm_eps=1e-6, use_sliding_window=False, max_window_layers=28)),
    "llama-3.1-8b": ("meta-llama/Llama-3.1-8B", "llama", dict(
        hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, head_dim=128, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_scaling={**_LLAMA3_ROPE, "factor": 8.0})),
    "tiny": ("tiny", "llama", dict(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=512, tie_word_embeddings=False, max_position_embeddings=512)),
}  # fmt: skip

_NUM = r"([0-9][0-9,]*(?:\.[0-9]+)?)"
# vLLM 0.26.0's log lines (format strings in the files named in the module docstring).
PATTERNS: dict[str, re.Pattern[str]] = {
    "weights_load_gib": re.compile(rf"Model loading took {_NUM} GiB"),
    "startup_line": re.compile(
        rf"Free memory on device \({_NUM}/{_NUM} GiB\) on startup\. Desired GPU memory utilization is "
        rf"\({_NUM}, {_NUM} GiB\)\. Actual usage is {_NUM} GiB for weight, {_NUM} GiB for peak activation, "
        rf"{_NUM} GiB for non-torch memory, and {_NUM} GiB for CUDAGraph memory"
    ),
    "cudagraph_estimate_gib": re.compile(rf"Estimated CUDA graph memory: {_NUM} GiB total"),
    "cudagraph_pool": re.compile(rf"CUDA graph pool memory: {_NUM} GiB \(actual\), {_NUM} GiB \(estimated\)"),
    "graph_capture": re.compile(rf"Graph capturing finished in {_NUM} secs, took {_NUM} GiB"),
    "available_kv_gib": re.compile(rf"Available KV cache memory: {_NUM} GiB"),
    "kv_tokens": re.compile(rf"GPU KV cache size: {_NUM} tokens"),
    "concurrency": re.compile(rf"Maximum concurrency for {_NUM} tokens per request: {_NUM}x"),
    "max_num_batched_tokens": re.compile(rf"max_num_batched_tokens={_NUM}"),
    "ready": re.compile(r"Application startup complete"),
}


def _f(s: str) -> float:
    return float(s.replace(",", ""))


def parse_log(text: str) -> dict[str, Any]:
    """The memory figures of one `vllm serve` log (a pure function; tested on CPU)."""
    out: dict[str, Any] = {}
    for key, pat in PATTERNS.items():
        m = pat.search(text)
        if not m:
            continue
        g = [_f(x) for x in m.groups()]
        if key == "startup_line":
            out.update(
                free_at_start_gib=g[0],
                total_gib=g[1],
                gpu_memory_utilization=g[2],
                requested_gib=g[3],
                weights_gib=g[4],
                activation_peak_gib=g[5],
                non_torch_gib=g[6],
                cudagraph_actual_gib=g[7],
            )
        elif key == "cudagraph_pool":
            out["cudagraph_pool_actual_gib"], out["cudagraph_pool_estimated_gib"] = g
        elif key == "graph_capture":
            out["graph_capture_s"], out["graph_capture_gib"] = g
        elif key == "concurrency":
            out["max_model_len"], out["max_concurrency"] = int(g[0]), g[1]
        elif key == "kv_tokens":
            out["kv_tokens"] = int(g[0])
        elif key == "max_num_batched_tokens":
            out[key] = int(g[0])
        elif key == "ready":
            out["ready"] = True
        else:
            out[key] = g[0]
    return out


# ------------------------------------------------------------------------------- GPU side
def build_checkpoint(work: Path, shape: str) -> Path:
    """A random-init bf16 checkpoint of ``shape`` (built on the GPU when there is one) plus a small BPE tokenizer."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tests.helpers.tiny_model import build_tiny_tokenizer

    out = work / shape
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out)
    _, model_type, dims = SHAPES[shape]
    cfg = AutoConfig.for_model(model_type, **dims, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id, dtype="bfloat16")  # fmt: skip
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        torch.set_default_dtype(torch.bfloat16)
        model = AutoModelForCausalLM.from_config(cfg)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(str(out))
    del model
    if cuda:
        torch.cuda.empty_cache()
    return out


def _smi() -> dict[str, int]:
    try:
        res = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
        )
        used, total = (int(x) for x in res.stdout.splitlines()[0].split(","))
        return {"smi_used_mib": used, "smi_total_mib": total}
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return {}


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 20.0) -> None:
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    except ProcessLookupError:
        pass


def serve_once(model_dir: Path, item: str, lora: bool, log: Path, timeout_s: float, port: int) -> dict[str, Any]:
    """Start a default-flags `vllm serve`, wait for ready (or exit, or ``timeout_s``), read its log, stop it."""
    argv = ["vllm", "serve", str(model_dir), "--port", str(port)] + (["--enable-lora"] if lora else [])
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    status, ready_s, smi = "timeout", None, {}
    try:
        while time.monotonic() - t0 < timeout_s:
            time.sleep(0.5)
            if PATTERNS["ready"].search(log.read_text(errors="replace")):
                ready_s = round(time.monotonic() - t0, 1)
                status = "ready"
                time.sleep(1.0)
                smi = _smi()
                break
            if proc.poll() is not None:
                status = f"exited {proc.returncode}"
                break
    finally:
        _stop(proc)
    row = {"item": item, "argv": [*argv[:2], "<dir>", *argv[3:]], "status": status, "startup_s": ready_s, **smi}
    row.update(parse_log(log.read_text(errors="replace")))
    for _ in range(40):  # wait for the GPU memory to come back before the next server
        if _smi().get("smi_used_mib", 0) < 1024:
            break
        time.sleep(0.5)
    return row


def environment() -> dict[str, Any]:
    env: dict[str, Any] = {"python": sys.version.split()[0]}
    for mod in ("torch", "transformers", "vllm"):
        try:
            from importlib.metadata import version

            env[mod] = version(mod)
        except Exception:
            env[mod] = None
    try:
        env["gpu"] = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True, timeout=20
        ).stdout.strip()
    except OSError:
        env["gpu"] = None
    return env


def measure(args: argparse.Namespace) -> int:
    start = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work)
    items = [i.strip() for i in args.items.split(",") if i.strip()]
    env = environment()
    print(json.dumps({"environment": env}), flush=True)
    dirs = {}
    for n, item in enumerate(items):
        left = args.budget_s - (time.monotonic() - start)
        if left < 90:
            print(f"skipped {item}: {left:.0f} s left", flush=True)
            continue
        shape = item.split("+")[0]
        t = time.monotonic()  # built while the GPU is free (the previous server is stopped)
        dirs[item] = build_checkpoint(work, shape)
        print(f"built {shape} in {time.monotonic() - t:.1f} s", flush=True)
        left = args.budget_s - (time.monotonic() - start)
        limit = min(args.item_timeout_s, left - 25)
        row = serve_once(dirs[item], item, "+lora" in item, out / "logs" / f"{item}.log", limit, 8100 + n)
        row.update(model=SHAPES[shape][0], shape=shape, lora="+lora" in item, environment=env,
                   machine=args.machine, date=time.strftime("%Y-%m-%d"))  # fmt: skip
        with (out / "serve_memory_gpu.jsonl").open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)
        if not args.keep:
            import shutil

            shutil.rmtree(dirs[item], ignore_errors=True)
    rows = [json.loads(x) for x in (out / "serve_memory_gpu.jsonl").read_text().splitlines() if x.strip()]
    try:
        print(table(rows))
    except Exception as e:
        print(f"no table ({type(e).__name__}: {e}); run `compare` on the rows", flush=True)
    return 0


# ------------------------------------------------------------------------------ estimate
def estimate(row: dict[str, Any]) -> dict[str, float]:
    """Our serving estimate (tools/memory.py) for a measured row: same model, GPU, context and LoRA."""
    from tools.memory import estimate_memory
    from tools.memory_settings import MemoryInput

    mi = MemoryInput(
        model=row["model"],
        task="inference",
        backend="vllm",
        seq_len=int(row.get("max_model_len") or 4096),
        gpu="H200",
        gpu_memory_utilization=float(row.get("gpu_memory_utilization") or 0.9),
        serve_lora_rank=16 if row.get("lora") else None,
    )
    res = estimate_memory(mi, with_plan=False)
    v = res.vllm
    assert v is not None
    return {
        "requested_gib": v.requested_gib,
        "weights_gib": v.weights_gib,
        "activation_peak_gib": v.activation_peak_gib,
        "non_torch_gib": v.non_torch_gib,
        "cudagraph_gib": v.cuda_graphs_captured_gib,
        "cudagraph_in_budget_gib": v.cuda_graphs_gib,
        "available_kv_gib": v.kv_cache_gib,
        "kv_tokens": float(v.kv_tokens),
        "max_concurrency": v.max_concurrency,
    }


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: estimate / vLLM for each part, and the KV error in %."""
    head = (
        "| model | LoRA | budget GiB | weights GiB | activation peak GiB | non-torch GiB | CUDA graphs GiB "
        "| KV cache GiB (est / vLLM, error) | KV tokens (est / vLLM) | concurrency at max_model_len | ready s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|"
    )
    lines = [head]
    for r in rows:
        if "available_kv_gib" not in r:
            lines.append(f"| {r.get('model')} | {'yes' if r.get('lora') else 'no'} | {r.get('status')} ||||||||")
            continue
        e = estimate(r)
        err = 100 * (e["available_kv_gib"] - r["available_kv_gib"]) / r["available_kv_gib"]
        cg = r.get("cudagraph_actual_gib", r.get("graph_capture_gib"))
        lines.append(
            f"| {r['model']} | {'yes' if r.get('lora') else 'no'} "
            f"| {e['requested_gib']:.2f} / {r.get('requested_gib')} "
            f"| {e['weights_gib']:.2f} / {r.get('weights_gib', r.get('weights_load_gib'))} "
            f"| {e['activation_peak_gib']:.2f} / {r.get('activation_peak_gib')} "
            f"| {e['non_torch_gib']:.2f} / {r.get('non_torch_gib')} "
            f"| {e['cudagraph_gib']:.2f} / {cg} "
            f"| {e['available_kv_gib']:.2f} / {r['available_kv_gib']} ({err:+.1f} %) "
            f"| {int(e['kv_tokens']):,} / {r.get('kv_tokens', 0):,} "
            f"| {e['max_concurrency']:.2f} / {r.get('max_concurrency')} ({r.get('max_model_len'):,}) "
            f"| {r.get('startup_s')} |"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure", help="on the GPU machine, with vLLM on PATH")
    m.add_argument("--work", default="/tmp/smem")
    m.add_argument("--out", default=os.environ.get("OUT", "/tmp/smem/out"))
    m.add_argument("--items", default="qwen2.5-7b,llama-3.1-8b,llama-3.2-1b+lora")
    m.add_argument("--budget-s", type=float, default=500.0, help="stop starting servers after this long")
    m.add_argument("--item-timeout-s", type=float, default=230.0, help="give up on one server after this long")
    m.add_argument("--machine", default="")
    m.add_argument("--keep", action="store_true", help="keep the checkpoints")
    c = sub.add_parser("compare", help="estimate vs measured for recorded rows")
    c.add_argument("jsonl", nargs="?", default=str(ROOT / "bench" / "data" / "serve_memory_gpu.jsonl"))
    args = ap.parse_args()
    if args.cmd == "measure":
        return measure(args)
    rows = [json.loads(x) for x in Path(args.jsonl).read_text().splitlines() if x.strip()]
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
