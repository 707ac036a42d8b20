"""start_vllm_server / stop_vllm_server: plan, build and run a vLLM server as a job.

The flow of :func:`start_vllm_server`, every step before the submit free of side effects:

1. resolve the model's architecture (a directory on the host is read there) and the
   adapters (a fine-tune job's ``outputs/`` must come from a job that *succeeded*);
2. ask the host which vLLM it has and whether bitsandbytes is there (package metadata,
   about a second) and which flags that version knows (cached; on a host whose version
   is new the job checks them on the host before vLLM starts, so this call never waits
   for the ~30 s ``vllm serve --help=all``);
3. plan with tools/plan.py by vLLM 0.26's own rules (tools/vllm_memory.py): the smallest
   tensor-parallel size that fits and divides the heads, where "fits" is what vLLM
   checks at start — weights, profile-run activations, non-torch and CUDA graph memory
   and ONE ``max_model_len`` sequence within ``gpu_memory_utilization`` (``max_num_seqs``
   is a cap, not a demand); ``max_model_len`` shortened only when one sequence does not
   fit; quantization only when the weights leave no room, and only with a method the
   host can run; the KV cache tokens and the concurrency at full length reported as vLLM
   logs them. Each choice has its reason; a model that can't fit raises
   :class:`DoesNotFit` naming what would (tiers and GPU counts). Then build the argv from
   the typed :class:`~tools.vllm_args.VllmServeArgs` by reflection plus validated
   ``extra_args``;
4. submit a ``serve`` job running the serve payload (runners/payloads/serve.py),
   which starts vLLM, decides readiness on the host and writes ``ready``.

Several nodes (``nodes`` > 1, SLURM only): the job runs the payload once per node under
``srun`` (runners/distributed.py ``srun_argv``); the payload of SLURM task 0 runs the API
server and the readiness checks, every other task runs ``vllm serve ... --headless``, all
with ``--nnodes/--node-rank/--master-addr/--master-port`` (vLLM's multi-node
multiprocessing backend, no Ray), the head being the allocation's first node.

The API key never appears in the command, job.json, results or logs: ``auto`` keys
are made on the host and kept in the job's 0600 env file.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from runners.accelerators import TIERS, GpuTier
from runners.config import HostConfig
from runners.distributed import srun_argv
from runners.engine import JobEngine
from runners.errors import Conflict, DoesNotFit, InvalidInput, NotFound
from runners.spec import JobSpec, Resources, parse_time_limit
from runners.states import JobState
from runners.views import JobView
from tools.models import ModelArch, arch_from_config, resolve_model
from tools.serve.flags import (
    MAX_LORA_RANKS,
    ExtraValue,
    FlagCache,
    KnownFlags,
    LoraModule,
    VllmServeArgs,
    build_extra_argv,
    build_extra_argv_unchecked,
    flag_name,
    to_argv,
)
from tools.serve.host import GpuRelease, VllmInstall, check_gpu_release, check_port, detect_vllm
from tools.serve.runtime import ServeRuntime

__all__ = [
    "LoraAdapterRef",
    "ServePlan",
    "StartServerInput",
    "StartServerOutput",
    "StopServerInput",
    "StopServerOutput",
    "plan_server",
    "start_vllm_server",
    "stop_vllm_server",
]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$")
# Our plan's quantization names → vLLM's --quantization (None: vLLM reads it from the checkpoint).
_TO_VLLM_QUANT = {"none": None, "fp8": "fp8", "bnb-4bit": "bitsandbytes", "awq": None, "gptq": None}
_FROM_VLLM_QUANT = {
    "fp8": "fp8",
    "bitsandbytes": "bnb-4bit",
    "awq": "awq",
    "awq_marlin": "awq",
    "gptq": "gptq",
    "gptq_marlin": "gptq",
}


class LoraAdapterRef(BaseModel):
    """An adapter to serve: a directory on the host, or the fine-tune job that produced it."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Name clients pass as `model` to use this adapter.")
    path: str | None = Field(None, description="Adapter directory on the host.")
    job_id: str | None = Field(None, description="A succeeded finetune job; its outputs/ is the adapter.")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME_RE.match(v):
            raise ValueError(f"{v!r} is not a valid served name (letters, digits, _.:/@+-)")
        return v

    @model_validator(mode="after")
    def _one(self) -> LoraAdapterRef:
        if (self.path is None) == (self.job_id is None):
            raise ValueError("give exactly one of 'path' or 'job_id' for each adapter")
        return self


class StartServerInput(BaseModel):
    """Arguments of start_vllm_server."""

    model: str = Field(description="Hub id, catalog name, or a model directory on the host.")
    host: str | None = Field(None, description="Host from list_hosts; default host when omitted.")
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
    time_limit: str | None = Field(None, description="Stop the server after HH:MM:SS (default: no limit).")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Same key returns the same server instead of a second one."
    )
    dry_run: bool = Field(False, description="Plan and build the command without starting anything.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        if not v or v.startswith("-") or re.search(r"[\x00-\x1f]", v) or len(v) > 1024:
            raise ValueError(f"{v!r} is not a model id or path")
        return v

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, v: str | None) -> str | None:
        if v is not None and not _NAME_RE.match(v):
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


# ------------------------------------------------------------------------------- plan
def _host_tier(host: HostConfig) -> tuple[GpuTier | None, int | None]:
    acc = host.accelerator
    if acc is None:
        return None, None
    tier = acc.tier
    if host.gpu_memory_gib:
        tier = tier.model_copy(update={"memory_gib": host.gpu_memory_gib})
    return tier, acc.count


def _valid_tps(arch: ModelArch, limit: int) -> list[int]:
    from tools.memory import tp_is_valid

    return [t for t in range(1, limit + 1) if tp_is_valid(arch, t)]


def _would_fit(arch: ModelArch, settings: Any) -> str:
    """'2x H100, 1x H200 ...': what the same workload fits on (for DoesNotFit)."""
    from tools.memory import _min_gpus

    out = []
    for tid, tier in TIERS.items():
        fit = _min_gpus(arch, settings, tier)
        if fit.min_gpus is not None:
            out.append((fit.min_gpus, tier.memory_gib, f"{fit.min_gpus}x {tid}"))
    out.sort()
    return ", ".join(x[2] for x in out[:5])


def _pipeline_stage(arch: ModelArch, pp: int) -> ModelArch:
    """The largest of ``pp`` pipeline stages as a model of its own: ceil(layers / pp) layers, and
    (conservatively) both the embedding and lm_head, so weights and KV per GPU plan like a TP-only run."""
    layers = -(-arch.num_layers // pp)
    return arch.model_copy(
        update={
            "num_layers": layers,
            "checkpoint_params": None,
            "checkpoint_bytes": int(arch.checkpoint_bytes * layers / arch.num_layers)
            if arch.checkpoint_bytes
            else None,
        }
    )


def plan_server(
    arch: ModelArch,
    p: StartServerInput,
    tier: GpuTier | None,
    gpus: int | None,
    *,
    lora_rank: int | None = None,
    max_loras: int = 1,
    methods: frozenset[str] | None = None,
) -> ServePlan:
    """TP, PP, quantization and context for ``p`` on ``gpus`` x ``tier`` (a pure function of its inputs).

    With ``pipeline_parallel_size`` > 1 the layers are split into stages and each stage is
    planned as a model of its own on ``gpus / pp`` GPUs (TP within the stage): what one GPU
    holds is a stage's share of a TP group. One host only here: vLLM 0.26 can also span
    nodes (``--nnodes/--node-rank/--headless``), which start_vllm_server does not launch yet.
    """
    from tools.memory import MemoryInput, resolve_settings
    from tools.plan import MIN_SERVE_CONTEXT, plan_inference

    pp = p.pipeline_parallel_size
    if pp > 1:
        if pp > arch.num_layers:
            raise InvalidInput(
                f"pipeline_parallel_size {pp} exceeds {arch.name}'s {arch.num_layers} layers.",
                f"Use at most {arch.num_layers}.",
            )
        if gpus is not None and gpus < pp:
            raise InvalidInput(
                f"pipeline_parallel_size {pp} needs at least {pp} GPUs; {gpus} are available.",
                f"Use at most {gpus} stages, or more GPUs.",
            )
        stage = plan_server(
            _pipeline_stage(arch, pp),
            p.model_copy(update={"pipeline_parallel_size": 1}),
            tier,
            gpus // pp if gpus is not None else None,
            lora_rank=lora_rank,
            max_loras=max_loras,
            methods=methods,
        )
        tp = stage.tensor_parallel_size
        stage.reasons.insert(
            0,
            f"pipeline_parallel_size {pp}: {arch.num_layers} layers in {pp} stages of at most "
            f"{-(-arch.num_layers // pp)}, TP {tp} within each stage: {tp * pp} GPUs, "
            "each holding one stage's share (the estimate is per GPU).",
        )
        return stage.model_copy(update={"pipeline_parallel_size": pp})
    reasons: list[str] = []
    explicit_tp = p.tensor_parallel_size if isinstance(p.tensor_parallel_size, int) else None
    limit = gpus or explicit_tp or 1
    if explicit_tp is not None:
        valid = _valid_tps(arch, max(limit, explicit_tp))
        if explicit_tp not in valid:
            raise InvalidInput(
                f"tensor_parallel_size {explicit_tp} does not divide {arch.name}'s {arch.num_heads} attention heads "
                f"({arch.num_kv_heads} KV heads), which vLLM requires.",
                f"Use one of {valid} (or 'auto').",
            )
        if gpus is not None and explicit_tp > gpus:
            raise InvalidInput(
                f"tensor_parallel_size {explicit_tp} needs {explicit_tp} GPUs; only {gpus} are available.",
                f"Use at most {gpus}, or a host with more GPUs.",
            )
    quant_req = p.quantization.lower()
    if quant_req not in ("auto", "none") and not re.fullmatch(r"[a-z0-9_.-]{1,64}", quant_req):
        raise InvalidInput(f"quantization {p.quantization!r} is not a method name.", "Use auto, none, fp8, ...")
    vllm_quant: str | None = None if quant_req in ("auto", "none") else quant_req
    mml = p.max_model_len if isinstance(p.max_model_len, int) else None
    if tier is None:
        reasons.append(
            "The host declares no GPUs (set `gpus` in its config): no memory plan; vLLM's defaults "
            "apply where 'auto' was asked."
        )
        return ServePlan(
            tensor_parallel_size=explicit_tp or 1,
            quantization=vllm_quant,
            max_model_len=mml,
            max_num_seqs=p.max_num_seqs,
            reasons=reasons,
        )
    seq_len = mml or arch.max_position or 4096
    plan_quant = "none" if quant_req in ("auto", "none") else _FROM_VLLM_QUANT.get(quant_req, "none")
    if arch.stored_quantization in ("awq", "gptq", "fp8"):
        plan_quant = arch.stored_quantization
        reasons.append(f"The checkpoint is stored as {arch.stored_quantization}; vLLM loads it as it is.")
    if methods is not None and vllm_quant is not None and vllm_quant not in methods and vllm_quant != "fp8":
        raise InvalidInput(
            f"quantization {vllm_quant!r} needs a package the host's interpreter lacks ({_method_need(vllm_quant)}).",
            f"Install it there, or use quantization='auto' ({'fp8' if tier.fp8 else 'none'} on {tier.id}).",
        )
    dtype = "float16" if p.dtype == "float16" else "float32" if p.dtype == "float32" else "bfloat16"
    mi = MemoryInput(
        model=arch.name,
        task="inference",
        backend="vllm",
        seq_len=seq_len,
        dtype=dtype,
        quantization=plan_quant,
        kv_cache_dtype=p.kv_cache_dtype,
        num_gpus=explicit_tp or 1,
        tensor_parallel_size=explicit_tp or 1,
        gpu_memory_utilization=p.gpu_memory_utilization,
        max_num_seqs=p.max_num_seqs,
        serve_lora_rank=lora_rank,
        max_loras=max_loras,
    )
    s = resolve_settings(mi, arch)
    plan = plan_inference(
        arch, s, tier, max_gpus=explicit_tp or limit, allow_quantization=quant_req == "auto", methods=methods
    )
    if not plan.fits:
        hint = f"It would fit on: {_would_fit(arch, s) or 'no single node we know'}"
        if quant_req == "none":
            hint += "; or allow quantization ('auto')"
        raise DoesNotFit(
            f"{arch.name} does not fit {limit}x {tier.id} for serving: even one sequence of "
            f"{min(seq_len, MIN_SERVE_CONTEXT)} tokens leaves no room for the weights and vLLM's working memory"
            + (" (no quantization allowed)." if quant_req == "none" else ", quantized or not."),
            hint + ".",
        )
    tp = explicit_tp or plan.tensor_parallel_size
    if explicit_tp is not None and plan.tensor_parallel_size < explicit_tp:
        reasons.append(f"TP {explicit_tp} as asked (TP {plan.tensor_parallel_size} would already fit).")
    elif explicit_tp is None:
        smaller = [t for t in _valid_tps(arch, tp) if t < tp]
        why = (
            f"the weights ({plan.weights_gib:g} GiB) and one {plan.max_model_len}-token sequence fit on one GPU"
            if tp == 1
            else f"TP {smaller[-1] if smaller else 1} does not fit, and {tp} divides the {arch.num_heads} heads"
        )
        reasons.append(f"tensor_parallel_size {tp}: {why}.")
    q_plan = plan.quantization
    if quant_req == "auto":
        vllm_quant = _TO_VLLM_QUANT.get(q_plan)
        if q_plan == "none":
            reasons.append("No quantization: the 16-bit weights fit with room for the KV cache.")
        elif q_plan == arch.stored_quantization:
            # vLLM reads it from the checkpoint; `--quantization fp8` on a compressed-tensors checkpoint is refused
            # (vllm/config/model.py ModelConfig._verify_quantization: "... does not match the quantization method")
            vllm_quant = None
            reasons.append(f"Quantization as stored ({q_plan}).")
        else:
            reasons.append(
                f"quantization {vllm_quant}: the 16-bit weights leave no room for a "
                f"{min(seq_len, MIN_SERVE_CONTEXT)}-token sequence on {limit}x {tier.id}"
                + ("" if methods is None else f" ({vllm_quant} runs on this host)")
                + "."
            )
    assert plan.max_model_len is not None
    if mml is not None and plan.max_model_len < mml:
        raise DoesNotFit(
            f"max_model_len {mml}: one sequence of {mml} tokens does not fit the KV cache on {tp}x {tier.id} "
            f"(vLLM would refuse to start).",
            f"Use max_model_len {plan.max_model_len} or less, kv_cache_dtype='fp8', a higher "
            "gpu_memory_utilization, or more GPUs.",
        )
    out_mml = plan.max_model_len if (mml is not None or plan.max_model_len < seq_len) else None
    full_mml = plan.max_model_len
    if mml is None and out_mml is None:
        reasons.append(f"max_model_len: the model's own ({seq_len}); one such sequence fits the KV cache.")
    elif mml is None:
        reasons.append(
            f"max_model_len {out_mml} (the model allows {seq_len}): one {seq_len}-token sequence does not fit "
            "the KV cache; this is the longest that does."
        )
    reasons.append(
        f"KV cache {plan.kv_cache_gib:g} GiB per GPU: {plan.kv_tokens:,} tokens; maximum concurrency "
        f"{plan.max_concurrency:.2f}x at {full_mml:,} tokens per request (vLLM logs these as 'GPU KV cache size' "
        "and 'Maximum concurrency')."
    )
    if p.max_num_seqs is not None:
        held = plan.max_concurrency or 0.0
        reasons.append(
            f"max_num_seqs {p.max_num_seqs} is vLLM's cap on running sequences, not a demand: "
            + (
                f"all {p.max_num_seqs} fit at full length."
                if held >= p.max_num_seqs
                else f"{held:.2f} fit at full length, more when they are shorter (vLLM schedules by KV memory)."
            )
        )
    reasons.append(f"Fits: vLLM would start and serve this ({tp}x {tier.id}).")
    reasons.extend(n for n in plan.notes if n not in reasons)
    return ServePlan(
        gpu=tier.id,
        gpus_available=gpus,
        tensor_parallel_size=tp,
        quantization=vllm_quant,
        max_model_len=out_mml,
        max_num_seqs=p.max_num_seqs,
        estimated_gib_per_gpu=plan.estimated_gib,
        fits=True,
        kv_cache_gib=plan.kv_cache_gib,
        kv_cache_tokens=plan.kv_tokens,
        max_concurrency=plan.max_concurrency,
        max_concurrency_at=full_mml,
        reasons=reasons,
    )


def _method_need(method: str) -> str:
    return "bitsandbytes" if method == "bitsandbytes" else method


# --------------------------------------------------------------------------- resolve
async def _model_arch(engine: JobEngine, host: HostConfig, model: str) -> ModelArch:
    """A directory on the host is read there (its config.json); anything else by tools/models.py."""
    if model.startswith(("/", "~")):
        t = engine.transport(host.name)
        path = await t.expand_path(model)
        data = await t.read_range(f"{path}/config.json", 0, 1 << 20)
        if not data:
            raise NotFound(
                f"No config.json in {path} on host {host.name!r}.",
                "Give a model directory (config.json + weights) that exists on that host.",
            )
        try:
            cfg = json.loads(data)
        except ValueError as e:
            raise InvalidInput(f"{path}/config.json on {host.name} is not JSON.", "Check the model directory.") from e
        return arch_from_config(cfg, model, f"host {host.name}: {path}")
    return resolve_model(model)


async def _resolve_adapter(engine: JobEngine, host: HostConfig, ref: LoraAdapterRef) -> tuple[LoraModule, int]:
    """(LoraModule, rank) for one adapter; a fine-tune job must have succeeded on the same host."""
    t = engine.transport(host.name)
    if ref.job_id is not None:
        view: JobView = await engine.status(ref.job_id, with_details=False)
        if view.kind != "finetune":
            raise InvalidInput(
                f"Job {ref.job_id} is a {view.kind} job, not a fine-tune.",
                "Give the job_id of a finetune job, or the adapter's path.",
            )
        if view.state in (JobState.FAILED, JobState.CANCELLED, JobState.LOST):
            raise InvalidInput(
                f"Adapter {ref.name!r} comes from fine-tune job {ref.job_id}, which {view.state.value}"
                + (f" ({view.reason})" if view.reason else "")
                + ": it has no usable adapter.",
                "Fix and rerun the fine-tune (get_job_status shows why it failed), or serve another adapter.",
            )
        if not view.terminal:
            raise Conflict(
                f"Fine-tune job {ref.job_id} is still {view.state.value}.",
                f"wait_for_job(job_id='{ref.job_id}') until it finishes, then start the server.",
            )
        if view.host != host.name:
            raise InvalidInput(
                f"Fine-tune job {ref.job_id} ran on host {view.host!r}, not {host.name!r}.",
                f"Serve on host {view.host!r}, or copy the adapter and give its path.",
            )
        path = f"{view.job_dir}/outputs"
    else:
        assert ref.path is not None
        path = await t.expand_path(ref.path)
    data = b""
    # The fine-tune payload saves the adapter in outputs/adapter/; a path may name either level.
    for cand in (f"{path}/adapter", path):
        data = await t.read_range(f"{cand}/adapter_config.json", 0, 1 << 20)
        if data:
            path = cand
            break
    if not data:
        raise NotFound(
            f"No LoRA adapter (adapter_config.json) in {path} on host {host.name!r}.",
            "A full fine-tune is a model: serve its directory as `model` instead.",
        )
    try:
        rank = int(json.loads(data).get("r") or 16)
    except (ValueError, TypeError, AttributeError):
        rank = 16
    return LoraModule(name=ref.name, path=path), rank


def _lora_rank(rank: int) -> int:
    for r in MAX_LORA_RANKS:
        if r >= rank:
            return r
    raise InvalidInput(
        f"LoRA rank {rank} is above vLLM's maximum {MAX_LORA_RANKS[-1]}.", "Serve the merged model instead."
    )


# ----------------------------------------------------------------------------- start
async def start_vllm_server(
    engine: JobEngine, runtime: ServeRuntime, cache: FlagCache, p: StartServerInput, *, tasks_per_node: int = 1
) -> StartServerOutput:
    """Plan, check against the host's vLLM, and submit a ``serve`` job (see the module docstring).

    ``tasks_per_node`` > 1 runs several vLLM processes on each SLURM node, each counted as a
    vLLM "node": only the single-node test cluster uses it, to run the multi-node wiring for real.
    """
    host = engine.config.host(p.host)
    agents = p.nodes * tasks_per_node  # vLLM processes: vLLM's --nnodes
    if agents > 1 and host.launcher != "slurm":
        raise InvalidInput(
            f"nodes={p.nodes}: a server spanning nodes needs a SLURM host; {host.name!r} runs jobs on one machine.",
            "Use nodes=1 (TP x PP within the host), or a SLURM host.",
        )
    digest = _request_digest(host.name, p)
    if p.idempotency_key and not p.dry_run:
        again = await _repeat(engine, runtime, p.idempotency_key, digest)
        if again is not None:
            return again
    arch = await _model_arch(engine, host, p.model)
    tier, count = _host_tier(host)
    if isinstance(p.gpus, list):
        count = len(p.gpus)
    elif isinstance(p.gpus, int):
        if count is not None and p.gpus > count:
            raise InvalidInput(f"gpus={p.gpus} but host {host.name!r} has {count}.", f"Use at most {count}.")
        count = p.gpus
    adapters: list[LoraModule] = []
    ranks: list[int] = []
    for ref in p.lora_adapters:
        mod, rank = await _resolve_adapter(engine, host, ref)
        adapters.append(mod)
        ranks.append(rank)
    base_name = p.served_model_name or p.model
    names = [base_name, *(a.name for a in adapters)]
    if len(set(names)) != len(names):
        raise InvalidInput(f"Served names must differ: {names}.", "Rename the adapters.")
    lora_rank = _lora_rank(max(ranks)) if ranks else None

    try:  # package metadata only (about a second): the slow flag check runs in the job (serve_host.py)
        install: VllmInstall | None = await detect_vllm(engine, host, cache)
    except NotFound:
        if not p.dry_run:
            raise
        install = None
    known: KnownFlags | None = install.flags if install else None

    asked = p
    if agents > 1 and p.pipeline_parallel_size == 1 and p.tensor_parallel_size == "auto":
        asked = p.model_copy(update={"pipeline_parallel_size": agents})
    plan = plan_server(
        arch,
        asked,
        tier,
        count * p.nodes if count is not None else None,
        lora_rank=lora_rank,
        max_loras=max(1, len(adapters)),
        methods=install.quantization_methods() if install else None,
    )
    per_task = _split_over_nodes(plan, agents, tasks_per_node, count, auto_pp=asked is not p)
    if install is None:
        plan.reasons.append("vLLM is not installed on the host: this dry run could not check the flags.")
    elif known is None:
        plan.reasons.append(
            f"vLLM {install.version}'s flags are not known here yet (first server on {host.name}): the job checks "
            "them with `vllm serve --help=all` on the host before it starts vLLM (about 30 s on a GPU host) and "
            "fails at once on a wrong one; later calls check them before submitting."
        )

    slurm = host.launcher == "slurm"
    bind = "0.0.0.0" if slurm else "127.0.0.1"
    port: int | None = p.port if isinstance(p.port, int) else None
    if not slurm:
        port = await check_port(engine, host, bind, port)
    args = VllmServeArgs(
        model=p.model,
        served_model_name=[base_name] if p.served_model_name else None,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        gpu_memory_utilization=p.gpu_memory_utilization,
        dtype=p.dtype,
        kv_cache_dtype=p.kv_cache_dtype,
        quantization=plan.quantization,
        enable_prefix_caching=p.enable_prefix_caching,
        max_num_seqs=p.max_num_seqs,
        enable_lora=bool(adapters),
        max_loras=max(1, len(adapters)),
        max_lora_rank=lora_rank or 16,
        lora_modules=adapters or None,
        nnodes=agents,
        distributed_executor_backend="mp" if agents > 1 else None,
        host=bind,
        port=port or 8000,
    )
    argv = to_argv(args, known)
    if agents > 1 and known is not None:
        lacking = [f for f in MULTINODE_TASK_FLAGS if known.get(f) is None]
        if lacking:
            raise InvalidInput(
                f"vLLM {known.version} on {host.name} has no --{', --'.join(lacking)}: it can't span "
                "nodes with its multiprocessing backend.",
                "Upgrade vLLM on the host (0.26 is tested), or serve on one node (nodes=1).",
            )
    if port is None:  # SLURM: the payload picks a free port on the compute node
        i = argv.index("--port") if "--port" in argv else -1
        if i >= 0:
            argv[i + 1] = "{port}"
        else:
            argv += ["--port", "{port}"]
    typed = {flag_name(f) for f in VllmServeArgs.model_fields}
    if p.extra_args:
        if install is None:
            raise NotFound(
                "extra_args can't be checked: vLLM is not installed on the host.",
                "Install vLLM there first, or drop extra_args.",
            )
        argv += (
            build_extra_argv(p.extra_args, known, typed)
            if known is not None
            else build_extra_argv_unchecked(p.extra_args, typed)
        )
    command = ["vllm", "serve", *argv]

    secrets_: list[str] = []
    if p.api_key.startswith("env:"):
        secrets_.append(p.api_key[4:])
    env: dict[str, str] = {}
    if isinstance(p.gpus, list):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in p.gpus[: per_task * tasks_per_node])
    gpus_per_node = per_task * tasks_per_node if tier is not None else 0
    launch = None
    if agents > 1:  # one payload (and one vllm serve) per SLURM task; task 0 serves the API
        launch = [
            *srun_argv(p.nodes, tasks_per_node, gpus_per_node, host.slurm_settings.gres),
            host.interpreter,
            "serve.py",
            "job.json",
        ]
    spec = JobSpec(
        kind="serve",
        name=f"vllm {base_name}"[:120],
        payload="serve",
        payload_config={
            "argv": command,
            "port": port if port is not None else "auto",
            "bind_host": bind,
            "served_names": names,
            "probe_model": base_name,
            "api_key": p.api_key,
            # for a repeated idempotency_key: the same answer without planning (or picking a port) again
            "request_sha256": digest,
            "plan": plan.model_dump(mode="json"),
            "vllm_version": install.version if install else None,
            "tasks": agents,
            # flags not known yet: the payload runs `vllm serve --help=all` on the host and checks them first
            "check_flags": install is not None and known is None,
        },
        argv=launch,
        env=env,
        secrets=secrets_,
        resources=Resources(
            gpus=gpus_per_node,
            nodes=p.nodes,
            tasks_per_node=tasks_per_node if agents > 1 else 1,
            time_limit_s=parse_time_limit(p.time_limit),
        ),
        endpoint_port=port,
    )
    res = await engine.submit(spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run)
    key_mode: Literal["auto", "none", "env"] = "env" if p.api_key.startswith("env:") else p.api_key  # type: ignore[assignment]
    endpoint = note = None
    if p.dry_run:
        note = "Dry run: nothing was started."
    elif port is not None:
        endpoint = await runtime.url_for(host, bind, port)
        note = "Reachable now through an SSH forward." if host.transport == "ssh" else None
    else:
        note = "Known once SLURM starts the job on a node: query_model and benchmark_server find it by job_id."
    vv = install.version if install else None
    state = res.job.state if res.job else None
    if p.dry_run:
        summary = f"Dry run: would serve {', '.join(names)} on {host.name} with vLLM {vv or '?'}: {shlex.join(command)}"
        nxt = "Call again with dry_run=false to start it."
    elif state is not None and state.terminal:
        summary = f"Server job {res.job_id} on {host.name} already {state.value}."
        nxt = "get_job_status shows why; get_job_logs shows vLLM's output."
    else:
        summary = (
            f"Starting vLLM {vv} for {', '.join(names)} on {host.name} (TP {plan.tensor_parallel_size}"
            f"{f' x PP {plan.pipeline_parallel_size}' if plan.pipeline_parallel_size > 1 else ''}"
            f"{f' over {p.nodes} nodes' if p.nodes > 1 else ''}"
            f"{', ' + plan.quantization if plan.quantization else ''}): job {res.job_id}"
            + (f", endpoint {endpoint}" if endpoint else "")
            + "."
        )
        nxt = f"wait_for_job(job_id='{res.job_id}', until='ready'), then query_model(server_job_id='{res.job_id}')."
    return StartServerOutput(
        job_id=res.job_id,
        created=res.created,
        dry_run=p.dry_run,
        state=state,
        host=host.name,
        endpoint=endpoint,
        endpoint_note=note,
        served_models=names,
        api_key=key_mode,
        plan=plan,
        vllm_version=vv,
        command=command,
        command_line=shlex.join(command),
        job_dir=res.job_dir,
        summary=summary,
        next_action=nxt,
    )


MULTINODE_TASK_FLAGS = ("nnodes", "node-rank", "master-addr", "master-port", "headless")


def _split_over_nodes(plan: ServePlan, agents: int, tasks_per_node: int, per_node: int | None, auto_pp: bool) -> int:
    """GPUs per vLLM process; checks that TP x PP splits evenly over the processes and fits a node.

    Adds the split to ``plan`` (its ``nodes`` and a reason). One process: all TP x PP GPUs.
    """
    n_gpus = plan.tensor_parallel_size * plan.pipeline_parallel_size
    if agents == 1:
        return n_gpus
    tp, pp = plan.tensor_parallel_size, plan.pipeline_parallel_size
    if n_gpus % agents:
        raise InvalidInput(
            f"TP {tp} x PP {pp} = {n_gpus} GPUs do not split evenly over {agents} nodes.",
            "Make tensor_parallel_size x pipeline_parallel_size a multiple of nodes (PP = nodes "
            "keeps tensor parallelism inside a node).",
        )
    per_task = n_gpus // agents
    if per_node is not None and per_task * tasks_per_node > per_node:
        raise InvalidInput(
            f"TP {tp} x PP {pp} over {agents} nodes needs {per_task * tasks_per_node} GPUs per node; "
            f"the host's nodes have {per_node}.",
            "Use more nodes or a smaller TP x PP.",
        )
    nodes = agents // tasks_per_node
    plan.nodes = nodes
    why = (
        "one pipeline stage per node, TP within it (tensor parallelism needs the fast links inside a node)"
        if auto_pp
        else ("TP spans nodes: slower than PP = nodes" if tp > per_task else "as asked")
    )
    plan.reasons.insert(
        0,
        f"nodes={nodes}: {agents} vLLM processes with {per_task} GPU(s) each, {why}; SLURM task "
        "0 (the allocation's first node) serves the API, the others run headless.",
    )
    return per_task


def _request_digest(host: str, p: StartServerInput) -> str:
    doc = p.model_dump(mode="json", exclude={"idempotency_key", "dry_run"})
    return hashlib.sha256(json.dumps({"host": host, "request": doc}, sort_keys=True).encode()).hexdigest()


async def _repeat(engine: JobEngine, runtime: ServeRuntime, key: str, digest: str) -> StartServerOutput | None:
    """The answer for an ``idempotency_key`` that was used before (None: it is new).

    The engine's own check compares job specs, but ``port='auto'`` picks a new port
    on every call, so the *request* is compared here, before anything is picked.
    """
    rec = engine.catalog.get_by_key(key)
    if rec is None:
        return None
    cfg = json.loads(rec.spec_json).get("payload_config", {})
    if rec.kind != "serve" or cfg.get("request_sha256") != digest:
        raise InvalidInput(
            f"idempotency_key {key!r} was already used for job {rec.job_id} with a different request.",
            "Use a new key for a different server, or repeat the original request exactly.",
        )
    view = await engine.status(rec.job_id, with_details=False)
    host = engine.config.host(rec.host)
    port = cfg.get("port")
    endpoint = None
    if isinstance(port, int) and not view.terminal:
        endpoint = await runtime.url_for(host, str(cfg.get("bind_host") or "127.0.0.1"), port)
    command = [str(a) for a in cfg.get("argv", [])]
    return StartServerOutput(
        job_id=rec.job_id,
        created=False,
        dry_run=False,
        state=view.state,
        host=rec.host,
        endpoint=endpoint,
        endpoint_note=None,
        served_models=list(cfg.get("served_names", [])),
        api_key="env" if str(cfg.get("api_key")).startswith("env:") else cfg.get("api_key", "auto"),
        plan=ServePlan.model_validate(cfg.get("plan") or {"tensor_parallel_size": 1}),
        vllm_version=cfg.get("vllm_version"),
        command=command,
        command_line=shlex.join(command),
        job_dir=rec.job_dir,
        summary=f"Same idempotency_key as before: {view.summary}",
        next_action=None if view.terminal else f"wait_for_job(job_id='{rec.job_id}', until='ready').",
    )


# ------------------------------------------------------------------------------ stop
class StopServerInput(BaseModel):
    job_id: str = Field(description="The server's job_id.", pattern=r"^[a-z][a-z0-9-]{2,79}$")
    grace_s: float = Field(30.0, ge=0, le=60, description="Seconds for vLLM to shut down before SIGKILL.")


class StopServerOutput(BaseModel):
    job: JobView
    gpu: GpuRelease = Field(description="Whether the job's GPU memory was released (nvidia-smi).")
    summary: str


async def stop_vllm_server(engine: JobEngine, runtime: ServeRuntime, p: StopServerInput) -> StopServerOutput:
    """Graceful stop (SIGTERM to the job's process group, SIGKILL after ``grace_s``), then a GPU check."""
    view = await engine.status(p.job_id, with_details=False)
    if view.kind != "serve":
        raise InvalidInput(f"Job {p.job_id} is a {view.kind} job, not a server.", "Use cancel_job for other jobs.")
    view = await engine.cancel(p.job_id, grace_s=p.grace_s)
    host = engine.config.host(view.host)
    gpu = await check_gpu_release(engine, host, p.job_id)
    gpu_txt = (
        ("GPU memory released" if gpu.released else (gpu.note or "GPU memory still held"))
        if gpu.checked
        else (gpu.note or "GPU memory not checked")
    )
    return StopServerOutput(job=view, gpu=gpu, summary=f"{view.summary} {gpu_txt.rstrip('.')}.")
