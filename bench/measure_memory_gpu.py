"""Measure real peak GPU memory of fine-tuning workloads, as rows for bench/memory_accuracy.py.

Standalone: needs only torch, transformers, peft, bitsandbytes (and unsloth where
importable); it does not import this project. It builds random-init checkpoints of
real architectures (shapes from tools/data/model_catalog.json, via
``AutoConfig.for_model`` + ``from_config``; memory does not depend on the weights'
values), takes two optimizer steps per workload and writes one JSONL row per workload
as soon as it is measured: ``measured_gib = (torch.cuda.max_memory_reserved + CUDA
context) / GiB``, the nvidia-smi view that estimate_memory predicts, with the band's
lower edge ``max_allocated_gib`` and the peak of each phase of the second step
(forward, backward, optimizer step) beside it. vLLM inference is not measured here.

How it runs (one GPU call of at most 10 minutes, so it must survive anything):

* the parent never touches CUDA (a CUDA context in the parent is counted by the child's
  ``mem_get_info``: the rows of 6115571 put the parent's 0.7 GiB, opened by ``import
  unsloth``, into Unsloth's "context"); the context is read in the child after its
  workload, as the device's used memory minus what the allocator reserved;
* plain transformers + PEFT cases run one after another in one worker process (no import
  per case; each case frees everything and resets the peak statistics first; a CUDA OOM
  is caught and recorded); every Unsloth case gets a fresh process, because Unsloth keeps
  module-level GPU staging buffers between models;
* a worker that dies is restarted on the cases it had left; ``--budget-s`` is a deadline
  for the whole run: a case that would not finish before it (its own time estimate) is
  skipped and listed.

Usage on the GPU machine::

    python bench/measure_memory_gpu.py --cases issue17 --budget-s 520 --out $OUT/rows.jsonl
    python bench/measure_memory_gpu.py --cases base --only llama-3.2-1b --out /tmp/rows.jsonl
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

__all__ = ["CASE_SETS", "case", "main", "plan_jobs"]

ROOT = Path(__file__).resolve().parent.parent
CATALOG = ROOT / "tools" / "data" / "model_catalog.json"
GIB = 1024**3
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def case(
    model: str,
    task: str,
    backend: str,
    seq: int,
    batch: int,
    ckpt: bool = True,
    optim: str = "adamw",
    r: int = 16,
    mp: str = "bf16",
    attn: str = "sdpa",
) -> dict:
    """One workload as a row's settings (the keys are estimate_memory's argument names).

    ``mp`` is the autocast of a plain transformers loop ("bf16": ``torch.autocast``, "none":
    the bf16 model run as loaded, as a hand-written loop without autocast does); Unsloth
    runs without autocast.
    """
    short = model.split("/")[-1].lower()
    tags = ("-ckpt" if ckpt else "") + ("-noautocast" if mp == "none" else "") + ("-eager" if attn != "sdpa" else "")
    return {
        "id": f"gpu-{short}-{task}-{backend}-{seq}x{batch}{tags}-{optim}" + (f"-r{r}" if r != 16 else ""),
        "model": model,
        "task": task,
        "backend": backend,
        "seq_len": seq,
        "batch_size": batch,
        "gradient_checkpointing": ckpt,
        "optimizer": optim,
        "lora_r": r,
        "dtype": "bfloat16",
        "mixed_precision": mp if backend == "hf" else None,
        "attn_implementation": attn,
    }


L1, L3, L8 = "meta-llama/Llama-3.2-1B", "meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.1-8B"
Q05, Q15 = "Qwen/Qwen2.5-0.5B", "Qwen/Qwen2.5-1.5B"
CASE_SETS: dict[str, list[dict]] = {
    # What 6115571 and f1a3b22 measured (bench/data/memory_gpu.jsonl).
    "base": [
        case(L1, "lora", "hf", 2048, 4),
        case(L1, "lora", "hf", 2048, 4, ckpt=False),
        case(L1, "full", "hf", 2048, 2),
        case(L1, "full", "hf", 2048, 2, ckpt=False),
        case(L1, "full", "hf", 2048, 2, optim="adamw_8bit"),
        case(L1, "lora", "unsloth", 2048, 4),
        case(L3, "qlora", "hf", 4096, 2),
        case(L3, "qlora", "unsloth", 4096, 2),
        case(L8, "lora", "hf", 2048, 2),
        case(L8, "qlora", "hf", 2048, 2),
        case(L8, "lora", "unsloth", 2048, 2),
        case(L8, "qlora", "unsloth", 8192, 1, r=32),
        case(Q15, "lora", "hf", 4096, 2, ckpt=False),
        case("google/gemma-2-2b", "lora", "hf", 2048, 2),
    ],
    # Issue 17's regimes and their neighbours, in priority order (the budget may cut the tail).
    "issue17": [
        # no gradient checkpointing: 4 shapes, 3 sequence lengths, autocast on and off, eager attention
        case(Q05, "lora", "hf", 2048, 4, ckpt=False),
        case(Q05, "lora", "hf", 2048, 4, ckpt=False, mp="none"),
        case(L1, "lora", "hf", 2048, 4, ckpt=False, mp="none"),
        case(L8, "lora", "hf", 2048, 4, ckpt=False),
        case(L8, "lora", "hf", 1024, 4, ckpt=False, mp="none"),
        case(L3, "lora", "hf", 4096, 2, ckpt=False),
        case(L1, "lora", "hf", 2048, 4, ckpt=False, attn="eager"),
        case(L1, "full", "hf", 4096, 1, ckpt=False),
        # Unsloth LoRA of 0.5-1.5B shapes (a fresh process each), one the re-measurement of an old row
        case(L1, "lora", "unsloth", 1024, 4),
        case(L1, "lora", "unsloth", 2048, 4),
        case(Q15, "lora", "unsloth", 2048, 2),
        case(Q05, "lora", "unsloth", 2048, 4),
        # QLoRA at long context and batch; sliding-window models
        case(L8, "qlora", "hf", 4096, 4),
        case(L8, "qlora", "hf", 4096, 4, mp="none"),
        case("google/gemma-3-1b-pt", "lora", "hf", 2048, 4),
        case("mistralai/Mistral-7B-v0.1", "qlora", "hf", 2048, 1),
        case("mistralai/Mistral-7B-v0.1", "qlora", "hf", 4096, 2),
        case(L3, "qlora", "hf", 8192, 2),
        case(L3, "lora", "unsloth", 2048, 4),
    ],
}
# Rough seconds per case on an H200 (load + two steps), to respect --budget-s.
_SECONDS = {"build": 12.0, "hf": 10.0, "unsloth": 45.0}


def _billions(model_id: str) -> float:
    return {"8b": 8.0, "7b": 7.0, "3b": 3.0}.get(model_id.lower()[-2:], 1.5)


def estimate_seconds(job: dict) -> float:
    """A rough wall time for one job (a checkpoint build or a case), bigger models longer."""
    size = _billions(job.get("build") or job["model"])
    if "build" in job:
        return _SECONDS["build"] + 2.5 * size
    base = _SECONDS["unsloth" if job["backend"] == "unsloth" else "hf"]
    return base + size * (3.0 if job["task"] == "qlora" else 1.5) + job["seq_len"] * job["batch_size"] / 4096


def plan_jobs(cases: list[dict]) -> list[list[dict]]:
    """Worker job lists, in the cases' order: each Unsloth case alone, consecutive plain cases together.

    A case that loads from disk (QLoRA, Unsloth) gets its checkpoint built first, in the
    latest plain worker before it (building under Unsloth's patches is not what its loader
    sees elsewhere; one worker saves a process start per build).
    """
    workers: list[list[dict]] = []
    plain: list[dict] | None = None  # the latest plain worker's job list
    built: set[str] = set()
    for c in cases:
        needs = (c["backend"] == "unsloth" or c["task"] == "qlora") and c["model"] not in built
        if needs:
            built.add(c["model"])
        if c["backend"] == "unsloth":
            if needs:
                if plain is None:
                    plain = []
                    workers.append(plain)
                plain.append({"build": c["model"]})
            workers.append([c])
            continue
        if plain is None or workers[-1] is not plain:
            plain = []
            workers.append(plain)
        plain.extend([{"build": c["model"]}, c] if needs else [c])
    return workers


# ----------------------------------------------------------------------------- child side
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


def _config(model_id: str):
    from transformers import AutoConfig

    entry = next(e for e in json.loads(CATALOG.read_text())["models"] if e["id"] == model_id)
    mt = {"gemma3": "gemma3_text"}.get(entry["model_type"], entry["model_type"])
    return AutoConfig.for_model(mt, **hf_config(entry))


def ckpt_dir(model_id: str, workdir: Path) -> Path:
    return workdir / model_id.replace("/", "__")


def build_checkpoint(model_id: str, workdir: Path) -> Path:
    """A random-init checkpoint of ``model_id``'s shapes, saved in bf16 (cached across cases)."""
    import torch
    from transformers import AutoModelForCausalLM

    d = ckpt_dir(model_id, workdir)
    if (d / "config.json").exists():
        return d
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(_config(model_id), dtype=torch.bfloat16)
    model.save_pretrained(d, safe_serialization=True)
    # Unsloth's loader wants a tokenizer beside the weights; a tiny byte-level one will do (memory
    # does not depend on it: the workload feeds random token ids of the model's own vocabulary).
    sys.path.insert(0, str(ROOT))
    from tests.helpers.tiny_model import build_tiny_tokenizer

    build_tiny_tokenizer(d)
    del model
    torch.cuda.empty_cache()
    return d


def _load_unsloth(c: dict, ckpt: Path):
    import torch
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        str(ckpt), max_seq_length=c["seq_len"], dtype=torch.bfloat16, load_in_4bit=c["task"] == "qlora"
    )
    return FastLanguageModel.get_peft_model(
        model,
        r=c["lora_r"],
        target_modules=TARGETS,
        lora_alpha=16,
        lora_dropout=0,
        use_gradient_checkpointing="unsloth" if c["gradient_checkpointing"] else False,
    )


def _load_hf(c: dict, workdir: Path):
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    task, ckpt_on = c["task"], c["gradient_checkpointing"]
    kw: dict = {"dtype": torch.bfloat16, "attn_implementation": c.get("attn_implementation", "sdpa")}
    if task == "qlora":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(str(ckpt_dir(c["model"], workdir)), device_map={"": 0}, **kw)
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=ckpt_on, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    else:
        with torch.device("cuda"):  # random init in place: no checkpoint to write or read
            model = AutoModelForCausalLM.from_config(_config(c["model"]), **kw)
        if ckpt_on:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            model.enable_input_require_grads()
    if task in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(r=c["lora_r"], lora_alpha=16, lora_dropout=0.0, target_modules=TARGETS, task_type="CAUSAL_LM"),
        )
    return model


def _optimizer(name: str, params: list):
    import torch

    if name in ("adamw_8bit", "paged_adamw_8bit"):
        import bitsandbytes as bnb

        cls = bnb.optim.PagedAdamW8bit if name.startswith("paged") else bnb.optim.AdamW8bit
        return cls(params, lr=1e-5)
    if name == "sgd":
        return torch.optim.SGD(params, lr=1e-5)
    return torch.optim.AdamW(params, lr=1e-5, fused=True)


class _Peaks:
    """Peak allocated/reserved per phase; the whole run's peak is the max over phases."""

    def __init__(self) -> None:
        import torch

        self.torch = torch
        self.phases: dict[str, tuple[float, float]] = {}
        torch.cuda.reset_peak_memory_stats()

    def mark(self, name: str) -> None:
        cuda = self.torch.cuda
        cuda.synchronize()
        self.phases[name] = (cuda.max_memory_allocated() / GIB, cuda.max_memory_reserved() / GIB)
        cuda.reset_peak_memory_stats()

    def peak(self) -> tuple[float, float]:
        return max(a for a, _ in self.phases.values()), max(r for _, r in self.phases.values())


def run_case(c: dict, workdir: Path) -> dict:
    """One workload in this process; returns the measured row. Frees everything it made."""
    import gc

    import torch
    import transformers

    gc.collect()
    torch.cuda.empty_cache()
    start_reserved = torch.cuda.memory_reserved() / GIB
    peaks = _Peaks()
    model = _load_unsloth(c, ckpt_dir(c["model"], workdir)) if c["backend"] == "unsloth" else _load_hf(c, workdir)
    model.train()
    static = torch.cuda.memory_allocated() / GIB
    opt = _optimizer(c["optimizer"], [p for p in model.parameters() if p.requires_grad])
    peaks.mark("load")
    vocab = model.config.vocab_size
    autocast = c["backend"] == "hf" and c.get("mixed_precision") != "none"
    t0 = time.time()
    for step in range(2):
        ids = torch.randint(0, vocab, (c["batch_size"], c["seq_len"]), device="cuda")
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            loss = model(input_ids=ids, labels=ids).loss
        peaks.mark(f"forward{step}")
        loss.backward()
        peaks.mark(f"backward{step}")
        opt.step()
        opt.zero_grad(set_to_none=True)
        peaks.mark(f"step{step}")
    step_s = (time.time() - t0) / 2
    free, total = torch.cuda.mem_get_info()
    context = (total - free) / GIB - torch.cuda.memory_reserved() / GIB
    alloc, reserved = peaks.peak()
    versions = {"torch": torch.__version__, "transformers": transformers.__version__}
    for mod in ("peft", "bitsandbytes", "unsloth"):
        if mod in sys.modules:  # only what this workload imported (importing unsloth patches transformers)
            versions[mod] = getattr(sys.modules[mod], "__version__", "?")
    del model, opt, loss, ids
    gc.collect()
    torch.cuda.empty_cache()
    return {
        **{k: v for k, v in c.items() if v is not None},
        "metric": "total_gib",
        "measured_gib": round(reserved + context, 3),
        "max_reserved_gib": round(reserved, 3),
        "max_allocated_gib": round(alloc, 3),
        "context_gib": round(context, 3),
        "static_gib": round(static, 3),
        "start_reserved_gib": round(start_reserved, 3),
        "phase_peaks_gib": {k: [round(a, 3), round(r, 3)] for k, (a, r) in peaks.phases.items()},
        "step_s": round(step_s, 2),
        "gpu_name": torch.cuda.get_device_name(),
        "versions": versions,
        "scored": True,
        "source": f"bench/measure_memory_gpu.py on {torch.cuda.get_device_name()} (random-init weights)",
    }


def worker(jobs: list[dict], workdir: Path, deadline: float, out: Path) -> None:
    """Run ``jobs`` in order: rows appended to ``out`` as measured; START/FAIL/SKIP lines on stdout."""
    if any(j.get("backend") == "unsloth" for j in jobs):
        try:
            import unsloth  # noqa: F401  - before transformers and peft, as Unsloth requires for its patches
        except Exception as e:
            for job in jobs:
                print(f"FAIL {job.get('id') or job['build']}: unsloth not importable: {e}", flush=True)
            return
    import gc

    import torch

    for job in jobs:
        name = job.get("id") or f"build {job['build']}"
        if time.time() + estimate_seconds(job) > deadline:
            print(f"SKIP {name}: past the time budget", flush=True)
            continue
        print(f"START {name}", flush=True)
        try:
            if "build" in job:
                build_checkpoint(job["build"], workdir)
                print(f"DONE {name}", flush=True)
                continue
            row = run_case(job, workdir)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(f"DONE {name} {row['measured_gib']} GiB ({row['max_allocated_gib']} allocated)", flush=True)
        except torch.OutOfMemoryError as e:
            print(f"FAIL {name}: OOM {str(e)[:300]}", flush=True)
        except Exception as e:  # one case's failure must not stop the others
            print(f"FAIL {name}: {type(e).__name__}: {str(e)[:500]}", flush=True)
        gc.collect()
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- parent side
def _job_name(job: dict) -> str:
    return job.get("id") or f"build {job['build']}"


def _run_worker(jobs: list[dict], work: Path, deadline: float, out: Path, log: list[str]) -> list[dict]:
    """One worker over ``jobs``; returns the jobs after the one it died in (empty when it finished)."""
    import threading

    err = work / f"worker-{time.time():.0f}.err"
    cmd = [sys.executable, __file__, "--worker", json.dumps(jobs), "--workdir", str(work)]
    cmd += ["--deadline", str(deadline), "--out", str(out)]
    with err.open("w") as ef:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=ef, text=True)
        killer = threading.Timer(max(5.0, deadline - time.time() + 20), proc.kill)
        killer.start()
        seen: list[str] = []
        for line in proc.stdout or []:
            line = line.rstrip()
            print(line, flush=True)
            if line.startswith("START "):
                seen.append(line[6:])
            elif line.startswith(("FAIL ", "SKIP ")):
                log.append(line)
        proc.wait()
        killer.cancel()
    if proc.returncode == 0:
        return []
    tail = err.read_text()[-1500:]
    log.append(f"worker exit {proc.returncode} in {seen[-1] if seen else '?'}: {tail}")
    print(log[-1], file=sys.stderr, flush=True)
    names = [_job_name(j) for j in jobs]
    last = names.index(seen[-1]) if seen and seen[-1] in names else 0  # died before its first job: drop that one
    return jobs[last + 1 :]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench" / "data" / "memory_gpu.jsonl"))
    ap.add_argument("--cases", default="issue17", choices=[*sorted(CASE_SETS), "all"])
    ap.add_argument("--only", default="", help="Substring of the model id to select cases.")
    ap.add_argument("--backend", default="", help="Only cases of this backend (hf or unsloth).")
    ap.add_argument("--budget-s", type=float, default=520.0, help="Wall-clock budget for the whole run.")
    ap.add_argument("--workdir", default=os.environ.get("MEASURE_WORKDIR", tempfile.gettempdir() + "/memckpt"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:  # child
        worker(json.loads(args.worker), work, args.deadline or time.time() + 600, Path(args.out))
        return 0
    deadline = time.time() + args.budget_s
    cases = CASE_SETS["base"] + CASE_SETS["issue17"] if args.cases == "all" else CASE_SETS[args.cases]
    cases = [
        c
        for c in cases
        if (not args.only or args.only.lower() in c["model"].lower())
        and (not args.backend or c["backend"] == args.backend)
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    log: list[str] = []
    for jobs in plan_jobs(cases):
        while jobs and time.time() < deadline - 5:
            jobs = _run_worker(jobs, work, deadline, out, log)
    print("\nSUMMARY\n" + "\n".join(log), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
