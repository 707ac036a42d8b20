"""start_vllm_server's plan: tensor/pipeline parallel sizes, context and quantization by vLLM's rules.

Pure functions of their inputs (the model's architecture, the request, the host's GPU tier
and count, the quantization methods the host can run); nothing here touches a host. The
rules are vLLM 0.26's own (tools/serve/vllm_memory.py, through tools/plan.py): the smallest
tensor-parallel size that fits and divides the heads, where "fits" is what vLLM checks at
start — weights, profile-run activations, non-torch and CUDA graph memory and ONE
``max_model_len`` sequence within ``gpu_memory_utilization`` (``max_num_seqs`` is a cap, not
a demand); ``max_model_len`` shortened only when one sequence does not fit; quantization only
when the weights leave no room, and only with a method the host can run; the KV cache tokens
and the concurrency at full length reported as vLLM logs them. Each choice has its reason; a
model that can't fit raises :class:`DoesNotFit` naming what would (tiers and GPU counts).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from runners.accelerators import TIERS, GpuTier
from runners.errors import DoesNotFit, InvalidInput
from tools.models import ModelArch
from tools.serve.schema import ServePlan, StartServerInput

if TYPE_CHECKING:
    from tools.plan import InferencePlan
    from tools.serve.host import VllmInstall
    from tools.serve.resolve import ServeRequest

__all__ = ["plan_for_request", "plan_server", "split_over_nodes"]

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
_NO_GPUS = (
    "The host declares no GPUs (set `gpus` in its config): no memory plan; vLLM's defaults "
    "apply where 'auto' was asked."
)


def plan_for_request(
    req: ServeRequest, p: StartServerInput, install: VllmInstall | None, agents: int, tasks_per_node: int
) -> tuple[ServePlan, int]:
    """The plan for a resolved request on its host, and the GPUs each of the ``agents`` vLLM processes gets.

    Spanning nodes with TP and PP left at their defaults puts one pipeline stage on each node.
    """
    asked = p
    if agents > 1 and p.pipeline_parallel_size == 1 and p.tensor_parallel_size == "auto":
        asked = p.model_copy(update={"pipeline_parallel_size": agents})
    plan = plan_server(
        req.arch,
        asked,
        req.tier,
        req.gpus * p.nodes if req.gpus is not None else None,
        lora_rank=req.lora_rank,
        max_loras=max(1, len(req.adapters)),
        methods=install.quantization_methods() if install else None,
    )
    per_task = split_over_nodes(plan, agents, tasks_per_node, req.gpus, auto_pp=asked is not p)
    if install is None:
        plan.reasons.append("vLLM is not installed on the host: this dry run could not check the flags.")
    elif install.flags is None:
        plan.reasons.append(
            f"vLLM {install.version}'s flags are not known here yet (first server on {install.host}): the job checks "
            "them with `vllm serve --help=all` on the host before it starts vLLM (about 30 s on a GPU host) and "
            "fails at once on a wrong one; later calls check them before submitting."
        )
    return plan, per_task


def split_over_nodes(plan: ServePlan, agents: int, tasks_per_node: int, per_node: int | None, auto_pp: bool) -> int:
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
    from tools.memory_settings import MemoryInput, resolve_settings
    from tools.plan import plan_inference

    if p.pipeline_parallel_size > 1:
        return _plan_pipeline(arch, p, tier, gpus, lora_rank=lora_rank, max_loras=max_loras, methods=methods)
    explicit_tp = p.tensor_parallel_size if isinstance(p.tensor_parallel_size, int) else None
    limit = gpus or explicit_tp or 1
    if explicit_tp is not None:
        _check_tp(arch, explicit_tp, limit, gpus)
    quant_req = p.quantization.lower()
    if quant_req not in ("auto", "none") and not re.fullmatch(r"[a-z0-9_.-]{1,64}", quant_req):
        raise InvalidInput(f"quantization {p.quantization!r} is not a method name.", "Use auto, none, fp8, ...")
    vllm_quant: str | None = None if quant_req in ("auto", "none") else quant_req
    mml = p.max_model_len if isinstance(p.max_model_len, int) else None
    if tier is None:
        return ServePlan(
            tensor_parallel_size=explicit_tp or 1,
            quantization=vllm_quant,
            max_model_len=mml,
            max_num_seqs=p.max_num_seqs,
            reasons=[_NO_GPUS],
        )
    reasons: list[str] = []
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
        raise _does_not_fit(arch, s, tier, limit, seq_len, quant_req)
    return _fitted_plan(arch, p, tier, gpus, plan, reasons, explicit_tp, quant_req, vllm_quant, methods)


def _plan_pipeline(
    arch: ModelArch,
    p: StartServerInput,
    tier: GpuTier | None,
    gpus: int | None,
    *,
    lora_rank: int | None,
    max_loras: int,
    methods: frozenset[str] | None,
) -> ServePlan:
    """``pipeline_parallel_size`` > 1: the largest stage planned as a model of its own on ``gpus / pp`` GPUs."""
    pp = p.pipeline_parallel_size
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


def _check_tp(arch: ModelArch, explicit_tp: int, limit: int, gpus: int | None) -> None:
    """An explicit tensor_parallel_size must divide the heads as vLLM requires and fit the GPUs there are."""
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


def _does_not_fit(
    arch: ModelArch, settings: Any, tier: GpuTier, limit: int, seq_len: int, quant_req: str
) -> DoesNotFit:
    """The refusal for a model that does not fit even one short sequence, naming where it would fit."""
    from tools.plan import MIN_SERVE_CONTEXT

    hint = f"It would fit on: {_would_fit(arch, settings) or 'no single node we know'}"
    if quant_req == "none":
        hint += "; or allow quantization ('auto')"
    return DoesNotFit(
        f"{arch.name} does not fit {limit}x {tier.id} for serving: even one sequence of "
        f"{min(seq_len, MIN_SERVE_CONTEXT)} tokens leaves no room for the weights and vLLM's working memory"
        + (" (no quantization allowed)." if quant_req == "none" else ", quantized or not."),
        hint + ".",
    )


def _fitted_plan(
    arch: ModelArch,
    p: StartServerInput,
    tier: GpuTier,
    gpus: int | None,
    plan: InferencePlan,
    reasons: list[str],
    explicit_tp: int | None,
    quant_req: str,
    vllm_quant: str | None,
    methods: frozenset[str] | None,
) -> ServePlan:
    """A plan that fits, with the reason for each of its settings."""
    limit = gpus or explicit_tp or 1
    mml = p.max_model_len if isinstance(p.max_model_len, int) else None
    seq_len = mml or arch.max_position or 4096
    tp = explicit_tp or plan.tensor_parallel_size
    why_tp = _tp_reason(arch, plan, explicit_tp, tp)
    if why_tp is not None:
        reasons.append(why_tp)
    if quant_req == "auto":
        vllm_quant = _auto_quantization(arch, plan, reasons, seq_len, limit, tier, methods)
    out_mml = _context(plan, reasons, mml, seq_len, tp, tier)
    full_mml = plan.max_model_len
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


def _tp_reason(arch: ModelArch, plan: InferencePlan, explicit_tp: int | None, tp: int) -> str | None:
    """Why the tensor-parallel size is ``tp`` (None: asked for, and no smaller one would fit)."""
    if explicit_tp is not None and plan.tensor_parallel_size < explicit_tp:
        return f"TP {explicit_tp} as asked (TP {plan.tensor_parallel_size} would already fit)."
    if explicit_tp is not None:
        return None
    smaller = [t for t in _valid_tps(arch, tp) if t < tp]
    why = (
        f"the weights ({plan.weights_gib:g} GiB) and one {plan.max_model_len}-token sequence fit on one GPU"
        if tp == 1
        else f"TP {smaller[-1] if smaller else 1} does not fit, and {tp} divides the {arch.num_heads} heads"
    )
    return f"tensor_parallel_size {tp}: {why}."


def _auto_quantization(
    arch: ModelArch,
    plan: InferencePlan,
    reasons: list[str],
    seq_len: int,
    limit: int,
    tier: GpuTier,
    methods: frozenset[str] | None,
) -> str | None:
    """vLLM's --quantization for ``quantization='auto'`` (None: none, or as the checkpoint stores it), with its reason."""
    from tools.plan import MIN_SERVE_CONTEXT

    q_plan = plan.quantization
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
    return vllm_quant


def _context(
    plan: InferencePlan, reasons: list[str], mml: int | None, seq_len: int, tp: int, tier: GpuTier
) -> int | None:
    """vLLM's --max-model-len (None: the model's own), refusing an asked-for length that does not fit."""
    assert plan.max_model_len is not None
    if mml is not None and plan.max_model_len < mml:
        raise DoesNotFit(
            f"max_model_len {mml}: one sequence of {mml} tokens does not fit the KV cache on {tp}x {tier.id} "
            f"(vLLM would refuse to start).",
            f"Use max_model_len {plan.max_model_len} or less, kv_cache_dtype='fp8', a higher "
            "gpu_memory_utilization, or more GPUs.",
        )
    out_mml = plan.max_model_len if (mml is not None or plan.max_model_len < seq_len) else None
    if mml is None and out_mml is None:
        reasons.append(f"max_model_len: the model's own ({seq_len}); one such sequence fits the KV cache.")
    elif mml is None:
        reasons.append(
            f"max_model_len {out_mml} (the model allows {seq_len}): one {seq_len}-token sequence does not fit "
            "the KV cache; this is the longest that does."
        )
    return out_mml


def _valid_tps(arch: ModelArch, limit: int) -> list[int]:
    from tools.memory_settings import tp_is_valid

    return [t for t in range(1, limit + 1) if tp_is_valid(arch, t)]


def _would_fit(arch: ModelArch, settings: Any) -> str:
    """'2x H100, 1x H200 ...': what the same workload fits on (for DoesNotFit)."""
    from tools.memory_core import min_gpus as _min_gpus

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


def _method_need(method: str) -> str:
    return "bitsandbytes" if method == "bitsandbytes" else method
