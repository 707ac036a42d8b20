"""start_vllm_server's arguments and answer, and the plan it reports (pydantic models only).

Apart from the planning and the start itself so that both, the idempotent repeat and the
MCP surface can name these types without importing each other.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runners.states import JobState
from tools.model_ref import check_arg
from tools.serve.flags import SERVED_NAME_RE, ExtraValue, ServedName
from tools.submit import TimedSubmitOptions

__all__ = ["LoraAdapterRef", "ServePlan", "StartServerInput", "StartServerOutput"]


class LoraAdapterRef(BaseModel):
    """An adapter to serve: a directory on the host, or the fine-tune job that produced it."""

    model_config = ConfigDict(extra="forbid")

    name: ServedName = Field(description="Name clients pass as `model` to use this adapter.")
    path: str | None = Field(None, description="Adapter directory on the host.")
    job_id: str | None = Field(None, description="A succeeded finetune job; its outputs/ is the adapter.")

    @model_validator(mode="after")
    def _one(self) -> LoraAdapterRef:
        if (self.path is None) == (self.job_id is None):
            raise ValueError("give exactly one of 'path' or 'job_id' for each adapter")
        return self


class StartServerInput(TimedSubmitOptions):
    """Arguments of start_vllm_server (host, time_limit, idempotency_key and dry_run: tools/submit.py)."""

    model: str = Field(description="Hub id, catalog name, or a model directory on the host.")
    gpus: int | list[int] | None = Field(
        None, description="How many GPUs may be used, or which device indices; default: all of the host's."
    )
    tensor_parallel_size: int | Literal["auto"] = Field(
        "auto", description="'auto': the smallest size that fits and divides the attention heads."
    )
    pipeline_parallel_size: int = Field(
        1, ge=1, le=64, description="Pipeline stages (layers split); GPUs used = TP x PP."
    )
    nodes: int = Field(
        1,
        ge=1,
        le=64,
        description="SLURM nodes the server spans (vLLM's multiprocessing backend, one vllm "
        "process per node): TP x PP GPUs split evenly; with TP and PP left at their "
        "defaults, TP within a node and one pipeline stage per node.",
    )
    quantization: str = Field(
        "auto",
        description="'auto' (only when the 16-bit weights don't fit, with a method the host can run), 'none', "
        "or a vLLM method: fp8, bitsandbytes, awq, gptq...",
    )
    max_model_len: int | Literal["auto"] = Field(
        "auto", description="Context length; 'auto': the model's, shortened only when one such sequence doesn't fit."
    )
    gpu_memory_utilization: float = Field(
        0.92, gt=0.05, le=0.99, description="vLLM's share of each GPU's memory (vLLM 0.26's default: 0.92)."
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    kv_cache_dtype: Literal["auto", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2"] = "auto"
    enable_prefix_caching: bool = True
    max_num_seqs: int | None = Field(
        None,
        ge=1,
        le=4096,
        description="vLLM's cap on running sequences (a cap, not a demand: the KV cache needs one max_model_len "
        "sequence; the plan reports how many fit at full length).",
    )
    # Plain defaults, not default_factory: the MCP bridge re-declares fields with their default (pydantic copies it).
    lora_adapters: list[LoraAdapterRef] = Field([], description="Adapters served by name.")
    served_model_name: str | None = Field(None, description="Name of the base model for clients; default: model.")
    port: int | Literal["auto"] = Field("auto", description="Port on the host; 'auto' picks a free one.")
    api_key: str = Field(
        "auto",
        description="'auto' (a new key in the job's env file), 'none', or 'env:NAME' "
        "(a secret from the server's environment).",
    )
    extra_args: dict[str, ExtraValue] = Field(
        {}, description="More vLLM flags, checked against the host's vLLM version."
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_arg(v, "model")

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, v: str | None) -> str | None:
        if v is not None and not SERVED_NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid served name")
        return v

    @field_validator("tensor_parallel_size", "max_model_len", "port")
    @classmethod
    def _positive(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not (1 <= v <= 10_485_760):
            raise ValueError("must be a positive number or 'auto'")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int | str) -> int | str:
        if isinstance(v, int) and not (1 <= v <= 65535):
            raise ValueError("a TCP port is 1-65535 (or 'auto')")
        return v

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str) -> str:
        if v in ("auto", "none") or re.fullmatch(r"env:[A-Za-z_][A-Za-z0-9_]*", v):
            return v
        raise ValueError("api_key is 'auto', 'none' or 'env:NAME' (a key itself is never passed as an argument)")

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, v: int | list[int] | None) -> int | list[int] | None:
        if isinstance(v, int) and not 1 <= v <= 64:
            raise ValueError("gpus must be 1-64")
        if isinstance(v, list) and (not v or len(set(v)) != len(v) or any(i < 0 or i > 63 for i in v)):
            raise ValueError("gpus must list distinct device indices 0-63")
        return v


class ServePlan(BaseModel):
    """What will be run and why."""

    gpu: str | None = Field(None, description="GPU tier planned for (None: the host declares no GPUs).")
    gpus_available: int | None = None
    tensor_parallel_size: int
    pipeline_parallel_size: int = 1
    nodes: int = Field(1, description="SLURM nodes the server spans (one vLLM process per node).")
    quantization: str | None = Field(None, description="vLLM's --quantization (None: as stored).")
    max_model_len: int | None = Field(None, description="None: the model's own.")
    max_num_seqs: int | None = Field(None, description="vLLM's cap on running sequences (None: vLLM's default).")
    estimated_gib_per_gpu: float | None = None
    fits: bool | None = Field(None, description="vLLM would start and serve it (None: no GPUs declared, not planned).")
    kv_cache_gib: float | None = Field(None, description="vLLM's 'Available KV cache memory' per GPU, estimated.")
    kv_cache_tokens: int | None = Field(None, description="vLLM's 'GPU KV cache size: N tokens', estimated.")
    max_concurrency: float | None = Field(
        None, description="vLLM's 'Maximum concurrency for L tokens per request', estimated (L: max_concurrency_at)."
    )
    max_concurrency_at: int | None = Field(None, description="The max_model_len that concurrency is for.")
    reasons: list[str] = Field(default_factory=list, description="Why each setting is what it is.")


class StartServerOutput(BaseModel):
    job_id: str
    created: bool = Field(description="False when an earlier call with the same idempotency_key is returned.")
    dry_run: bool
    state: JobState | None = None
    host: str
    endpoint: str | None = Field(None, description="Base URL reachable from this MCP server (append /v1).")
    endpoint_note: str | None = None
    served_models: list[str] = Field(description="Names to pass as `model`: the base first, then adapters.")
    api_key: Literal["auto", "none", "env"] = Field(description="How the server is protected (the key is never shown).")
    plan: ServePlan
    vllm_version: str | None = None
    command: list[str] = Field(description="The exact vLLM command (API key not included: it is in the env).")
    command_line: str
    job_dir: str
    summary: str
    next_action: str | None = None
