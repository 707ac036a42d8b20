"""The rest of the workflow: quantize_model, download_model, list_cached_models, setup_host, submit_script.

Wiring only: the checks and job specs live in ``tools/quantize.py``, ``tools/download.py``,
``tools/setup_host.py`` and ``tools/scripts.py``; jobs go through the one engine
(``server.surface_jobs.get_engine``). This surface also lays the server's recorded host
overrides (``runners/host_overrides.py``: the python ``setup_host`` built) over the
configuration, at registration and whenever ``setup_host`` records a new one.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

from runners.config import HostConfig
from runners.engine import JobEngine
from runners.errors import OpsError
from runners.host_overrides import apply_overrides, load_overrides, record_python
from runners.spec import parse_time_limit
from server.registry import ToolSpec, add_tool
from server.state import AppState
from server.surface_jobs import get_engine
from tools.download import (
    DownloadInput,
    DownloadOutput,
    ListCachedInput,
    ListCachedOutput,
    build_download_spec,
    list_cached_models,
)
from tools.gpu_status import query_gpu_status
from tools.quantize import QuantizeInput, QuantizeOutput, build_quantize_spec, check_quantize
from tools.scripts import SubmitScriptInput, SubmitScriptOutput, build_script_spec
from tools.setup_host import (
    SetupHostInput,
    SetupHostOutput,
    build_setup_spec,
    env_dir_for,
    env_is_ready,
    requirements_for,
)

__all__ = ["register"]


def _refresh_config(state: AppState) -> None:
    """Lay the recorded overrides over the config, for the state and a running engine alike."""
    state.config = apply_overrides(state.config, load_overrides(state.state_dir))
    engine = state.services.get("engine")
    if engine is not None:
        engine.config = state.config


async def _detected_gpus(engine: JobEngine, host: HostConfig) -> int | None:
    """GPUs nvidia-smi finds on a direct host whose config names none (None: unknown or not asked)."""
    if host.accelerator is not None or host.launcher != "direct":
        return None
    try:
        gpus, note = await query_gpu_status(engine.transport(host.name))
    except OpsError:
        return None  # unknown: the quantize check then lets the payload decide
    return len(gpus) if gpus or note else None


def register(app: MCPServer, state: AppState) -> None:
    _refresh_config(state)

    async def quantize_model(p: QuantizeInput) -> QuantizeOutput:
        host = state.config.host(p.host)
        engine = await get_engine(state)
        gpus, notes = check_quantize(p, host, await _detected_gpus(engine, host))
        spec = build_quantize_spec(p, gpus, parse_time_limit(p.time_limit))
        res = await engine.submit(spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run)
        out_dir = f"{res.job_dir}/outputs/{p.output_name}"
        nxt = None if p.dry_run else f"wait_for_job(job_id='{res.job_id}'); the manifest has perplexity before/after."
        return QuantizeOutput(
            **res.model_dump(),
            method=p.method,
            output_dir=out_dir,
            manifest_path=f"{res.job_dir}/outputs/manifest.json",
            gpus=gpus,
            notes=notes,
            next_action=nxt,
        )

    add_tool(
        app,
        ToolSpec(
            "quantize_model",
            "Quantize a model on a host (bnb-nf4/int8, or awq/gptq/fp8 for vLLM); returns a job_id at once.",
            open_world=True,
        ),
        QuantizeInput,
        quantize_model,
        QuantizeOutput,
    )

    async def download_model(p: DownloadInput) -> DownloadOutput:
        host = state.config.host(p.host)
        engine = await get_engine(state)
        spec = build_download_spec(p, host, os.environ)
        res = await engine.submit(spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run)
        nxt = None if p.dry_run else f"wait_for_job(job_id='{res.job_id}'), then list_cached_models."
        return DownloadOutput(
            **res.model_dump(), model=p.model, on_login_node=host.launcher == "slurm", next_action=nxt
        )

    add_tool(
        app,
        ToolSpec(
            "download_model",
            "Fetch a Hub model into a host's HF cache (resumable; SLURM: on the login node); returns a job_id.",
            open_world=True,
            idempotent=True,
        ),
        DownloadInput,
        download_model,
        DownloadOutput,
    )

    async def _list_cached(p: ListCachedInput) -> ListCachedOutput:
        host = state.config.host(p.host)
        engine = await get_engine(state)
        return await list_cached_models(engine.transport(host.name), host)

    add_tool(
        app,
        ToolSpec(
            "list_cached_models",
            "Models and datasets in a host's Hugging Face cache, with sizes and revisions.",
            read_only=True,
            idempotent=True,
            open_world=True,
        ),
        ListCachedInput,
        _list_cached,
        ListCachedOutput,
    )

    async def setup_host(p: SetupHostInput) -> SetupHostOutput:
        host = state.config.host(p.host)
        engine = await get_engine(state)
        env_dir = env_dir_for(await engine.workdir(host.name), p.name)
        python = f"{env_dir}/bin/python"
        reqs = requirements_for(p)
        base = {"host": host.name, "env_dir": env_dir, "python": python, "requirements": reqs}
        if not p.dry_run and await env_is_ready(engine.transport(host.name), env_dir, reqs, p.python):
            recorded = False
            if p.record_as_host_python and host.python != python:
                record_python(state.state_dir, host.name, python)
                _refresh_config(state)
                recorded = True
            elif p.record_as_host_python:
                recorded = True
            what = "recorded as" if recorded else "not recorded as"
            return SetupHostOutput(
                **base,
                status="ready",
                recorded_as_host_python=recorded,
                summary=f"{env_dir} on {host.name} already satisfies the request; {what} the host's python.",
            )
        spec = build_setup_spec(p, env_dir, host.launcher == "slurm")
        res = await engine.submit(spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run)
        return SetupHostOutput(
            **base,
            status="dry_run" if p.dry_run else "submitted",
            recorded_as_host_python=False,
            job_id=res.job_id,
            submit=res,
            summary=res.summary,
            next_action=None
            if p.dry_run
            else f"wait_for_job(job_id='{res.job_id}'); when it succeeded, call setup_host again with the same "
            "arguments to record the environment as the host's python.",
        )

    add_tool(
        app,
        ToolSpec(
            "setup_host",
            "Build a uv env of pinned vllm/unsloth (or llmcompressor) on a host; rerun when done to adopt it.",
            open_world=True,
            idempotent=True,
        ),
        SetupHostInput,
        setup_host,
        SetupHostOutput,
    )

    async def submit_script(p: SubmitScriptInput) -> SubmitScriptOutput:
        host = state.config.host(p.host)
        spec = build_script_spec(p, host)
        engine = await get_engine(state)
        res = await engine.submit(spec, host.name, idempotency_key=p.idempotency_key, dry_run=p.dry_run)
        nxt = None if p.dry_run else f"Follow it with get_job_logs(job_id='{res.job_id}') or wait_for_job."
        return SubmitScriptOutput(**res.model_dump(), repo=p.repo, ref=p.ref, script=p.script, next_action=nxt)

    add_tool(
        app,
        ToolSpec(
            "submit_script",
            "Clone a git repo into a job and run `python script args` (hosts with allow_scripts only).",
            open_world=True,
        ),
        SubmitScriptInput,
        submit_script,
        SubmitScriptOutput,
    )
