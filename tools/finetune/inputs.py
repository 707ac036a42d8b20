"""submit_finetune's arguments, the plan it answers with, and where the dataset comes from.

Defaults come from the payload's table (``defaults.py``); model and dataset references follow the one
rule of ``tools/model_ref.py`` (a dataset may also be a file on the controller, uploaded into the job).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from runners.errors import InvalidInput
from runners.payloads import dataset_formats as dsf
from tools.finetune.defaults import DEFAULTS
from tools.model_ref import check_ref
from tools.submit import TimedSubmitOptions

__all__ = [
    "MAX_UPLOAD_BYTES",
    "UPLOAD_NAME",
    "UPLOAD_SUFFIXES",
    "ZERO_STAGE",
    "FinetuneInput",
    "FinetunePlan",
    "Strategy",
    "classify_dataset",
]

UPLOAD_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet")
MAX_UPLOAD_BYTES = 512 * 1024 * 1024
UPLOAD_NAME = "dataset"
_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_BAD_PATH_CHARS = re.compile(r"[\x00-\x1f]")
Strategy = Literal["auto", "ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3"]
ZERO_STAGE = {"ddp": 0, "fsdp": 3, "deepspeed-zero2": 2, "deepspeed-zero3": 3}


class FinetuneInput(TimedSubmitOptions):
    """Arguments of submit_finetune (the names are the public interface)."""

    model: str = Field(description="Hub id, a path on the host, or a catalog name.")
    dataset: str = Field(
        description="A Hub dataset id, a path on the host, or a local JSONL/JSON/CSV/Parquet file (uploaded)."
    )
    dataset_format: Literal["auto", "alpaca", "sharegpt", "messages", "text", "prompt_completion"] = DEFAULTS[
        "dataset_format"
    ]
    method: Literal["lora", "qlora", "full"] = DEFAULTS["method"]
    backend: Literal["auto", "unsloth", "trl"] = Field(
        DEFAULTS["backend"], description="auto: Unsloth when it imports on a CUDA host, else TRL + PEFT."
    )
    max_seq_length: int = Field(DEFAULTS["max_seq_length"], ge=8, le=1_048_576)
    lora_r: int | None = Field(None, ge=1, le=1024, description=f"Default {DEFAULTS['lora_r']} (lora/qlora only).")
    lora_alpha: int | None = Field(None, ge=1, le=4096, description="Default: lora_r.")
    lora_dropout: float = Field(DEFAULTS["lora_dropout"], ge=0.0, lt=1.0)
    target_modules: list[str] | None = Field(None, description="Default: all linear layers.")
    num_epochs: float | None = Field(
        None, gt=0, le=1000, description=f"Default {DEFAULTS['num_epochs']:g} when max_steps is not set."
    )
    max_steps: int | None = Field(DEFAULTS["max_steps"], ge=1, le=10_000_000)
    learning_rate: float = Field(DEFAULTS["learning_rate"], gt=0, le=1.0)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup", "cosine_with_restarts"] = DEFAULTS[
        "lr_scheduler"
    ]
    warmup_steps: int = Field(DEFAULTS["warmup_steps"], ge=0)
    per_device_batch_size: Annotated[int, Field(ge=1, le=65536)] | Literal["auto"] = Field(
        "auto", description="'auto': the plan picks it."
    )
    gradient_accumulation_steps: Annotated[int, Field(ge=1, le=65536)] | Literal["auto"] = Field(
        "auto", description="'auto': the plan picks it."
    )
    target_effective_batch: int = Field(16, ge=1, le=65536, description="What 'auto' aims for (batch x GA x GPUs).")
    packing: bool = DEFAULTS["packing"]
    eval_fraction: float = Field(DEFAULTS["eval_fraction"], ge=0.0, lt=0.5)
    save_steps: int = Field(DEFAULTS["save_steps"], ge=0, description="Checkpoint every N steps (0: only at the end).")
    resume_from: str | None = Field(
        DEFAULTS["resume_from"], description="A fine-tune job_id (same host) or a checkpoint path on the host."
    )
    save_merged: bool = Field(DEFAULTS["save_merged"], description="Also save the merged 16-bit model.")
    chat_template: str | None = Field(
        DEFAULTS["chat_template"], description="'simple', 'chatml', or a Jinja template; default the tokenizer's."
    )
    seed: int = Field(DEFAULTS["seed"], ge=0)
    gradient_checkpointing: bool | Literal["auto"] = "auto"
    wandb_project: str | None = Field(
        DEFAULTS["wandb_project"], description="Log to Weights & Biases (WANDB_API_KEY is a secret)."
    )
    wandb_mode: Literal["online", "offline", "disabled"] | None = Field(
        DEFAULTS["wandb_mode"], description="Default: offline on SLURM hosts, online elsewhere."
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
        DEFAULTS["cpu_offload"],
        description="FSDP / ZeRO: keep optimizer states (ZeRO-3/FSDP: also weights) "
        "in CPU RAM; slower, fits bigger models.",
    )
    processes_per_node: int | None = Field(
        None, ge=1, le=64, description="Ranks per node; default gpus. On a CPU host >1 runs DDP over gloo."
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_ref(v, "model", paths="relative")

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, v: str) -> str:
        return check_ref(v, "dataset", paths="relative")

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
