"""CPU check of the static per-rank memory of sharded full fine-tunes against estimate_memory.

Why: estimate_memory's ZeRO / FSDP model (which of weights, gradients and optimizer states are
divided by num_gpus, fp32 master weights or not) was so far only checked through whole-GPU peaks
(bench/multigpu_gpu.py), where activations, allocator slack and CUDA context blur the static
parts. Here the real engines run on CPU under torchrun (gloo, 2 ranks) and every rank adds up the
bytes of the tensors it actually holds, after one warm-up step, at two points of the second step:
``after_backward`` (gradients reduced and sharded, optimizer states exist) and ``optimizer_step``
(a pre-hook on the inner torch AdamW: DeepSpeed has by then made its fp32 copy of the gradient
partition, reported as ``grad_step_copy``). Categories: local parameter shards, gradient shards /
buffers, fp32 master copies, Adam's exp_avg and exp_avg_sq, the engine's communication buckets,
and anything else alive that the garbage collector reaches (meta tensors skipped). Storages are
deduplicated (a view into a flat buffer counts the buffer once, in the first category that claims
it), so the numbers are what the process holds, padding included.

Engines (each its own torchrun launch):

  fsdp2        FSDP2 fully_shard per decoder layer + root, fp32 parameters (as bench/multigpu_gpu.py's
               torch loop: fp32 shards are the master weights), torch AdamW.
  zero3        DeepSpeed ZeRO-3, bf16 (the estimator's default training setup: bf16 weights, fp32
               master + Adam states in the optimizer), torch AdamW as the client optimizer.
  zero2        DeepSpeed ZeRO-2, bf16, same.
  zero3-fp32   DeepSpeed ZeRO-3 without bf16 (fp32 weights, like the FSDP2 run).

DeepSpeed bucket sizes are what the HF Trainer integration fills in for "auto"
(reduce_bucket_size = hidden^2, stage3_prefetch_bucket_size = 0.9 hidden^2,
stage3_param_persistence_threshold = 10 hidden); the reduce bucket is a real, static buffer the
estimator does not model, reported as ``comm_buffers``.

The parent then calls the estimator (tools.memory) for the same checkpoint directory,
num_gpus=2, zero_stage 3 or 2, task full, backend hf, both as the GPU bench calls it (dtype
bfloat16) and with the dtype the run used, and prints measured vs estimated GiB per category.
The estimator's weights for stage 3 add 2 x the largest layer (gathered layer + prefetch), a
transient that is gone once the step ends, so the static comparison uses the shards alone (both
are printed). Activations, logits, CUDA context and allocator overhead are out of scope on CPU.
Rows are appended to bench/data/fsdp_shards_cpu.jsonl.

Found (torch 2.13, DeepSpeed 0.19.8): after backward every engine matches the estimator's
per-category bytes (<= 1.3 %) once its dtype matches, except FSDP2 with fp32 parameters, whose
optimizer holds Adam's 8 B/param (the fp32 shards are the master) where the estimator counts
12 B/param for any zero_stage >= 1. Inside DeepSpeed's step() an fp32 copy of the gradient
partition (4 B/param / N) is live as well, beyond the estimator's gradients (ZeRO-3 keeps its
persistent gradient buffer alongside it; ZeRO-2 frees its bf16 gradients first).

  .venv/bin/python bench/fsdp_shards_cpu.py --work /tmp/fsdp-shards            # all four engines
  .venv/bin/python bench/fsdp_shards_cpu.py --work /tmp/fsdp-shards --engines fsdp2,zero3

Needs torch, transformers, deepspeed (no compiled ops: torch AdamW). A ~156M-parameter model,
2 ranks: a few minutes and < 8 GiB of RAM on a 2-core VM.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GIB = 2**30
ENGINES = ("fsdp2", "zero3", "zero2", "zero3-fp32")
CATEGORIES = (
    "weights",
    "gradients",
    "grad_step_copy",
    "master_weights",
    "optimizer_states",
    "comm_buffers",
    "other_live",
)
SHAPE = {"hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 8, "num_attention_heads": 16,
         "num_key_value_heads": 4, "vocab_size": 32000, "max_position_embeddings": 2048,
         "tie_word_embeddings": False}  # fmt: skip
POINTS = ("after_backward", "optimizer_step")
DATA = ROOT / "bench" / "data" / "fsdp_shards_cpu.jsonl"


# ------------------------------------------------------------------------------------ checkpoint
def build_checkpoint(work: Path) -> Path:
    """Random-init Llama-shaped bf16 checkpoint (~156M parameters), built once per work dir."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = work / "llama-156m"
    if (out / "config.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**SHAPE)).to(torch.bfloat16)
    model.save_pretrained(str(out))
    return out


# -------------------------------------------------------------------------------- measurement
def _tensors(obj: Any) -> Iterator[Any]:
    """Every tensor in obj (a tensor, None, or nested lists / tuples / dicts of them)."""
    import torch

    if obj is None:
        return
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            yield from _tensors(v)


def _local(t: Any) -> Any:
    """The local shard of a DTensor, the tensor itself otherwise."""
    from torch.distributed.tensor import DTensor

    return t.to_local() if isinstance(t, DTensor) else t


class Ledger:
    """Bytes per category, each storage counted once, in the first category that claims it."""

    def __init__(self) -> None:
        self.seen: set[int] = set()
        self.bytes: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.count: dict[str, int] = dict.fromkeys(CATEGORIES, 0)
        self.other: list[tuple[int, str]] = []  # (bytes, "dtype shape") of the unclaimed storages

    def claim(self, category: str, tensors: Iterable[Any]) -> None:
        for t in tensors:
            t = _local(t)
            if t.device.type == "meta":  # DeepSpeed keeps shape-only copies; no memory behind them
                continue
            s = t.untyped_storage()
            n = s.nbytes()
            if n == 0 or s.data_ptr() in self.seen:
                continue
            self.seen.add(s.data_ptr())
            self.bytes[category] += n
            self.count[category] += 1
            if category == "other_live":
                self.other.append((n, f"{t.dtype} {tuple(t.shape)}"))

    def claim_rest(self) -> None:
        """Anything else alive that Python can reach (model buffers, inputs, engine leftovers)."""
        import torch

        gc.collect()
        self.claim("other_live", (o for o in gc.get_objects() if isinstance(o, torch.Tensor)))

    def row(self) -> dict[str, Any]:
        top = [f"{n / 2**20:.1f} MiB {d}" for n, d in sorted(self.other, reverse=True)[:3]]
        return {"bytes": self.bytes, "tensors": self.count, "other_live_top": top}


def measure_fsdp2(model: Any, opt: Any) -> Ledger:
    led = Ledger()
    params = list(model.parameters())
    led.claim("weights", params)
    led.claim("gradients", (p.grad for p in params if p.grad is not None))
    led.claim("optimizer_states", _tensors([opt.state[p] for p in params if p in opt.state]))
    led.claim_rest()
    return led


def measure_zero(engine: Any, stage: int) -> Ledger:
    led = Ledger()
    zo = engine.optimizer  # DeepSpeedZeroOptimizer(_Stage3); zo.optimizer is the client torch AdamW
    params = list(engine.module.parameters())
    if stage == 3:
        led.claim("weights", (p.ds_tensor for p in params))  # views into lp_param_buffer
        led.claim("weights", _tensors(zo.fp16_partitioned_groups_flat))
        led.claim("weights", (p.data for p in params))  # persisted (unpartitioned) small parameters
        led.claim("comm_buffers", (b.buffer for b in zo.ipg_buckets.values()))
        led.claim("gradients", [zo.grad_partitions_flat_buffer])
        led.claim("gradients", _tensors(zo.averaged_gradients))
        masters = zo.fp32_partitioned_groups_flat
    else:
        led.claim("weights", _tensors(zo.bit16_groups_flat))
        led.claim("weights", (p.data for p in params))
        led.claim("comm_buffers", _tensors([b.buffer for b in zo.ipg_buckets.values()]))
        led.claim("gradients", _tensors(getattr(zo, "grads_in_partition", None)))
        led.claim("gradients", _tensors(zo.averaged_gradients))
        led.claim("gradients", (p.grad for p in params if p.grad is not None))
        masters = zo.single_partition_of_fp32_groups
    led.claim("grad_step_copy", (t.grad for t in masters if t.grad is not None))  # fp32 grads made in step()
    led.claim("master_weights", _tensors(masters))
    led.claim("optimizer_states", _tensors(list(zo.optimizer.state.values())))
    led.claim_rest()
    return led


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------------------------ worker
def worker(engine_name: str, cfg_path: Path, out_path: Path) -> None:
    """One rank: build the engine, warm-up step, measured step; rank 0 writes the result."""
    import torch
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(1)
    cfg = json.loads(cfg_path.read_text())
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    seq, batch = cfg["seq"], cfg["batch"]
    gen = torch.Generator().manual_seed(rank)
    t0 = time.perf_counter()
    if engine_name == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        dist.init_process_group("gloo")
        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.float32)
        for layer in model.model.layers:
            fully_shard(layer)
        fully_shard(model)
        inner = torch.optim.AdamW(model.parameters(), lr=1e-5)

        def measure() -> Ledger:
            return measure_fsdp2(model, inner)

        def step() -> None:
            ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
            model(input_ids=ids, labels=ids).loss.backward()
            if armed:
                points["after_backward"] = measure()
            inner.step()
            inner.zero_grad(set_to_none=True)

    else:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")
        stage = 2 if engine_name == "zero2" else 3
        bf16 = engine_name != "zero3-fp32"
        model = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.bfloat16 if bf16 else torch.float32)
        h = model.config.hidden_size
        zero: dict[str, Any] = {"stage": stage, "contiguous_gradients": True, "overlap_comm": False,
                                "reduce_bucket_size": h * h}  # fmt: skip
        if stage == 3:
            zero |= {"stage3_prefetch_bucket_size": int(0.9 * h * h), "stage3_param_persistence_threshold": 10 * h}
        ds_cfg = {"train_micro_batch_size_per_gpu": batch, "gradient_accumulation_steps": 1, "bf16": {"enabled": bf16},
                  "zero_optimization": zero, "zero_allow_untested_optimizer": True, "steps_per_print": 10**9}  # fmt: skip
        cfg["ds_config"] = ds_cfg
        eng, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=1e-5),
                                       config=ds_cfg)  # fmt: skip
        inner = eng.optimizer.optimizer

        def measure() -> Ledger:
            return measure_zero(eng, stage)

        def step() -> None:
            ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=gen)
            eng.backward(eng(input_ids=ids, labels=ids).loss)
            if armed:
                points["after_backward"] = measure()
            eng.step()

    points: dict[str, Ledger] = {}
    armed = False

    def pre_step(*_: Any) -> None:  # the inner torch AdamW is about to update: gradients and states all live
        if armed and "optimizer_step" not in points:
            points["optimizer_step"] = measure()

    inner.register_step_pre_hook(pre_step)
    t_init = time.perf_counter() - t0
    steps: list[float] = []
    for armed in (False, True):  # noqa: B007 (read by step() and pre_step())
        t = time.perf_counter()
        step()
        steps.append(round(time.perf_counter() - t, 1))
    mine = torch.tensor([points[p].bytes[c] for p in POINTS for c in CATEGORIES] + [_rss_bytes()], dtype=torch.float64)
    gathered = [torch.zeros_like(mine) for _ in range(world)]
    dist.all_gather(gathered, mine)
    if rank == 0:
        n = len(CATEGORIES)
        per_rank = {p: [{c: int(g[k * n + i]) for i, c in enumerate(CATEGORIES)} for g in gathered]
                    for k, p in enumerate(POINTS)}  # fmt: skip
        out_path.write_text(json.dumps({
            "engine": engine_name, "world_size": world, "seq": seq, "batch": batch, "bytes_per_rank": per_rank,
            "rank0_detail": {p: points[p].row() for p in POINTS},
            "rss_bytes_per_rank": [int(g[-1]) for g in gathered],
            "init_s": round(t_init, 1), "step_s": steps, "worker_s": round(time.perf_counter() - t0, 1),
            "ds_config": cfg.get("ds_config"),
        }))  # fmt: skip
    dist.barrier()
    dist.destroy_process_group()


# ------------------------------------------------------------------------------------ parent
def estimate(model_dir: Path, zero: int, dtype: str, mp: str | None, seq: int, batch: int) -> dict[str, Any]:
    """estimate_memory's breakdown (rounded, public) plus the unrounded static parts from the same core."""
    from tools.memory import estimate_memory
    from tools.memory_core import breakdown_bytes
    from tools.memory_settings import MemoryInput, resolve_settings
    from tools.models import resolve_model

    inp = MemoryInput(model=str(model_dir), task="full", backend="hf", seq_len=seq, batch_size=batch,
                      gradient_checkpointing=True, num_gpus=2, zero_stage=zero, dtype=dtype,  # type: ignore[arg-type]
                      mixed_precision=mp)  # type: ignore[arg-type]  # fmt: skip
    r = estimate_memory(inp, with_plan=False)
    arch = resolve_model(str(model_dir))
    parts = breakdown_bytes(arch, resolve_settings(inp, arch))
    wbytes = 4 if dtype == "float32" else 2
    largest = (arch.attn_params() + arch.mlp_params(arch.num_layers - 1)[0]) * wbytes
    gathered = 2 * largest if zero >= 3 else 0
    return {
        "input": {"dtype": dtype, "mixed_precision": mp, "zero_stage": zero, "num_gpus": 2},
        "breakdown_gib": r.breakdown_gib.model_dump(), "params": r.params.model_dump(),
        "weights_bytes": parts.weights, "gathered_layer_bytes": gathered,
        "weights_shards_bytes": parts.weights - gathered, "gradients_bytes": parts.gradients,
        "optimizer_states_bytes": parts.optimizer_states,
    }  # fmt: skip


def compare(meas: dict[str, Any], est: dict[str, Any]) -> list[dict[str, Any]]:
    """Measured (max over ranks, at both points) vs estimated bytes per category the estimator models."""
    rows: dict[str, dict[str, Any]] = {}
    for point, ranks in meas["bytes_per_rank"].items():
        w = {c: max(r[c] for r in ranks) for c in CATEGORIES}
        vals = {
            "weights (shards)": (w["weights"], est["weights_shards_bytes"]),
            "gradients": (w["gradients"] + w["grad_step_copy"], est["gradients_bytes"]),
            "optimizer (master + Adam)": (w["master_weights"] + w["optimizer_states"], est["optimizer_states_bytes"]),
        }
        vals["static total"] = (sum(m for m, _ in vals.values()), sum(e for _, e in vals.values()))
        for name, (m, e) in vals.items():
            r = rows.setdefault(name, {"category": name, "estimated_gib": round(e / GIB, 4)})
            r[f"{point}_gib"] = round(m / GIB, 4)
            r[f"{point}_error_pct"] = round(100 * (e - m) / m, 1) if m else None
    return list(rows.values())


def run_engine(args: argparse.Namespace, engine: str, model_dir: Path) -> tuple[dict[str, Any], list[str], float]:
    job = args.work / "jobs" / engine
    job.mkdir(parents=True, exist_ok=True)
    cfg, out = job / "cfg.json", job / "result.json"
    out.unlink(missing_ok=True)
    cfg.write_text(json.dumps({"model": str(model_dir), "seq": args.seq, "batch": args.batch}))
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
            str(Path(__file__).resolve()), "worker", engine, str(cfg), str(out)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "PYTHONWARNINGS": "ignore::FutureWarning"}  # fmt: skip
    t = time.perf_counter()
    with (job / "log.txt").open("w") as log:
        p = subprocess.run(argv, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.timeout, check=False)
    wall = time.perf_counter() - t
    if p.returncode != 0 or not out.exists():
        tail = (job / "log.txt").read_text()[-3000:]
        return {"error": f"exit {p.returncode}", "log_tail": tail}, argv, wall
    return json.loads(out.read_text()), argv, wall


def versions() -> dict[str, str]:
    import deepspeed
    import torch
    import transformers

    return {"torch": torch.__version__, "deepspeed": deepspeed.__version__, "transformers": transformers.__version__,
            "python": platform.python_version()}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/fsdp-shards"))
    ap.add_argument("--engines", default=",".join(ENGINES))
    ap.add_argument("--seq", type=int, default=32)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--timeout", type=int, default=900, help="seconds per engine launch")
    ap.add_argument("--out", type=Path, default=DATA)
    args = ap.parse_args()
    t_start = time.perf_counter()
    args.work.mkdir(parents=True, exist_ok=True)
    model_dir = build_checkpoint(args.work)
    ver = versions()
    machine = {"nproc": os.cpu_count(), "desc": "2-core CPU VM, no GPU", "platform": platform.platform()}
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    print(f"model {model_dir}; {ver}; {machine}", flush=True)
    rows: list[dict[str, Any]] = []
    for engine in args.engines.split(","):
        if engine not in ENGINES:
            raise SystemExit(f"unknown engine {engine!r}; use {ENGINES}")
        meas, argv, wall = run_engine(args, engine, model_dir)
        zero = 2 if engine == "zero2" else 3
        run_dtype = "float32" if engine in ("fsdp2", "zero3-fp32") else "bfloat16"
        ests = {
            "as_gpu_bench (dtype bfloat16, mp bf16)": estimate(model_dir, zero, "bfloat16", None, args.seq, args.batch)
        }
        if run_dtype == "float32":
            ests["matched (dtype float32, mp none)"] = estimate(
                model_dir, zero, "float32", "none", args.seq, args.batch
            )
        if engine == "fsdp2":  # what FSDP2 on GPU is: fp32 shards + bf16 MixedPrecisionPolicy (same static state)
            ests["fp32 + bf16 autocast (dtype float32, mp bf16)"] = estimate(
                model_dir, zero, "float32", "bf16", args.seq, args.batch
            )
        row: dict[str, Any] = {"bench": "fsdp_shards_cpu", "engine": engine, "run_dtype": run_dtype,
                               "world_size": 2, "zero_stage": zero, "command": command, "torchrun": argv,
                               "wall_s": round(wall, 1), "versions": ver, "machine": machine,
                               "shape": SHAPE, "measured": meas, "estimates": ests,
                               "comparison": {k: compare(meas, e) for k, e in ests.items()} if "error" not in meas
                               else None, "ts": time.strftime("%Y-%m-%dT%H:%M:%S")}  # fmt: skip
        rows.append(row)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"\n=== {engine} (ZeRO-{zero} equivalent, {run_dtype} params, world 2, {wall:.0f} s)", flush=True)
        if "error" in meas:
            print(f"FAILED: {meas['error']}\n{meas['log_tail']}", flush=True)
            continue
        for point, ranks in meas["bytes_per_rank"].items():
            for r, b in enumerate(ranks):
                print(f"  {point:14s} rank {r} MiB: " + ", ".join(f"{c} {b[c] / 2**20:.1f}" for c in CATEGORIES))
        for name, cmp in row["comparison"].items():
            e = ests[name]
            print(
                f"  estimator {name}: breakdown_gib weights {e['breakdown_gib']['weights']} (incl. "
                f"{e['gathered_layer_bytes'] / GIB:.4f} gathered layer+prefetch), gradients "
                f"{e['breakdown_gib']['gradients']}, optimizer_states {e['breakdown_gib']['optimizer_states']}"
            )
            print(
                f"    {'GiB per rank':26s} {'estimate':>9s} {'after bwd':>10s} {'err %':>7s} {'opt step':>9s} {'err %':>7s}"
            )
            for c in cmp:
                errs = ["n/a" if c[f"{p}_error_pct"] is None else f"{c[f'{p}_error_pct']:+.1f}" for p in POINTS]
                print(f"    {c['category']:26s} {c['estimated_gib']:9.4f} {c['after_backward_gib']:10.4f} {errs[0]:>7s}"
                      f" {c['optimizer_step_gib']:9.4f} {errs[1]:>7s}")  # fmt: skip
        sys.stdout.flush()
    print(f"\nactivations, logits, CUDA context and allocator overhead: out of scope on CPU. "
          f"total wall {time.perf_counter() - t_start:.0f} s; rows appended to {args.out}", flush=True)  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        worker(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
