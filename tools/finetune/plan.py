"""The fine-tune plan: GPUs and ranks, backend, strategy, batch arithmetic and the memory estimate.

Every decision about a fine-tune before its job is built is made here, from the request, the host's
config and the host's GPUs (``tools/hosts.py host_gpus``): what cannot run is refused with the reason
and the fix, what can is planned with the estimator (``tools/memory.py``, ``tools/plan.py``) as the
proof. ``strategy='auto'`` is DDP when the model, its gradients and optimizer states fit one GPU, else
FSDP full_shard (``zero_stage=3`` in the estimate); the package docstring says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runners.accelerators import GpuTier
from runners.config import HostConfig
from runners.errors import DoesNotFit, InvalidInput, NotFound
from tools.finetune.defaults import DEFAULTS
from tools.finetune.inputs import ZERO_STAGE, FinetuneInput, FinetunePlan, classify_dataset
from tools.finetune.spec import DEFAULT_OPTIMIZER
from tools.hosts import HostGpus, host_gpus
from tools.memory_core import breakdown_bytes
from tools.memory_settings import MemoryInput, resolve_settings
from tools.models import ModelArch, resolve_model
from tools.plan import TRAIN_RESERVE, Plan, plan_training

__all__ = ["plan_finetune"]

GIB = 1024**3
Fit = Callable[[int, bool], Plan | None]


@dataclass(frozen=True)
class _Shape:
    """Where the job runs: GPUs per node, ranks per node and in all, the tier and its memory per GPU."""

    gpus: int
    per_node: int
    world: int
    tier: GpuTier | None
    mem_gib: float | None

    @property
    def distributed(self) -> bool:
        return self.world > 1


@dataclass
class _Sizing:
    """What the plan settles: micro-batch, checkpointing, optimizer, strategy, and the estimate behind them."""

    batch: int
    ckpt: bool
    optimizer: str = DEFAULT_OPTIMIZER
    estimate_gib: float | None = None
    strategy: str | None = None
    zero: int = 0
    params: int | None = None
    trainable: int | None = None


def _world(p: FinetuneInput, host: HostConfig, gpus: int) -> tuple[int, int]:
    """(ranks per node, world size); refuses shapes the host cannot run."""
    if p.nodes > 1 and host.launcher != "slurm":
        raise InvalidInput(
            f"nodes={p.nodes}: host {host.name} runs jobs directly on one machine.",
            "Use nodes=1 here, or a SLURM host for multi-node jobs.",
        )
    if gpus > 0 and p.processes_per_node not in (None, gpus):
        raise InvalidInput(
            f"processes_per_node={p.processes_per_node} with gpus={gpus}: torchrun runs one process per GPU.",
            "Leave processes_per_node unset on GPU hosts.",
        )
    per_node = gpus if gpus > 0 else (p.processes_per_node or 1)
    return per_node, per_node * p.nodes


def _auto_strategy(
    p: FinetuneInput, arch: ModelArch | None, tier: GpuTier | None, world: int, fit: Fit
) -> tuple[str, list[str]]:
    """DDP when model + optimizer fit one GPU, else FSDP (ZeRO-3 sharding); the estimate is the proof."""
    if p.strategy != "auto":
        return p.strategy, [f"strategy {p.strategy} as asked."]
    if p.method == "qlora":
        return "ddp", [
            "strategy auto -> ddp: QLoRA's 4-bit base is replicated per GPU (FSDP would need "
            "bnb_4bit_quant_storage and gains little at this size)."
        ]
    if arch is None or tier is None:
        st = "fsdp" if p.method == "full" else "ddp"
        return st, [
            f"strategy auto -> {st}: no GPU tier or model architecture to estimate with, so the "
            f"{'sharded' if st == 'fsdp' else 'replicated'} default for a {p.method} fine-tune."
        ]
    one = fit(0, False)
    if one is not None and not p.cpu_offload:
        return "ddp", [
            f"strategy auto -> ddp: {p.method} needs {one.estimated_gib:.1f} GiB per GPU with a full "
            f"replica (estimate_memory num_gpus={world}, zero_stage=0), which fits one {tier.id} "
            f"({tier.memory_gib:.0f} GiB): DDP, no parameter traffic."
        ]
    sharded = fit(3, p.cpu_offload)
    if sharded is not None:
        why = (
            f"a full replica does not fit one {tier.id} ({tier.memory_gib:.0f} GiB)"
            if one is None
            else "cpu_offload asks for a sharded strategy"
        )
        return "fsdp", [
            f"strategy auto -> fsdp: {why}; FSDP full_shard across {world} GPUs needs "
            f"{sharded.estimated_gib:.1f} GiB per GPU (estimate_memory num_gpus={world}, zero_stage=3"
            f"{', cpu_offload' if p.cpu_offload else ''})."
        ]
    return "fsdp", []  # does not fit: plan_finetune says why


def _shape(p: FinetuneInput, host: HostConfig, g: HostGpus) -> _Shape:
    """GPUs per node (default: 1 where the host has any), ranks; refuses more GPUs than the host has."""
    available = g.count or 0
    gpus = p.gpus if p.gpus is not None else (1 if available else 0)
    if available and gpus > available:
        raise InvalidInput(
            f"Host {host.name} has {available} GPU(s); {gpus} were asked for.", f"Use gpus <= {available}."
        )
    per_node, world = _world(p, host, gpus)
    return _Shape(gpus=gpus, per_node=per_node, world=world, tier=g.tier, mem_gib=g.memory_gib)


def _refuse_unrunnable(p: FinetuneInput, host: HostConfig, shape: _Shape) -> None:
    """Backend, method and strategy combinations this host shape cannot run, each with its fix."""
    gpus, distributed = shape.gpus, shape.distributed
    if gpus == 0 and p.backend == "unsloth":
        raise InvalidInput(
            f"Unsloth needs a CUDA GPU; host {host.name} has none (or gpus=0).",
            "Use backend 'auto' or 'trl' (TRL + PEFT runs on the CPU, slowly), or a GPU host.",
        )
    if distributed and p.backend == "unsloth":
        raise InvalidInput(
            "Unsloth 2026.10.9 has no official multi-GPU support (its docs call DDP a manual recipe).",
            "Use backend 'auto' or 'trl': multi-GPU jobs run TRL + accelerate under torchrun.",
        )
    if gpus == 0 and p.method == "qlora":
        raise InvalidInput(
            "QLoRA's 4-bit base needs a CUDA GPU for training.", "Use method 'lora' on a CPU host, or a GPU host."
        )
    if distributed and p.method == "qlora" and p.strategy in ("fsdp", "deepspeed-zero3"):
        raise InvalidInput(
            f"QLoRA with {p.strategy} is not supported here (the 4-bit base does not shard as planned).",
            "Use strategy 'ddp' or 'deepspeed-zero2' (or 'auto') for QLoRA.",
        )
    if not distributed and (p.strategy not in ("auto", "ddp") or p.cpu_offload):
        raise InvalidInput(
            f"strategy {p.strategy}{' with cpu_offload' if p.cpu_offload else ''} shards across processes; "
            "this job has one.",
            "Use gpus >= 2 (or nodes >= 2), or leave strategy on 'auto'.",
        )


def _backend(p: FinetuneInput, shape: _Shape) -> tuple[str, list[str]]:
    """unsloth or trl, as the payload will decide it (``auto``: Unsloth on one GPU if it imports)."""
    one_gpu = shape.gpus > 0 and not shape.distributed
    backend = "unsloth" if (p.backend == "unsloth" or (p.backend == "auto" and one_gpu)) else "trl"
    notes: list[str] = []
    if p.backend == "auto" and one_gpu:
        notes.append("backend auto: Unsloth if it imports on the host, else TRL + PEFT (the payload decides).")
    if shape.distributed and p.backend == "auto":
        notes.append(
            f"backend auto -> trl: {shape.world} ranks under torchrun use TRL + accelerate; Unsloth "
            "(2026.10.9) supports one GPU officially."
        )
    return backend, notes


def _fit(p: FinetuneInput, arch: ModelArch, mi: MemoryInput, shape: _Shape) -> Fit:
    """The plan at a sharding (zero stage, offload) if it fits with the requested method, else None."""

    def fit(zero_stage: int, offload: bool) -> Plan | None:
        if shape.tier is None or shape.gpus == 0:
            return None
        s = resolve_settings(mi.model_copy(update={"zero_stage": zero_stage or None, "cpu_offload": offload}), arch)
        pl = plan_training(arch, s, shape.tier, target_batch=p.target_effective_batch, max_gpus=shape.world)
        # As asked: a replica that fits only with 8-bit Adam loses to sharding with the real optimizer.
        return pl if pl.fits and pl.task == p.method and pl.optimizer == s.optimizer else None

    return fit


def _refuse_misfit(p: FinetuneInput, host: HostConfig, arch: ModelArch, shape: _Shape, plan: Plan, sz: _Sizing) -> None:
    """DoesNotFit, with every change that would make it fit, when the planner could not fit ``p.method``."""
    tier, distributed, zero = shape.tier, shape.distributed, sz.zero
    assert tier is not None
    where = f"{shape.world}x {tier.id}" + (f" ({sz.strategy})" if sz.strategy else "")
    if plan.task != p.method:
        raise DoesNotFit(
            f"{arch.name} {p.method} at seq {p.max_seq_length} does not fit {where} "
            f"({shape.mem_gib:.0f} GiB each) even at micro-batch 1 with checkpointing.",
            f"Use method '{plan.task}' (it fits: {plan.estimated_gib:.1f} GiB), a shorter max_seq_length, "
            + ("cpu_offload=true, more GPUs, " if distributed and not p.cpu_offload else "")
            + "or a host with a larger GPU.",
        )
    if not plan.fits:
        bigger = [t.id for t in _larger_tiers(tier, plan.estimated_gib)]
        raise DoesNotFit(
            f"{arch.name} {p.method} at seq {p.max_seq_length} does not fit: it needs about "
            f"{plan.estimated_gib:.1f} GiB per GPU on {where}; {host.name}'s {tier.id} has "
            f"{shape.mem_gib:.0f} GiB.",
            ("Use method 'qlora', " if p.method != "qlora" else "")
            + (
                "gpus >= 2 with strategy 'auto' (FSDP shards the model), "
                if not distributed and p.method == "full"
                else ""
            )
            + ("strategy 'fsdp', " if distributed and zero < 3 else "")
            + ("cpu_offload=true, " if distributed and not p.cpu_offload else "")
            + ("more GPUs or nodes (FSDP shards over all of them), " if distributed else "")
            + f"a shorter max_seq_length, or a larger GPU ({', '.join(bigger) or 'none larger'}).",
        )


def _adopt(p: FinetuneInput, arch: ModelArch, mi: MemoryInput, shape: _Shape, plan: Plan, sz: _Sizing) -> list[str]:
    """Take the planner's micro-batch, checkpointing and optimizer where the request says ``auto``; the
    estimate at the values taken must fit the GPU (a micro-batch given by hand may not)."""
    if p.per_device_batch_size == "auto":
        sz.batch = plan.micro_batch_size or sz.batch
    if p.gradient_checkpointing == "auto" and plan.gradient_checkpointing is not None:
        sz.ckpt = plan.gradient_checkpointing
    if plan.optimizer:
        sz.optimizer = plan.optimizer
    s2 = resolve_settings(
        mi.model_copy(update={"batch_size": sz.batch, "gradient_checkpointing": sz.ckpt, "optimizer": sz.optimizer}),
        arch,
    )
    sz.estimate_gib = breakdown_bytes(arch, s2).total() / GIB
    if shape.mem_gib is not None and sz.estimate_gib > shape.mem_gib:
        assert shape.tier is not None
        raise DoesNotFit(
            f"Micro-batch {sz.batch} needs about {sz.estimate_gib:.1f} GiB; {shape.tier.id} has {shape.mem_gib:.0f} GiB.",
            "Leave per_device_batch_size on 'auto', or lower it.",
        )
    return plan.notes


def _requested(p: FinetuneInput) -> _Sizing:
    """The sizing before any estimate: the request's values, the payload's defaults for ``auto``."""
    return _Sizing(
        batch=DEFAULTS["per_device_batch_size"] if p.per_device_batch_size == "auto" else p.per_device_batch_size,
        ckpt=DEFAULTS["gradient_checkpointing"] if p.gradient_checkpointing == "auto" else p.gradient_checkpointing,
    )


def _size(
    p: FinetuneInput, host: HostConfig, arch: ModelArch, shape: _Shape, backend: str
) -> tuple[_Sizing, list[str]]:
    """Strategy, micro-batch, checkpointing and optimizer from the estimate; refuses what does not fit."""
    sz = _requested(p)
    notes: list[str] = []
    mi = MemoryInput(
        model=p.model,
        task=p.method,
        backend="unsloth" if backend == "unsloth" else "trl",
        seq_len=p.max_seq_length,
        batch_size=sz.batch,
        gradient_checkpointing=sz.ckpt,
        lora_r=p.lora_r or DEFAULTS["lora_r"],
        lora_targets=p.target_modules,
        num_gpus=shape.world,
    )
    sz.params, _, _ = arch.param_counts()
    if shape.distributed:
        sz.strategy, why = _auto_strategy(p, arch, shape.tier, shape.world, _fit(p, arch, mi, shape))
        notes += why
        sz.zero = ZERO_STAGE[sz.strategy]
        mi = mi.model_copy(update={"zero_stage": sz.zero or None, "cpu_offload": p.cpu_offload})
    s = resolve_settings(mi, arch)
    if shape.tier is not None and shape.gpus > 0:
        plan = plan_training(arch, s, shape.tier, target_batch=p.target_effective_batch, max_gpus=shape.world)
        _refuse_misfit(p, host, arch, shape, plan, sz)
        notes += _adopt(p, arch, mi, shape, plan, sz)
    sz.trainable = sz.params if p.method == "full" else None
    return sz, notes


def _distributed_notes(p: FinetuneInput, host: HostConfig, shape: _Shape, strategy: str | None) -> list[str]:
    notes = []
    if strategy is not None and strategy.startswith("deepspeed"):
        notes.append(
            "DeepSpeed must be installed in the host's Python (pip install deepspeed); FSDP needs nothing beyond torch."
        )
    launcher = "srun + torchrun" if host.launcher == "slurm" and p.nodes > 1 else "torchrun"
    notes.append(
        f"{launcher}: {p.nodes} node(s) x {shape.per_node} rank(s) = {shape.world}; rank 0 writes metrics and "
        "outputs; a failure on any rank fails the job with that rank's error."
    )
    return notes


def plan_finetune(
    p: FinetuneInput, host: HostConfig, host_gpu: HostGpus | None = None
) -> tuple[FinetunePlan, Path | None]:
    """Plan the job; refuse what cannot work (does not fit, bad dataset, no GPU for Unsloth).

    ``host_gpu``: the host's GPUs (``tools/hosts.py host_gpus``, nvidia-smi's when its config names none);
    default: the config's. Returns the plan and the controller file to upload as the dataset (if any).
    """
    source, upload, check = classify_dataset(p.dataset, p.dataset_format)
    shape = _shape(p, host, host_gpu or host_gpus(host))
    _refuse_unrunnable(p, host, shape)
    backend, notes = _backend(p, shape)
    arch: ModelArch | None
    try:
        arch = resolve_model(p.model)
    except NotFound:
        arch = None
        notes.append("Model architecture unknown to the controller (host path or offline Hub id): no memory plan.")
    if arch is not None:
        sz, more = _size(p, host, arch, shape, backend)
        notes += more
    else:
        sz = _requested(p)
        if shape.distributed:
            sz.strategy, why = _auto_strategy(p, None, None, shape.world, lambda z, o: None)
            notes += why
            sz.zero = ZERO_STAGE[sz.strategy]
    if shape.distributed:
        notes += _distributed_notes(p, host, shape, sz.strategy)
    if p.gradient_accumulation_steps == "auto":
        ga = max(1, -(-p.target_effective_batch // (sz.batch * shape.world)))
    else:
        ga = p.gradient_accumulation_steps
    gpus, tier, mem_gib = shape.gpus, shape.tier, shape.mem_gib
    plan = FinetunePlan(
        backend=backend,
        method=p.method,
        gpu=tier.id if tier and gpus else None,
        gpus=gpus,
        nodes=p.nodes,
        world_size=shape.world,
        strategy=sz.strategy,
        zero_stage=sz.zero if shape.distributed else None,
        cpu_offload=p.cpu_offload,
        per_device_batch_size=sz.batch,
        gradient_accumulation_steps=ga,
        effective_batch=sz.batch * ga * shape.world,
        gradient_checkpointing=sz.ckpt,
        optimizer=sz.optimizer,
        max_seq_length=p.max_seq_length,
        estimated_peak_gib=round(sz.estimate_gib, 2) if sz.estimate_gib is not None else None,
        gpu_memory_gib=round(mem_gib, 2) if mem_gib and gpus else None,
        model_params=sz.params,
        trainable_params=sz.trainable,
        dataset_source=source,
        dataset_rows=check.rows if check is not None else None,
        dataset_format=check.format if check is not None else p.dataset_format,
        notes=notes,
    )
    return plan, upload


def _larger_tiers(tier: GpuTier, need_gib: float) -> list[GpuTier]:
    """Up to three GPU tiers with room for ``need_gib`` per GPU (the planner's 5 % reserve kept), smallest first.

    Only cards that would hold the estimate are named: an A100-80GB is 0.35 GiB larger than an H100 and
    no answer to a job that misses the H100 by a gigabyte.
    """
    from runners.accelerators import TIERS

    room = [
        t for t in TIERS.values() if t.memory_gib > tier.memory_gib and t.memory_gib * (1 - TRAIN_RESERVE) >= need_gib
    ]
    return sorted(room, key=lambda t: t.memory_gib)[:3]
