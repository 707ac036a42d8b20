"""What a start_vllm_server request names, read where it lives: the model, the GPUs, the adapters.

A model directory on the host is read there (its config.json); a hub id or catalog name by
tools/models.py. An adapter given as a fine-tune job must come from a job that *succeeded*
on the same host; its rank (adapter_config.json ``r``) sets vLLM's ``--max-lora-rank``.
Nothing is written anywhere.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from runners.accelerators import GpuTier
from runners.config import HostConfig
from runners.engine import JobEngine
from runners.errors import Conflict, InvalidInput, NotFound
from runners.states import JobState
from runners.views import JobView
from tools.hosts import host_gpus
from tools.models import ModelArch, arch_from_config, resolve_model
from tools.serve.flags import MAX_LORA_RANKS, LoraModule
from tools.serve.schema import LoraAdapterRef, StartServerInput

__all__ = ["ServeRequest", "resolve_request"]


@dataclass(frozen=True)
class ServeRequest:
    """A request resolved against its host: what to plan for and what to serve under which names."""

    arch: ModelArch
    tier: GpuTier | None  # None: the host declares no GPUs (no memory plan)
    gpus: int | None  # GPUs that may be used on each node (None: not declared)
    adapters: list[LoraModule]
    lora_rank: int | None  # vLLM's --max-lora-rank for the largest adapter (None: no adapters)
    base_name: str
    names: list[str]  # served names: the base first, then the adapters


async def resolve_request(engine: JobEngine, host: HostConfig, p: StartServerInput) -> ServeRequest:
    """The model's architecture, the GPUs that may be used, the adapters and the served names."""
    arch = await _model_arch(engine, host, p.model)
    g = host_gpus(host)
    tier, count = g.sized_tier(), g.count
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
    return ServeRequest(arch, tier, count, adapters, lora_rank, base_name, names)


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
