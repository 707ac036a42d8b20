"""GPU benchmark: our fine-tune payload against direct Unsloth and against HF + PEFT, same settings.

Why: a fine-tune submitted through our tools must run at Unsloth's speed (issue 7: at least
0.95x of direct Unsloth), and the memory estimator needs measured peaks to calibrate against.
Each setting runs three times, each in its own process so peaks don't mix:

  payload   runners/payloads/finetune.py with backend=unsloth (what submit_finetune runs)
  unsloth   a minimal direct Unsloth script (FastLanguageModel + TRL SFTTrainer, the
            notebook recipe) with the same model, data, seq, batch, LoRA and optimizer
  hf        the payload with backend=trl: transformers + PEFT (+ bitsandbytes for QLoRA)

Throughput is measured identically for all three: wall-clock times of the Trainer's
per-step logs (logging_steps=1), after ``--warmup`` steps, times tokens per step (every row
is longer than seq, so each sample is exactly seq tokens: no padding to count around).
Random-init checkpoints of real shapes are built on the GPU (no Hub there); throughput and
memory don't depend on the weights' values.

  python bench/finetune_gpu.py --work /tmp/ftbench --out $OUT --shapes llama-3.2-1b,llama-3.1-8b
  python bench/finetune_gpu.py --work /tmp/ftb --out /tmp/ftb/out --shapes tiny --runners hf   # CPU smoke

Rows are appended to OUT/finetune_gpu.jsonl as each run ends, so a run cut off by its time
limit still returns what it measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = ROOT / "runners" / "payloads" / "finetune.py"

# Real architectures' shapes (config.json of meta-llama/Llama-3.2-1B and Llama-3.1-8B).
SHAPES: dict[str, dict[str, Any]] = {
    "llama-3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=131072, head_dim=64),
    "llama-3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=True, rope_theta=500000.0,
                         max_position_embeddings=131072, head_dim=128),
    "llama-3.1-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, tie_word_embeddings=False, rope_theta=500000.0,
                         max_position_embeddings=131072, head_dim=128),
    "tiny": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=False, max_position_embeddings=512),
}  # fmt: skip
BATCH = {"llama-3.2-1b": 4, "llama-3.2-3b": 2, "llama-3.1-8b": 2, "tiny": 4}
WORDS = "the of and to in is was for on that with as by at from his her it an are were be this which or".split()  # noqa: SIM905


def build_checkpoint(work: Path, shape: str) -> Path:
    """Random-init bf16 checkpoint of ``shape`` plus the tiny BPE tokenizer, built once per work dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.helpers.tiny_model import build_tiny_tokenizer

    out = work / shape
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out)
    cfg = LlamaConfig(**SHAPES[shape], bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, dtype="bfloat16")  # fmt: skip
    cuda = torch.cuda.is_available()
    with torch.device("cuda" if cuda else "cpu"):
        torch.set_default_dtype(torch.bfloat16 if cuda else torch.float32)
        model = LlamaForCausalLM(cfg)
        torch.set_default_dtype(torch.float32)
    model.save_pretrained(str(out))
    del model
    if cuda:
        torch.cuda.empty_cache()
    return out


def build_dataset(work: Path, words: int) -> Path:
    """Text rows longer than any seq we test, so every sample is truncated to exactly seq tokens."""
    path = work / f"text_{words}.jsonl"
    if not path.exists():
        rng = random.Random(0)
        rows = [{"text": " ".join(rng.choice(WORDS) for _ in range(words))} for _ in range(256)]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def direct_unsloth(config_path: Path, out_path: Path) -> None:
    """The reference: Unsloth as its notebooks use it, timing steps the same way as the payload."""
    import unsloth  # noqa: F401, I001  (first, so it patches transformers/trl)
    from unsloth import FastLanguageModel

    import datasets
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    c = json.loads(config_path.read_text())
    t0 = time.time()
    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=c["model"], max_seq_length=c["max_seq_length"], dtype=None, load_in_4bit=c["method"] == "qlora"
    )
    model = FastLanguageModel.get_peft_model(
        model, r=c["lora_r"], target_modules=c["target_modules"], lora_alpha=c["lora_alpha"], lora_dropout=0.0,
        bias="none", use_gradient_checkpointing="unsloth", random_state=c["seed"],
    )  # fmt: skip
    ds = datasets.load_dataset("json", data_files=c["dataset"], split="train")
    times: list[tuple[int, float]] = []

    class Times(TrainerCallback):
        def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
            if logs and "loss" in logs:
                times.append((state.global_step, time.time() - t0))

    trainer = SFTTrainer(
        model=model, processing_class=tokenizer, train_dataset=ds, callbacks=[Times()],
        args=SFTConfig(
            output_dir=str(out_path.parent / "direct_ckpt"), per_device_train_batch_size=c["per_device_batch_size"],
            gradient_accumulation_steps=c["gradient_accumulation_steps"], max_steps=c["max_steps"],
            learning_rate=c["learning_rate"], logging_steps=1, optim=c["optim"], seed=c["seed"],
            bf16=torch.cuda.is_bf16_supported(), fp16=not torch.cuda.is_bf16_supported(),
            max_length=c["max_seq_length"], dataset_text_field="text", packing=False, report_to="none",
            save_strategy="no", disable_tqdm=True, dataset_num_proc=1,
        ),
    )  # fmt: skip
    lengths = [len(x) for x in trainer.train_dataset["input_ids"]]
    trainer.train()
    gib = 2**30
    out_path.write_text(json.dumps({
        "times": times, "tokens_per_sample": sum(lengths) / len(lengths),
        "gpu_mem_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 3),
        "gpu_mem_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 3),
    }))  # fmt: skip


def throughput(times: list[tuple[int, float]], tokens_per_step: float, warmup: int) -> tuple[float, float]:
    """(tokens/s, s/step) over the steps after ``warmup``; the first steps carry compile and allocator growth."""
    kept = [(s, t) for s, t in times if s >= warmup]
    if len(kept) < 2:
        raise ValueError(f"too few timed steps after warmup {warmup}: {times}")
    (s0, t0), (s1, t1) = kept[0], kept[-1]
    return tokens_per_step * (s1 - s0) / (t1 - t0), (t1 - t0) / (s1 - s0)


def step_times(times: list[tuple[int, float]], warmup: int) -> list[float]:
    """Seconds of each logged step after warmup, kept in the row to show the spread (VM neighbours, offload)."""
    kept = [(s, t) for s, t in times if s >= warmup]
    return [round((t1 - t0) / (s1 - s0), 4) for (s0, t0), (s1, t1) in itertools.pairwise(kept)]


def run_one(args: argparse.Namespace, shape: str, method: str, runner: str, ckpt: Path, data: Path,
            extra: dict[str, Any]) -> dict[str, Any]:  # fmt: skip
    """One setting in its own process; returns the JSONL row (with ``error`` if it failed)."""
    batch = extra.get("per_device_batch_size", BATCH[shape])
    gc = extra.get("gradient_checkpointing", True)
    cfg = {"model": str(ckpt), "dataset": str(data), "dataset_format": "text", "method": method,
           "backend": "trl" if runner == "hf" else "unsloth", "max_seq_length": args.seq, "lora_r": 16,
           "lora_alpha": 16, "lora_dropout": 0.0, "max_steps": args.steps, "learning_rate": 2e-4,
           "per_device_batch_size": batch, "gradient_accumulation_steps": 1, "save_steps": 0,
           "logging_steps": 1, "optim": "adamw_8bit", "seed": 3407, "gradient_checkpointing": gc,
           "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}  # fmt: skip
    if runner == "unsloth" and not gc:
        raise ValueError("the direct Unsloth reference always uses Unsloth's gradient checkpointing")
    job = args.work / "jobs" / f"{shape}-{method}-{runner}-b{batch}-gc{int(gc)}"
    shutil.rmtree(job, ignore_errors=True)  # a repeated item must not append to the last run's metrics
    job.mkdir(parents=True)
    (job / "job_config.json").write_text(json.dumps(cfg))
    if runner == "unsloth":
        argv = [sys.executable, __file__, "direct-unsloth", str(job / "job_config.json"), str(job / "direct.json")]
    else:
        argv = [sys.executable, str(PAYLOAD), "--config", str(job / "job_config.json"), "--job-dir", str(job)]
    row: dict[str, Any] = {"shape": shape, "method": method, "runner": runner, "backend": cfg["backend"],
                           "seq": args.seq, "batch": batch, "grad_accum": 1, "grad_ckpt": gc, "lora_r": 16,
                           "optim": cfg["optim"], "steps": args.steps, "warmup": args.warmup}  # fmt: skip
    t0 = time.time()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    with (job / "output.log").open("w") as log:
        try:
            rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=args.work, env=env,
                                timeout=args.run_timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = -9
    row["wall_s"] = round(time.time() - t0, 1)
    try:
        if rc != 0:
            tail = (job / "output.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"exit {rc}: {' | '.join(tail)}"[:600])
        if runner == "unsloth":
            res = json.loads((job / "direct.json").read_text())
            times, tps, mem = res["times"], res["tokens_per_sample"], res
        else:
            rows = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
            times = [(r["step"], r["time"]) for r in rows if r["event"] == "log" and "loss" in r]
            tps = json.loads((job / "outputs" / "manifest.json").read_text())["tokens_per_sample"]
            mem = rows[-1]
        row["tokens_per_sample"] = tps
        row["tokens_per_s"], row["s_per_step"] = (round(x, 3) for x in throughput(times, tps * batch, args.warmup))
        row["step_s"] = step_times(times, args.warmup)
        row["tokens_per_s_median"] = round(tps * batch / sorted(row["step_s"])[len(row["step_s"]) // 2], 1)
        row["peak_allocated_gib"] = mem.get("gpu_mem_peak_allocated_gib")
        row["peak_reserved_gib"] = mem.get("gpu_mem_peak_reserved_gib")
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        row["error"] = str(exc)
    return row


def environment(
    packages: tuple[str, ...] = ("torch", "transformers", "trl", "peft", "bitsandbytes", "unsloth"),
) -> dict[str, Any]:
    """Card, GPU count and library versions, recorded once per bench run next to the rows (None: not installed)."""
    from importlib import metadata

    import torch

    env: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "gpus": torch.cuda.device_count(),
    }
    for name in packages:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = None
    return env


def main() -> int:
    """Build checkpoints, run every (shape, method, runner) in priority order until the deadline."""
    if len(sys.argv) == 4 and sys.argv[1] == "direct-unsloth":
        direct_unsloth(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch dir for checkpoints and job dirs")
    p.add_argument("--out", type=Path, required=True, help="dir for finetune_gpu.jsonl")
    p.add_argument("--shapes", default="llama-3.2-1b,llama-3.1-8b")
    p.add_argument("--methods", default="lora,qlora")
    p.add_argument("--runners", default="payload,unsloth,hf")
    p.add_argument(
        "--extra", default="", help="more runs after the grid: shape:method:runner[:batch:gc], comma-separated"
    )
    p.add_argument("--items", default="", help="run only these, in this order (same syntax as --extra)")
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--steps", type=int, default=16)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--run-timeout", type=int, default=300)
    p.add_argument("--deadline-s", type=float, default=1e9, help="start no new run after this many seconds")
    p.add_argument("--build-only", action="store_true")
    args = p.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(ROOT))
    start = time.time()
    env = environment()
    data = build_dataset(args.work, words=max(64, args.seq * 2))
    shapes = [x for x in args.shapes.split(",") if x]
    ckpts = {s: build_checkpoint(args.work, s) for s in shapes}
    print(f"checkpoints built in {time.time() - start:.0f}s on {env['device']}", flush=True)
    if args.build_only:
        return 0
    plan: list[tuple[str, str, str, dict[str, Any]]] = [
        (s, m, r, {}) for s in shapes for m in args.methods.split(",") for r in args.runners.split(",")
    ]
    if args.items:
        plan = []
    for item in filter(None, (args.items or args.extra).split(",")):
        s, m, r, *rest = item.split(":")
        if s not in ckpts:
            ckpts[s] = build_checkpoint(args.work, s)
        extra = {"per_device_batch_size": int(rest[0]), "gradient_checkpointing": rest[1] == "1"} if rest else {}
        plan.append((s, m, r, extra))
    out = args.out / "finetune_gpu.jsonl"
    for shape, method, runner, extra in plan:
        if time.time() - start > args.deadline_s:
            print(f"deadline: skipping {shape} {method} {runner} {extra}", flush=True)
            continue
        row = run_one(args, shape, method, runner, ckpts[shape], data, extra)
        row.update(env)
        row["command"] = "python bench/finetune_gpu.py " + " ".join(sys.argv[1:])
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: row.get(k) for k in ("shape", "method", "runner", "batch", "grad_ckpt", "tokens_per_s",
                                                  "peak_reserved_gib", "wall_s", "error")}), flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
