"""Measure real peak GPU memory of fine-tuning workloads, as rows for bench/memory_accuracy.py.

Standalone: needs only torch, transformers, peft, bitsandbytes (and unsloth where
importable); it does not import this project. It builds random-init checkpoints of
real architectures (shapes from tools/data/model_catalog.json, via
``AutoConfig.for_model`` + ``from_config``; memory does not depend on the weights'
values), runs each workload in a fresh subprocess (clean allocator, own CUDA
context), takes two optimizer steps and writes one JSONL row per workload:
``measured_gib = (torch.cuda.max_memory_reserved + CUDA context) / GiB``, the
nvidia-smi view that estimate_memory predicts. vLLM inference is not measured here.

Usage on the GPU machine::

    python bench/measure_memory_gpu.py --out bench/data/memory_gpu.jsonl            # default cases
    python bench/measure_memory_gpu.py --only llama-3.2-1b --out /tmp/rows.jsonl    # a subset
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

__all__ = ["CASES", "main"]

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "tools" / "data" / "model_catalog.json"
GIB = 1024**3

# (catalog id, task, backend, seq_len, batch, gradient_checkpointing, optimizer, lora_r)
CASES: list[tuple[str, str, str, int, int, bool, str, int]] = [
    ("meta-llama/Llama-3.2-1B", "lora", "hf", 2048, 4, True, "adamw", 16),
    ("meta-llama/Llama-3.2-1B", "lora", "hf", 2048, 4, False, "adamw", 16),
    ("meta-llama/Llama-3.2-1B", "full", "hf", 2048, 2, True, "adamw", 16),
    ("meta-llama/Llama-3.2-1B", "full", "hf", 2048, 2, False, "adamw", 16),
    ("meta-llama/Llama-3.2-1B", "full", "hf", 2048, 2, True, "adamw_8bit", 16),
    ("meta-llama/Llama-3.2-1B", "lora", "unsloth", 2048, 4, True, "adamw", 16),
    ("meta-llama/Llama-3.2-3B", "qlora", "hf", 4096, 2, True, "adamw", 16),
    ("meta-llama/Llama-3.2-3B", "qlora", "unsloth", 4096, 2, True, "adamw", 16),
    ("meta-llama/Llama-3.1-8B", "lora", "hf", 2048, 2, True, "adamw", 16),
    ("meta-llama/Llama-3.1-8B", "qlora", "hf", 2048, 2, True, "adamw", 16),
    ("meta-llama/Llama-3.1-8B", "lora", "unsloth", 2048, 2, True, "adamw", 16),
    ("meta-llama/Llama-3.1-8B", "qlora", "unsloth", 8192, 1, True, "adamw", 32),
    ("Qwen/Qwen2.5-7B", "qlora", "hf", 2048, 2, True, "adamw", 16),
    ("Qwen/Qwen2.5-1.5B", "lora", "hf", 4096, 2, False, "adamw", 16),
    ("Qwen/Qwen3-8B", "lora", "unsloth", 4096, 2, True, "adamw", 16),
    ("google/gemma-2-2b", "lora", "hf", 2048, 2, True, "adamw", 16),
    ("mistralai/Mistral-7B-Instruct-v0.3", "qlora", "hf", 4096, 1, True, "paged_adamw_8bit", 16),
]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def hf_config(entry: dict) -> dict:
    """config.json fields for AutoConfig.for_model from a catalog entry (dense models)."""
    cfg = {
        "hidden_size": entry["hidden_size"],
        "intermediate_size": entry["intermediate_size"],
        "num_hidden_layers": entry["num_layers"],
        "num_attention_heads": entry["num_heads"],
        "num_key_value_heads": entry["num_kv_heads"],
        "head_dim": entry["head_dim"],
        "vocab_size": entry["vocab_size"],
        "tie_word_embeddings": entry["tie_embeddings"],
        "max_position_embeddings": max(entry.get("max_position") or 4096, 131072),
    }
    if entry.get("sliding_window"):
        cfg["sliding_window"] = entry["sliding_window"]
    return cfg


def build_checkpoint(model_id: str, workdir: Path) -> Path:
    """A random-init checkpoint of ``model_id``'s shapes, saved in bf16 (cached across cases)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    d = workdir / model_id.replace("/", "__")
    if (d / "config.json").exists():
        return d
    entry = next(e for e in json.loads(CATALOG.read_text())["models"] if e["id"] == model_id)
    mt = {"gemma3": "gemma3_text"}.get(entry["model_type"], entry["model_type"])
    config = AutoConfig.for_model(mt, **hf_config(entry))
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    model.save_pretrained(d, safe_serialization=True)
    # Unsloth's loader wants a tokenizer beside the weights; a tiny byte-level one will do (memory
    # does not depend on it: the workload feeds random token ids of the model's own vocabulary).
    sys.path.insert(0, str(ROOT))
    from tests.helpers.tiny_model import build_tiny_tokenizer

    build_tiny_tokenizer(d)
    del model
    torch.cuda.empty_cache()
    return d


def run_one(case: dict, ckpt: Path) -> dict:
    """One workload in this (fresh) process; returns the measured row."""
    import torch

    torch.cuda.init()
    torch.zeros(1, device="cuda")
    free, total = torch.cuda.mem_get_info()
    context = (total - free) - torch.cuda.memory_reserved()
    torch.cuda.reset_peak_memory_stats()
    task, backend, seq, batch = case["task"], case["backend"], case["seq_len"], case["batch_size"]
    ckpt_on = case["gradient_checkpointing"]
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, _ = FastLanguageModel.from_pretrained(
            str(ckpt), max_seq_length=seq, dtype=torch.bfloat16, load_in_4bit=task == "qlora"
        )
        model = FastLanguageModel.get_peft_model(
            model,
            r=case["lora_r"],
            target_modules=TARGETS,
            lora_alpha=16,
            lora_dropout=0,
            use_gradient_checkpointing="unsloth" if ckpt_on else False,
        )
    else:
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        kw: dict = {"dtype": torch.bfloat16, "device_map": {"": 0}, "attn_implementation": "sdpa"}
        if task == "qlora":
            kw["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True,
                bnb_4bit_quant_type="nf4",
                bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16,
            )
        model = AutoModelForCausalLM.from_pretrained(str(ckpt), **kw)
        if task == "qlora":
            from peft import prepare_model_for_kbit_training

            model = prepare_model_for_kbit_training(
                model, use_gradient_checkpointing=ckpt_on, gradient_checkpointing_kwargs={"use_reentrant": False}
            )
        elif ckpt_on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
        if task in ("lora", "qlora"):
            from peft import LoraConfig, get_peft_model

            model = get_peft_model(
                model,
                LoraConfig(
                    r=case["lora_r"], lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"
                ),
            )
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if case["optimizer"] in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if case["optimizer"].startswith("paged") else bnb.optim.AdamW8bit
        opt = cls(params, lr=1e-5)
    elif case["optimizer"] == "sgd":
        opt = torch.optim.SGD(params, lr=1e-5)
    else:
        opt = torch.optim.AdamW(params, lr=1e-5, fused=True)
    vocab = model.config.vocab_size
    t0 = time.time()
    for _ in range(2):
        ids = torch.randint(0, vocab, (batch, seq), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=backend == "hf"):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    reserved = torch.cuda.max_memory_reserved()
    import transformers

    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for mod in ("peft", "bitsandbytes", "unsloth"):
        if mod in sys.modules:  # only what this workload imported (importing unsloth patches transformers)
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    return {
        **case,
        "metric": "total_gib",
        "measured_gib": round((reserved + context) / GIB, 3),
        "max_reserved_gib": round(reserved / GIB, 3),
        "max_allocated_gib": round(torch.cuda.max_memory_allocated() / GIB, 3),
        "context_gib": round(context / GIB, 3),
        "step_s": round((time.time() - t0) / 2, 2),
        "gpu_name": torch.cuda.get_device_name(),
        "versions": versions,
        "scored": True,
        "source": f"bench/measure_memory_gpu.py on {torch.cuda.get_device_name()} (random-init weights)",
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "data" / "memory_gpu.jsonl"))
    ap.add_argument("--only", default="", help="Substring of the model id to select cases.")
    ap.add_argument("--backend", default="", help="Only cases of this backend (hf or unsloth).")
    ap.add_argument("--workdir", default=os.environ.get("MEASURE_WORKDIR", tempfile.gettempdir() + "/memckpt"))
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.one:  # child: one workload
        case = json.loads(args.one)
        row = run_one(case, Path(case.pop("_ckpt")))
        print("ROW " + json.dumps(row), flush=True)
        return 0
    out = Path(args.out)
    for model_id, task, backend, seq, batch, ckpt_on, optim, r in CASES:
        if args.only and args.only.lower() not in model_id.lower():
            continue
        if args.backend and backend != args.backend:
            continue
        if backend == "unsloth":
            try:
                import unsloth  # noqa: F401
            except Exception:
                print(f"skip {model_id} {task} unsloth: not importable", file=sys.stderr)
                continue
        case = {
            "id": f"gpu-{model_id.split('/')[-1].lower()}-{task}-{backend}-{seq}x{batch}"
            f"{'-ckpt' if ckpt_on else ''}-{optim}",
            "model": model_id,
            "task": task,
            "backend": backend,
            "seq_len": seq,
            "batch_size": batch,
            "gradient_checkpointing": ckpt_on,
            "optimizer": optim,
            "lora_r": r,
            "dtype": "bfloat16",
        }
        ckpt = subprocess.run(
            [
                sys.executable,
                "-c",
                f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); "
                f"from measure_memory_gpu import build_checkpoint; from pathlib import Path; "
                f"print(build_checkpoint({model_id!r}, Path({str(work)!r})))",
            ],
            capture_output=True,
            text=True,
        )
        if ckpt.returncode:
            print(f"checkpoint for {model_id} failed:\n{ckpt.stderr[-2000:]}", file=sys.stderr)
            continue
        child = subprocess.run(
            [sys.executable, __file__, "--one", json.dumps({**case, "_ckpt": ckpt.stdout.split()[-1]})],
            capture_output=True,
            text=True,
        )
        rows = [ln[4:] for ln in child.stdout.splitlines() if ln.startswith("ROW ")]
        if not rows:
            oom = "OutOfMemoryError" in child.stderr
            print(f"{case['id']}: {'OOM' if oom else 'failed'}\n{child.stderr[-1500:]}", file=sys.stderr)
            continue
        with out.open("a") as f:
            f.write(rows[0] + "\n")
        print(rows[0], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
