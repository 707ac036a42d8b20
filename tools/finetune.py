"""submit_finetune: validate a fine-tune request, plan it against the host's GPU, build its job.

The controller side of fine-tuning. It never imports torch: the model's
architecture comes from ``tools/models.py`` (config.json / catalog), the memory
plan from ``tools/plan.py``, and the dataset is checked with the stdlib checker
the payload itself uses (``runners/payloads/dataset_formats.py``), so a file the
payload would reject is refused here, before anything is submitted.

What runs on the host is ``runners/payloads/finetune.py`` (Unsloth when it
imports and a CUDA GPU is present, else TRL + PEFT), fed ``payload_config``.

Several GPUs (or nodes) run the same payload under torchrun, one process per GPU
(``runners/distributed.py`` builds the argv; srun starts one agent per node on SLURM).
``strategy='auto'`` is decided here, with the estimator as the proof: DDP when the model,
its gradients and optimizer states fit one GPU (a full replica per GPU is the fastest:
no parameter traffic), else FSDP full_shard (sharded like ZeRO-3, ``zero_stage=3`` in
the estimate), which ships with torch, unlike DeepSpeed. Unsloth's multi-GPU support is
not official in 2026.10.9 (its docs: "working on official multi-GPU support", DDP via
accelerate only as a manual recipe), so multi-GPU jobs use TRL + accelerate.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from runners.accelerators import GpuTier, get_tier
from runners.config import HostConfig
from runners.distributed import DistributedLaunch, launch_argv
from runners.errors import DoesNotFit, InvalidInput, NotFound, OpsError
from runners.payloads import dataset_formats as dsf
from runners.spec import JobSpec, Resources, parse_time_limit
from tools.memory import MemoryInput, breakdown_bytes, resolve_settings
from tools.models import ModelArch, resolve_model
from tools.plan import TRAIN_RESERVE, Plan, plan_training

__all__ = [
    "FinetuneInput",
    "FinetunePlan",
    "build_finetune_spec",
    "classify_dataset",
    "plan_finetune",
]

GIB = 1024**3
UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
UPLOAD_NAME = "dataset"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f]")
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
ZERO_STAGE = {"ddp": 0, "fsdp": 3, "deepspeed-zero2": 2, "deepspeed-zero3": 3}


def _safe_model_or_path(v: str, what: str) -> str:
    v = v.strip()
    if not v or v.startswith("-") or _BAD_PATH_CHARS.search(v):
        raise ValueError(f"{what} {v!r} is not a Hub id or a path")
    if not (_HUB_ID.match(v) or v.startswith(("/", "~", "./", "../")) or Path(v).is_absolute()):
        raise ValueError(f"{what} {v!r} is neither a Hub id (org/name) nor a path")
    return v


class FinetuneInput(BaseModel):
    """Arguments of submit_finetune (the names are the public interface)."""

    model: str = Field(description="Hub id, a path on the host, or a catalog name.")
    dataset: str = Field(
        description="A Hub dataset id, a path on the host, or a local JSONL/JSON/CSV/Parquet file (uploaded)."
    )
    dataset_format: Literal["auto", "alpaca", "sharegpt", "messages", "text", "prompt_completion"] = "auto"
    host: str | None = Field(None, description="Host from list_hosts; the default host when omitted.")
    method: Literal["lora", "qlora", "full"] = "lora"
    backend: Literal["auto", "unsloth", "trl"] = Field(
        "auto", description="auto: Unsloth when it imports on a CUDA host, else TRL + PEFT."
    )
    max_seq_length: int = Field(2048, ge=8, le=1_048_576)
    lora_r: int | None = Field(None, ge=1, le=1024, description="Default 16 (lora/qlora only).")
    lora_alpha: int | None = Field(None, ge=1, le=4096, description="Default: lora_r.")
    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="Default: all linear layers.")
    num_epochs: float | None = Field(None, gt=0, le=1000, description="Default 1 when max_steps is not set.")
    max_steps: int | None = Field(None, ge=1, le=10_000_000)
    learning_rate: float = Field(2e-4, gt=0, le=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"] = "linear"
    warmup_steps: int = Field(0, ge=0)
    per_device_batch_size: Annotated[int, Field(ge=1, le=65536)] | Literal["auto"] = Field(
        "auto", description="'auto': the plan picks it."
    )
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=65536)] | Literal["auto"] = Field(
        "auto", description="'auto': the plan picks it."
    )
    target_effective_batch: int = Field(16, ge=1, le=65536, description="What 'auto' aims for (batch x GA x GPUs).")
    packing: bool = False
    eval_fraction: float = Field(0.0, ge=0.0, lt=0.5)
    save_steps: int = Field(200, ge=0, description="Checkpoint every N steps (0: only at the end).")
    resume_from: str | None = Field(
        None, description="A fine-tune job_id (same host) or a checkpoint path on the host."
    )
    save_merged: bool = Field(False, description="Also save the merged 16-bit model.")
    chat_template: str | None = Field(
        None, description="'simple', 'chatml', or a Jinja template; default the tokenizer's."
    )
    seed: int = Field(3407, ge=0)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    wandb_project: str | None = Field(None, description="Log to Weights & Biases (WANDB_API_KEY is a secret).")
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        None, description="Default: offline on SLURM hosts, online elsewhere."
    )
    output_name: str | None = Field(None, description="A label for the outputs and list_jobs.")
    gpus: int | None = Field(
        None, ge=0, le=64, description="GPUs per node; default 1 on a GPU host, 0 on CPU. >1 runs under torchrun."
    )
    nodes: int = Field(1, ge=1, le=64, description="Nodes (SLURM hosts only): srun starts torchrun on each.")
    strategy: Strategy = Field(
        "auto", description="auto: DDP when model + optimizer fit one GPU, else FSDP (estimate_memory decides)."
    )
    cpu_offload: bool = Field(
        False,
        description="FSDP / ZeRO: keep optimizer states (ZeRO-3/FSDP: also weights) "
        "in CPU RAM; slower, fits bigger models.",
    )
    processes_per_node: int | None = Field(
        None, ge=1, le=64, description="Ranks per node; default gpus. On a CPU host >1 runs DDP over gloo."
    )
    time_limit: str | None = Field(None, description="HH:MM:SS or D-HH:MM:SS; the job is stopped after it.")
    idempotency_key: str | None = Field(None, min_length=1, max_length=200)
    dry_run: bool = Field(False, description="Return the plan and the job script without submitting.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return _safe_model_or_path(v, "model")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return _safe_model_or_path(v, "dataset")

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("target_modules is empty; omit it for all linear layers")
            for t in v:
                if not _MODULE.match(t):
                    raise ValueError(f"{t!r} is not a module name")
        return v

    @field_validator("output_name", "wandb_project")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"{v!r}: use letters, digits, '.', '_', '-' (max 64)")
        return v

    @field_validator("resume_from")
    @classmethod
    def _resume(cls, v: str | None) -> str | None:
        if v is not None and (v.startswith("-") or _BAD_PATH_CHARS.search(v)):
            raise ValueError(f"resume_from {v!r} is not a job id or a path")
        return v

    @model_validator(mode="after")
    def _combinations(self) -> FinetuneInput:
        if self.method == "full" and (self.lora_r is not None or self.lora_alpha is not None):
            raise ValueError("lora_r/lora_alpha apply to method 'lora' or 'qlora', not 'full'")
        if self.method == "full" and self.target_modules is not None:
            raise ValueError("target_modules applies to LoRA; a full fine-tune trains every weight")
        if self.num_epochs is not None and self.max_steps is not None:
            raise ValueError("give num_epochs or max_steps, not both")
        if self.cpu_offload and self.strategy == "ddp":
            raise ValueError("cpu_offload needs a sharded strategy (fsdp, deepspeed-zero2/3) or 'auto'")
        return self


class FinetunePlan(BaseModel):
    """What will run: the batch arithmetic, the memory estimate against the GPU, and why."""

    backend: str = Field(description="unsloth or trl (what the payload will use on that host).")
    method: str
    gpu: str | None = Field(None, description="GPU tier the plan was made for; None on a CPU host.")
    gpus: int = Field(description="GPUs per node.")
    nodes: int = 1
    world_size: int = Field(1, description="Training processes in all (one per GPU; CPU ranks on a CPU host).")
    strategy: str | None = Field(None, description="ddp, fsdp, deepspeed-zero2/3; None for one process.")
    zero_stage: int | None = Field(None, description="How the estimate shards: 0 DDP, 2, 3 (FSDP full_shard = 3).")
    cpu_offload: bool = False
    per_device_batch_size: int
    gradient_accumulation_steps: int
    effective_batch: int
    gradient_checkpointing: bool
    optimizer: str
    max_seq_length: int
    estimated_peak_gib: float | None = Field(None, description="Peak GPU memory per GPU (estimate_memory).")
    gpu_memory_gib: float | None = None
    model_params: int | None = None
    trainable_params: int | None = None
    dataset_source: Literal["upload", "host_path", "hub"]
    dataset_rows: int | None = None
    dataset_format: str
    notes: list[str] = Field(default_factory=list)


def classify_dataset(
    dataset: str, fmt: str
) -> tuple[Literal["upload", "host_path", "hub"], Path | None, dsf.DatasetCheck | None]:
    """Decide where the dataset comes from; check an uploaded file's rows like the payload will.

    A path that exists on the controller with a data-file suffix is uploaded into the
    job (the job then holds everything it needs). Other paths are the host's; other
    strings are Hub ids.
    """
    p = Path(dataset).expanduser()
    if p.is_file() and p.suffix.lower() in UPLOAD_SUFFIXES:
        size = p.stat().st_size
        if size > MAX_UPLOAD_BYTES:
            raise InvalidInput(
                f"Dataset file {p} is {size / 2**20:.0f} MiB; uploads are limited to {MAX_UPLOAD_BYTES >> 20} MiB.",
                "Copy it to the host yourself and pass the host path.",
            )
        check = None
        if p.suffix.lower() != ".parquet":  # parquet needs pyarrow: the payload checks it on the host
            try:
                check = dsf.check_file(p, fmt)
            except dsf.DatasetFormatError as e:
                raise InvalidInput(f"Dataset {p.name}: {e}", "Fix the file or pick the dataset_format it has.") from e
            if check.rows == 0:
                raise InvalidInput(f"Dataset {p.name} has no rows.", "Give a file with at least one example.")
        return "upload", p, check
    if p.is_dir() or dataset.startswith(("/", "~", "./", "../")):
        return "host_path", None, None
    return "hub", None, None


def _host_tier(host: HostConfig, detected: list[tuple[str, float]] | None) -> tuple[GpuTier | None, float | None, int]:
    """(tier, memory per GPU in GiB, GPUs available) from the config, else from nvidia-smi."""
    acc = host.accelerator
    if acc is not None:
        return acc.tier, host.gpu_memory_gib or acc.tier.memory_gib, acc.count
    if detected:
        name, mem = detected[0]
        try:
            tier = get_tier(name)
        except OpsError:
            tier = None
        return tier, host.gpu_memory_gib or mem, len(detected)
    return None, None, 0


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
    p: FinetuneInput, arch: ModelArch | None, tier: GpuTier | None, world: int, fit: Callable[[int, bool], Plan | None]
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


def plan_finetune(
    p: FinetuneInput, host: HostConfig, detected: list[tuple[str, float]] | None = None
) -> tuple[FinetunePlan, Path | None]:
    """Plan the job; refuse what cannot work (does not fit, bad dataset, no GPU for Unsloth)."""
    source, upload, check = classify_dataset(p.dataset, p.dataset_format)
    tier, mem_gib, available = _host_tier(host, detected)
    gpus = p.gpus if p.gpus is not None else (1 if available else 0)
    if available and gpus > available:
        raise InvalidInput(
            f"Host {host.name} has {available} GPU(s); {gpus} were asked for.", f"Use gpus <= {available}."
        )
    per_node, world = _world(p, host, gpus)
    distributed = world > 1
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
    backend = "unsloth" if (p.backend == "unsloth" or (p.backend == "auto" and gpus > 0 and not distributed)) else "trl"
    notes: list[str] = []
    if p.backend == "auto" and gpus > 0 and not distributed:
        notes.append("backend auto: Unsloth if it imports on the host, else TRL + PEFT (the payload decides).")
    if distributed and p.backend == "auto":
        notes.append(
            f"backend auto -> trl: {world} ranks under torchrun use TRL + accelerate; Unsloth "
            "(2026.10.9) supports one GPU officially."
        )
    arch: ModelArch | None
    try:
        arch = resolve_model(p.model)
    except NotFound:
        arch = None
        notes.append("Model architecture unknown to the controller (host path or offline Hub id): no memory plan.")
    lora_r = p.lora_r or 16
    batch = 2 if p.per_device_batch_size == "auto" else p.per_device_batch_size
    ckpt = True if p.gradient_checkpointing == "auto" else p.gradient_checkpointing
    optimizer = "adamw"
    est = None
    plan: Plan | None = None
    params = trainable = None
    strategy: str | None = None
    zero = 0
    if arch is not None:
        mi = MemoryInput(
            model=p.model,
            task=p.method,
            backend="unsloth" if backend == "unsloth" else "trl",
            seq_len=p.max_seq_length,
            batch_size=batch,
            gradient_checkpointing=ckpt,
            lora_r=lora_r,
            lora_targets=p.target_modules,
            num_gpus=world,
        )
        params, _, _ = arch.param_counts()

        def fit(zero_stage: int, offload: bool) -> Plan | None:
            """The plan at this sharding if it fits with the requested method, else None."""
            if tier is None or gpus == 0:
                return None
            s = resolve_settings(mi.model_copy(update={"zero_stage": zero_stage or None, "cpu_offload": offload}), arch)
            pl = plan_training(arch, s, tier, target_batch=p.target_effective_batch, max_gpus=world)
            # As asked: a replica that fits only with 8-bit Adam loses to sharding with the real optimizer.
            return pl if pl.fits and pl.task == p.method and pl.optimizer == s.optimizer else None

        if distributed:
            strategy, why = _auto_strategy(p, arch, tier, world, fit)
            notes += why
            zero = ZERO_STAGE[strategy]
            mi = mi.model_copy(update={"zero_stage": zero or None, "cpu_offload": p.cpu_offload})
        s = resolve_settings(mi, arch)
        if tier is not None and gpus > 0:
            plan = plan_training(arch, s, tier, target_batch=p.target_effective_batch, max_gpus=world)
            where = f"{world}x {tier.id}" + (f" ({strategy})" if strategy else "")
            if plan.task != p.method:
                raise DoesNotFit(
                    f"{arch.name} {p.method} at seq {p.max_seq_length} does not fit {where} "
                    f"({mem_gib:.0f} GiB each) even at micro-batch 1 with checkpointing.",
                    f"Use method '{plan.task}' (it fits: {plan.estimated_gib:.1f} GiB), a shorter max_seq_length, "
                    + ("cpu_offload=true, more GPUs, " if distributed and not p.cpu_offload else "")
                    + "or a host with a larger GPU.",
                )
            if not plan.fits:
                bigger = [t.id for t in _larger_tiers(tier, plan.estimated_gib)]
                raise DoesNotFit(
                    f"{arch.name} {p.method} at seq {p.max_seq_length} does not fit: it needs about "
                    f"{plan.estimated_gib:.1f} GiB per GPU on {where}; {host.name}'s {tier.id} has "
                    f"{mem_gib:.0f} GiB.",
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
            if p.per_device_batch_size == "auto":
                batch = plan.micro_batch_size or batch
            if p.gradient_checkpointing == "auto" and plan.gradient_checkpointing is not None:
                ckpt = plan.gradient_checkpointing
            if plan.optimizer:
                optimizer = plan.optimizer
            notes += plan.notes
            s2 = resolve_settings(
                mi.model_copy(update={"batch_size": batch, "gradient_checkpointing": ckpt, "optimizer": optimizer}),
                arch,
            )
            est = breakdown_bytes(arch, s2).total() / GIB
            if mem_gib is not None and est > mem_gib:
                raise DoesNotFit(
                    f"Micro-batch {batch} needs about {est:.1f} GiB; {tier.id} has {mem_gib:.0f} GiB.",
                    "Leave per_device_batch_size on 'auto', or lower it.",
                )
        trainable = params if p.method == "full" else None
    elif distributed:
        strategy, why = _auto_strategy(p, None, None, world, lambda z, o: None)
        notes += why
        zero = ZERO_STAGE[strategy]
    if distributed:
        if strategy is not None and strategy.startswith("deepspeed"):
            notes.append(
                "DeepSpeed must be installed in the host's Python (pip install deepspeed); "
                "FSDP needs nothing beyond torch."
            )
        launcher = "srun + torchrun" if host.launcher == "slurm" and p.nodes > 1 else "torchrun"
        notes.append(
            f"{launcher}: {p.nodes} node(s) x {per_node} rank(s) = {world}; rank 0 writes metrics and "
            "outputs; a failure on any rank fails the job with that rank's error."
        )
    if p.gradient_accumulation_steps == "auto":
        ga = max(1, -(-p.target_effective_batch // (batch * world)))
    else:
        ga = p.gradient_accumulation_steps
    fmt = check.format if check is not None else p.dataset_format
    return (
        FinetunePlan(
            backend=backend,
            method=p.method,
            gpu=tier.id if tier and gpus else None,
            gpus=gpus,
            nodes=p.nodes,
            world_size=world,
            strategy=strategy,
            zero_stage=zero if distributed else None,
            cpu_offload=p.cpu_offload,
            per_device_batch_size=batch,
            gradient_accumulation_steps=ga,
            effective_batch=batch * ga * world,
            gradient_checkpointing=ckpt,
            optimizer=optimizer,
            max_seq_length=p.max_seq_length,
            estimated_peak_gib=round(est, 2) if est is not None else None,
            gpu_memory_gib=round(mem_gib, 2) if mem_gib and gpus else None,
            model_params=params,
            trainable_params=trainable,
            dataset_source=source,
            dataset_rows=check.rows if check is not None else None,
            dataset_format=fmt,
            notes=notes,
        ),
        upload,
    )


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


_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit", "sgd": "sgd"}


def build_finetune_spec(
    p: FinetuneInput,
    host: HostConfig,
    plan: FinetunePlan,
    dataset_ref: str,
    resume_path: str | None,
    *,
    agents_per_node: int = 1,
) -> JobSpec:
    """The JobSpec the engine starts: payload ``finetune`` with its config (no secrets in it).

    A multi-process plan also gets the torchrun (or srun + torchrun) argv that runs the
    copied payload; ``agents_per_node`` > 1 splits one SLURM node into several torchrun
    "nodes" (the single-node test cluster's way to run the multi-node wiring for real).
    """
    cfg: dict[str, Any] = {
        "model": p.model,
        "dataset": dataset_ref,
        "dataset_format": plan.dataset_format if plan.dataset_format != "auto" else p.dataset_format,
        "method": p.method,
        "backend": p.backend if p.backend != "auto" else "auto",
        "max_seq_length": p.max_seq_length,
        "lora_dropout": p.lora_dropout,
        "learning_rate": p.learning_rate,
        "lr_scheduler": p.lr_scheduler,
        "warmup_steps": p.warmup_steps,
        "per_device_batch_size": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "packing": p.packing,
        "eval_fraction": p.eval_fraction,
        "save_steps": p.save_steps,
        "save_merged": p.save_merged,
        "chat_template": p.chat_template,
        "seed": p.seed,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "optim": _OPTIM[plan.optimizer],
        "estimated_peak_gib": plan.estimated_peak_gib,
        "resume_from": resume_path,
        "strategy": plan.strategy or "ddp",
        "cpu_offload": plan.cpu_offload,
    }
    if p.method != "full":
        cfg["lora_r"] = p.lora_r or 16
        cfg["lora_alpha"] = p.lora_alpha or cfg["lora_r"]
        if p.target_modules:
            cfg["target_modules"] = p.target_modules
    if p.max_steps is not None:
        cfg["max_steps"] = p.max_steps
    else:
        cfg["num_epochs"] = p.num_epochs or 1.0
    env: dict[str, str] = {}
    secrets: list[str] = []
    if p.wandb_project:
        cfg["wandb_project"] = p.wandb_project
        cfg["wandb_mode"] = p.wandb_mode or ("offline" if host.launcher == "slurm" else "online")
        if cfg["wandb_mode"] == "online":  # offline runs need no key; online ones fail at submit without it
            secrets.append("WANDB_API_KEY")
    else:
        env["WANDB_DISABLED"] = "true"
    argv = None
    tasks = 1
    if plan.world_size > 1:
        per_node = plan.world_size // plan.nodes
        if per_node % agents_per_node:
            raise InvalidInput(f"{per_node} ranks per node do not split into {agents_per_node} agents.", None)
        slurm = host.launcher == "slurm"
        d = DistributedLaunch(
            nodes=plan.nodes,
            nproc_per_node=per_node // agents_per_node,
            agents_per_node=agents_per_node,
            launcher="slurm" if slurm else "direct",
            gpus_per_node=plan.gpus,
            gres=host.slurm_settings.gres if slurm else "gpu",
        )
        argv = launch_argv(d, host.interpreter, ["finetune.py", "job.json"])
        tasks = agents_per_node if slurm and d.agents > 1 else 1
    return JobSpec(
        kind="finetune",
        name=p.output_name or f"finetune {p.model.rsplit('/', 1)[-1]} ({p.method})",
        payload="finetune",
        argv=argv,
        payload_config=cfg,
        env=env,
        secrets=secrets,
        resources=Resources(
            gpus=plan.gpus, nodes=plan.nodes, tasks_per_node=tasks, time_limit_s=parse_time_limit(p.time_limit)
        ),
    )
