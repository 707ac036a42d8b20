"""GPU benchmark for multi-GPU fine-tunes (issue 11): DDP scaling and FSDP memory, on 2 GPUs.

Two measurements, each in its own torchrun launch (so peaks never mix), both through our
fine-tune payload (what submit_finetune runs: TRL + accelerate under torchrun) and through a
minimal direct torch loop (DDP / FSDP2 ``fully_shard``) as the reference without our code:

  ddp   LoRA r=16 on all linear layers of a Llama-3.2-1B-shaped model, gradient
        checkpointing, per-GPU batch fixed: tokens/s on 2 GPUs against 1 GPU in the same
        run (target >= 1.8x).
  fsdp  full fine-tune of a Llama-3.2-3B shape, FSDP full_shard across 2 GPUs: peak memory
        per GPU (rank 0 and, for the torch loop, every rank) against estimate_memory's
        prediction (num_gpus=2, zero_stage=3), and tokens/s.
  fsdp-offload  the same with FSDP's CPU offload (parameters, gradients and the optimizer
        step in CPU RAM) against estimate_memory(cpu_offload=True).

Random-init checkpoints of the real shapes are built on the spot (no Hub on the GPU host);
throughput and memory don't depend on the weights' values. Every sample is exactly ``seq``
tokens (rows longer than seq, truncated), so tokens per step = seq x batch x world size.
Rows are appended to OUT/multigpu_gpu.jsonl as each run ends.

  python bench/multigpu_gpu.py --work /tmp/mgb --out $OUT                 # 2-GPU machine
  python bench/multigpu_gpu.py --work /tmp/mgb --out /tmp/mgb/out --smoke  # CPU, gloo, tiny model

Needs torch, transformers, peft, accelerate (+ trl, datasets for the payload runner).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.finetune_gpu import build_checkpoint, build_dataset, environment  # noqa: E402
from runners.distributed import torchrun_argv  # noqa: E402

PAYLOAD = ROOT / "runners" / "payloads" / "finetune.py"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
GIB = 2**30


# ------------------------------------------------------------------ the direct torch loop (a torchrun worker)
def torch_worker(cfg_path: Path, out_path: Path) -> None:
    """One rank of the reference loop: DDP + PEFT LoRA, or FSDP2 full fine-tune; rank 0 writes the result."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    cfg = json.loads(cfg_path.read_text())
    rank, local, world = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local)
    if cfg.get("offload"):  # CPU AdamW on this rank's share of the cores (torchrun pins 1 thread)
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // int(os.environ["LOCAL_WORLD_SIZE"])))
    dist.init_process_group(("cpu:gloo,cuda:nccl" if cfg.get("offload") else "nccl") if cuda else "gloo")
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    half = torch.bfloat16 if cuda else torch.float32
    seq, batch = cfg["seq"], cfg["batch"]
    if cfg["mode"] == "ddp":
        from peft import LoraConfig, get_peft_model
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=half).to(dev)
        model.train()  # from_pretrained returns eval mode, where HF skips gradient checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=16, target_modules=TARGETS, task_type="CAUSAL_LM"))
        net: Any = DDP(model, device_ids=[local] if cuda else None) if world > 1 else model
    else:  # FSDP2 full fine-tune: fp32 master shards, bf16 compute, fp32 gradient reduction
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
        model.train()  # from_pretrained returns eval mode, where HF skips gradient checkpointing
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        mp = MixedPrecisionPolicy(param_dtype=half, reduce_dtype=torch.float32)
        offload = CPUOffloadPolicy() if cfg.get("offload") and cuda else OffloadPolicy()
        for layer in model.model.layers:
            fully_shard(layer, mp_policy=mp, offload_policy=offload)
        fully_shard(model, mp_policy=mp, offload_policy=offload)
        if cuda and not cfg.get("offload"):
            model.to(dev)
        net = model
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    gen = torch.Generator(device="cpu").manual_seed(rank)
    vocab = model.config.vocab_size
    times: list[float] = []
    phases: list[dict[str, float]] = []  # running peak after each phase of the first steps: where it is set

    def peak() -> float:
        return round(torch.cuda.max_memory_allocated(dev) / GIB, 3) if cuda else 0.0

    for i in range(cfg["warmup"] + cfg["steps"]):
        ids = torch.randint(0, vocab, (batch, seq), generator=gen).to(dev)
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=half, enabled=cuda and cfg["mode"] == "ddp"):
            loss = net(input_ids=ids, labels=ids).loss
        fwd = peak()
        loss.backward()
        bwd = peak()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if i < 3:
            phases.append({"forward": fwd, "backward": bwd, "step": peak()})
    peaks = torch.tensor(
        [torch.cuda.max_memory_reserved(dev) / GIB, torch.cuda.max_memory_allocated(dev) / GIB] if cuda else [0.0, 0.0],
        device=dev,
    )
    gathered = [torch.zeros_like(peaks) for _ in range(world)]
    dist.all_gather(gathered, peaks)
    if rank == 0:
        meas = times[cfg["warmup"] :]
        out_path.write_text(
            json.dumps(
                {
                    "step_s": [round(x, 4) for x in meas],
                    "tokens_per_s": round(world * batch * seq * len(meas) / sum(meas), 1),
                    "peak_reserved_gib": [round(float(g[0]), 3) for g in gathered],
                    "peak_allocated_gib": [round(float(g[1]), 3) for g in gathered],
                    "loss": float(loss.detach()),
                    "rank0_peak_allocated_by_phase_gib": phases,
                    "gradient_checkpointing_active": bool(model.training and model.is_gradient_checkpointing),
                }
            )
        )
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------- runs
def estimate(
    shape: str, method: str, seq: int, batch: int, world: int, zero: int, offload: bool = False, backend: str = "trl"
) -> dict[str, Any] | None:
    """estimate_memory for the shape (catalog name of the real model), or None for the tiny smoke model."""
    name = {"llama-3.2-1b": "meta-llama/Llama-3.2-1B", "llama-3.2-3b": "meta-llama/Llama-3.2-3B"}.get(shape)
    if name is None:
        return None
    from tools.memory import estimate_memory
    from tools.memory_settings import MemoryInput

    r = estimate_memory(MemoryInput(model=name, task=method, backend=backend, seq_len=seq, batch_size=batch,
                                    gradient_checkpointing=True, num_gpus=world, zero_stage=zero or None,
                                    cpu_offload=offload),
                        with_plan=False)  # fmt: skip
    return {"estimate_gib": r.total_gib, "estimate_breakdown_gib": r.breakdown_gib.model_dump()}


def run_one(args: argparse.Namespace, part: str, runner: str, world: int, ckpt: Path, data: Path) -> dict[str, Any]:
    """One (part, runner, world size) under torchrun; returns the JSONL row (``error`` when it failed)."""
    shape = args.ddp_shape if part == "ddp" else args.fsdp_shape
    offload = part == "fsdp-offload"
    method, batch = ("lora", args.ddp_batch) if part == "ddp" else ("full", args.fsdp_batch)
    if offload:  # a CPU optimizer step per step: fewer of them
        args = argparse.Namespace(**{**vars(args), "steps": args.offload_steps, "warmup": min(args.warmup, 2)})
    job = args.work / "jobs" / f"{part}-{runner}-w{world}"
    job.mkdir(parents=True, exist_ok=True)
    for f in ("metrics.jsonl", "result.json"):
        (job / f).unlink(missing_ok=True)
    if runner == "payload":
        cfg = {"model": str(ckpt), "dataset": str(data), "dataset_format": "text", "method": method,
               "backend": "trl", "max_seq_length": args.seq, "max_steps": args.warmup + args.steps,
               "learning_rate": 1e-5, "per_device_batch_size": batch, "gradient_accumulation_steps": 1,
               "save_steps": 0, "logging_steps": 1, "optim": "adamw_torch", "gradient_checkpointing": True,
               "strategy": "ddp" if part == "ddp" else "fsdp", "cpu_offload": offload,
               "target_modules": TARGETS}  # fmt: skip
        if method == "full":
            cfg.pop("target_modules")
        (job / "job_config.json").write_text(json.dumps(cfg))
        script = [str(PAYLOAD), "--config", str(job / "job_config.json"), "--job-dir", str(job)]
    else:
        cfg = {
            "model": str(ckpt),
            "mode": "ddp" if part == "ddp" else "fsdp",
            "offload": offload,
            "seq": args.seq,
            "batch": batch,
            "steps": args.steps,
            "warmup": args.warmup,
        }
        (job / "job_config.json").write_text(json.dumps(cfg))
        script = [str(Path(__file__).resolve()), "torch-worker", str(job / "job_config.json"), str(job / "result.json")]
    argv = torchrun_argv(sys.executable, script, nproc_per_node=world, log_dir=str(job / "torchrun"))
    row: dict[str, Any] = {"part": part, "runner": runner, "shape": shape, "method": method, "world_size": world,
                           "seq": args.seq, "batch_per_gpu": batch, "steps": args.steps, "warmup": args.warmup,
                           "strategy": "ddp" if part == "ddp" else "fsdp full_shard" + (" cpu_offload" if offload else ""),
                           "command": argv}  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        "WANDB_DISABLED": "true",
    }
    t0 = time.time()
    with (job / "output.log").open("w") as log:
        try:
            rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=job, env=env,
                                timeout=args.run_timeout).returncode  # fmt: skip
        except subprocess.TimeoutExpired:
            rc = -9
    row["wall_s"] = round(time.time() - t0, 1)
    try:
        if rc != 0:
            tail = (job / "output.log").read_text(errors="replace").strip().splitlines()[-4:]
            raise RuntimeError(f"exit {rc}: {' | '.join(tail)}"[:800])
        if runner == "payload":
            rows = [json.loads(x) for x in (job / "metrics.jsonl").read_text().splitlines()]
            times = [(r["step"], r["time"]) for r in rows if r.get("event") == "log" and "loss" in r]
            times = times[args.warmup :]
            steps = times[-1][0] - times[0][0]
            dt = times[-1][1] - times[0][1]
            row["tokens_per_s"] = round(world * batch * args.seq * steps / dt, 1) if dt > 0 else None
            end = rows[-1]
            row["peak_reserved_gib"] = [end.get("gpu_mem_peak_reserved_gib")]  # rank 0 (FSDP ranks are alike)
            row["peak_allocated_gib"] = [end.get("gpu_mem_peak_allocated_gib")]
        else:
            res = json.loads((job / "result.json").read_text())
            keys = (
                "tokens_per_s",
                "peak_reserved_gib",
                "peak_allocated_gib",
                "step_s",
                "rank0_peak_allocated_by_phase_gib",
                "gradient_checkpointing_active",
            )
            row.update({k: res[k] for k in keys})
        # the payload is TRL's SFTTrainer (fused LM head); the reference loop a plain transformers loop
        backend = "trl" if runner == "payload" else "hf"
        est = estimate(shape, method, args.seq, batch, world, 0 if part == "ddp" else 3, offload, backend)
        if est is not None:
            row.update(est)
            peak = max(x for x in row["peak_reserved_gib"] if x is not None) if row["peak_reserved_gib"] else None
            if peak:  # nvidia-smi's view = allocator reserve + the CUDA context the estimate also counts
                row["measured_gib"] = round(peak + est["estimate_breakdown_gib"]["cuda_context"], 2)
                row["estimate_error_pct"] = round(
                    100 * (est["estimate_gib"] - row["measured_gib"]) / row["measured_gib"], 1
                )
    except (OSError, ValueError, KeyError, IndexError, RuntimeError) as exc:
        row["error"] = str(exc)
    return row


def main() -> int:
    """Build checkpoints, then DDP 1 vs 2 GPUs and FSDP on 2, for each runner, until the deadline."""
    if len(sys.argv) == 4 and sys.argv[1] == "torch-worker":
        torch_worker(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, required=True, help="scratch dir for checkpoints and job dirs")
    p.add_argument("--out", type=Path, required=True, help="dir for multigpu_gpu.jsonl")
    p.add_argument("--smoke", action="store_true", help="CPU (gloo), tiny model, 3 steps: checks the wiring")
    p.add_argument("--parts", default="ddp,fsdp")
    p.add_argument("--runners", default="torch,payload")
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--seq", type=int, default=2048)
    p.add_argument("--ddp-shape", default="llama-3.2-1b")
    p.add_argument("--ddp-batch", type=int, default=4)
    p.add_argument("--fsdp-shape", default="llama-3.2-3b")
    p.add_argument("--fsdp-batch", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--offload-steps", type=int, default=6, help="measured steps of the fsdp-offload part")
    p.add_argument("--run-timeout", type=int, default=240)
    p.add_argument("--deadline-s", type=float, default=1e9, help="start no new run after this many seconds")
    args = p.parse_args()
    if args.smoke:
        args.ddp_shape = args.fsdp_shape = "tiny"
        args.seq, args.ddp_batch, args.fsdp_batch, args.steps, args.warmup, args.offload_steps = 64, 2, 2, 3, 1, 3
    t_start = time.time()
    args.work.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "multigpu_gpu.jsonl"
    env = environment(("torch", "transformers", "trl", "peft", "accelerate", "datasets"))
    print(json.dumps(env), flush=True)
    data = build_dataset(args.work, args.seq * 2)
    parts = [x for x in args.parts.split(",") if x]
    runners = [x for x in args.runners.split(",") if x]
    ckpts = {part: build_checkpoint(args.work, args.ddp_shape if part == "ddp" else args.fsdp_shape) for part in parts}
    plan = []
    for part in parts:
        worlds = [1, args.gpus] if part == "ddp" else [args.gpus]
        plan += [(part, runner, w) for runner in runners for w in worlds]
    for part, runner, world in plan:
        if time.time() - t_start > args.deadline_s:
            print(f"deadline: skipping {part} {runner} x{world}", flush=True)
            continue
        row = run_one(args, part, runner, world, ckpts[part], data)
        row.update(env=env, smoke=args.smoke, time=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        with out.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("env", "command", "step_s")}), flush=True)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    for runner in runners:
        one = [
            r
            for r in rows
            if r["part"] == "ddp"
            and r["runner"] == runner
            and r["world_size"] == 1
            and r.get("tokens_per_s")
            and r.get("smoke") == args.smoke
        ]
        two = [
            r
            for r in rows
            if r["part"] == "ddp"
            and r["runner"] == runner
            and r["world_size"] == args.gpus
            and r.get("tokens_per_s")
            and r.get("smoke") == args.smoke
        ]
        if one and two:
            ratio = two[-1]["tokens_per_s"] / one[-1]["tokens_per_s"]
            print(
                f"DDP scaling ({runner}): {args.gpus} GPUs / 1 GPU = {ratio:.2f}x "
                f"({two[-1]['tokens_per_s']:.0f} vs {one[-1]['tokens_per_s']:.0f} tokens/s)",
                flush=True,
            )
    return 0 if all("error" not in r for r in rows[-len(plan) :]) else 1


if __name__ == "__main__":
    sys.exit(main())
