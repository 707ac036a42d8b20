"""start_vllm_server: plan, build and run a vLLM server as a job — the orchestration only.

The steps, each in its own module, every one before the submit free of side effects:

1. resolve the request on its host (tools/serve/resolve.py): the model's architecture (a
   directory on the host is read there), the GPUs that may be used, the adapters (a
   fine-tune job's ``outputs/`` must come from a job that *succeeded*) and the served names;
2. ask the host which vLLM it has and whether bitsandbytes is there (tools/serve/host.py:
   package metadata, about a second) and which flags that version knows (cached; on a host
   whose version is new the job checks them on the host before vLLM starts, so this call
   never waits for the ~30 s ``vllm serve --help=all``);
3. plan by vLLM 0.26's own rules (tools/serve/plan.py): TP, PP, context, quantization, the
   KV cache and the concurrency at full length, each with its reason;
4. build the command (tools/serve/command.py): the typed flags of tools/serve/flags.py by
   reflection plus validated ``extra_args``, checked against the host's flags;
5. submit a ``serve`` job running the serve payload (runners/payloads/serve.py) through the
   one submit path of every workload (tools/submit.py); the payload starts vLLM, decides
   readiness on the host and writes ``ready``; answer with the endpoint.

Several nodes (``nodes`` > 1, SLURM only): the job runs the payload once per node under
``srun`` (runners/distributed.py ``srun_argv``); the payload of SLURM task 0 runs the API
server and the readiness checks, every other task runs ``vllm serve ... --headless``, all
with ``--nnodes/--node-rank/--master-addr/--master-port`` (vLLM's multi-node
multiprocessing backend, no Ray), the head being the allocation's first node.

A repeated ``idempotency_key`` returns the first answer without planning again (the
request, not the job spec, is compared: ``port='auto'`` picks a new port on every call).
The API key never appears in the command, job.json, results or logs: ``auto`` keys are made
on the host and kept in the job's 0600 env file.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import TYPE_CHECKING, Literal

from runners.config import HostConfig
from runners.distributed import srun_argv
from runners.engine import JobEngine, SubmitResult
from runners.errors import InvalidInput, NotFound
from runners.spec import JobSpec, Resources
from tools.serve.command import ServeCommand, serve_command
from tools.serve.flags import FlagCache
from tools.serve.host import VllmInstall, detect_vllm
from tools.serve.plan import plan_for_request
from tools.serve.resolve import ServeRequest, resolve_request
from tools.serve.runtime import ServeRuntime
from tools.serve.schema import ServePlan, StartServerInput, StartServerOutput
from tools.submit import submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = ["start_vllm_server"]


async def start_vllm_server(ctx: ToolContext, p: StartServerInput, *, tasks_per_node: int = 1) -> StartServerOutput:
    """Plan, check against the host's vLLM, and submit a ``serve`` job (see the module docstring).

    ``tasks_per_node`` > 1 runs several vLLM processes on each SLURM node, each counted as a
    vLLM "node": only the single-node test cluster uses it, to run the multi-node wiring for real.
    """
    host = ctx.host(p.host)
    engine, runtime = await ctx.engine(), await ctx.serve_runtime()
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
    req = await resolve_request(engine, host, p)
    install = await _installed_vllm(engine, host, FlagCache(ctx.state_dir), p.dry_run)
    plan, per_task = plan_for_request(req, p, install, agents, tasks_per_node)
    cmd = await serve_command(engine, host, p, req, plan, install, agents)
    spec = _serve_spec(host, p, req, plan, install, cmd, digest, per_task * tasks_per_node, tasks_per_node)
    res = await submit(ctx, host, spec, p)
    return await _answer(runtime, host, p, req, plan, install, cmd, res)


async def _installed_vllm(engine: JobEngine, host: HostConfig, cache: FlagCache, dry_run: bool) -> VllmInstall | None:
    """The host's vLLM (None only for a dry run on a host without it: the plan still shows)."""
    try:  # package metadata only (about a second): the slow flag check runs in the job (host.py)
        return await detect_vllm(engine, host, cache)
    except NotFound:
        if not dry_run:
            raise
        return None


def _serve_spec(
    host: HostConfig,
    p: StartServerInput,
    req: ServeRequest,
    plan: ServePlan,
    install: VllmInstall | None,
    cmd: ServeCommand,
    digest: str,
    node_gpus: int,
    tasks_per_node: int,
) -> JobSpec:
    """The ``serve`` job: the serve payload with the command, once per SLURM task when the server spans nodes."""
    agents = p.nodes * tasks_per_node
    env: dict[str, str] = {}
    if isinstance(p.gpus, list):
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in p.gpus[:node_gpus])
    gpus_per_node = node_gpus if req.tier is not None else 0
    launch = None
    if agents > 1:  # one payload (and one vllm serve) per SLURM task; task 0 serves the API
        launch = [
            *srun_argv(p.nodes, tasks_per_node, gpus_per_node, host.slurm_settings.gres),
            host.interpreter,
            "serve.py",
            "job.json",
        ]
    return JobSpec(
        kind="serve",
        name=f"vllm {req.base_name}"[:120],
        payload="serve",
        payload_config={
            "argv": cmd.command,
            "port": cmd.port if cmd.port is not None else "auto",
            "bind_host": cmd.bind,
            "served_names": req.names,
            "probe_model": req.base_name,
            "api_key": p.api_key,
            # for a repeated idempotency_key: the same answer without planning (or picking a port) again
            "request_sha256": digest,
            "plan": plan.model_dump(mode="json"),
            "vllm_version": install.version if install else None,
            "tasks": agents,
            # flags not known yet: the payload runs `vllm serve --help=all` on the host and checks them first
            "check_flags": install is not None and install.flags is None,
        },
        argv=launch,
        env=env,
        secrets=[p.api_key[4:]] if p.api_key.startswith("env:") else [],
        resources=Resources(
            gpus=gpus_per_node,
            nodes=p.nodes,
            tasks_per_node=tasks_per_node if agents > 1 else 1,
            time_limit_s=p.time_limit_s,
        ),
        endpoint_port=cmd.port,
    )


async def _answer(
    runtime: ServeRuntime,
    host: HostConfig,
    p: StartServerInput,
    req: ServeRequest,
    plan: ServePlan,
    install: VllmInstall | None,
    cmd: ServeCommand,
    res: SubmitResult,
) -> StartServerOutput:
    """The tool's answer: the endpoint (tunnelled when needed), a summary and what to call next."""
    names, command = req.names, cmd.command
    key_mode: Literal["auto", "none", "env"] = "env" if p.api_key.startswith("env:") else p.api_key  # type: ignore[assignment]
    endpoint = note = None
    if p.dry_run:
        note = "Dry run: nothing was started."
    elif cmd.port is not None:
        endpoint = await runtime.url_for(host, cmd.bind, cmd.port)
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
