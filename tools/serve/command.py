"""The ``vllm serve`` command of a planned server: typed flags from the plan, then ``extra_args``.

The flags come from :class:`~tools.serve.flags.VllmServeArgs` by reflection (only what differs
from vLLM's defaults), checked against the host's own flag list when it is known; the
agent's ``extra_args`` follow, validated the same way (or, before the host's flags are known,
by name and value here and by the server job on the host). The bind address is the host's
loopback, except on SLURM, where the API server must be reachable from the login node and
the payload picks the port on the compute node (``{port}`` in the command until then).
"""

from __future__ import annotations

from dataclasses import dataclass

from runners.config import HostConfig
from runners.engine import JobEngine
from runners.errors import NotFound
from tools.serve.flags import (
    KnownFlags,
    VllmServeArgs,
    build_extra_argv,
    build_extra_argv_unchecked,
    check_multinode_flags,
    flag_name,
    to_argv,
)
from tools.serve.host import VllmInstall, check_port
from tools.serve.resolve import ServeRequest
from tools.serve.schema import ServePlan, StartServerInput

__all__ = ["ServeCommand", "serve_command"]


@dataclass(frozen=True)
class ServeCommand:
    """The command and where the server will listen."""

    command: list[str]  # ["vllm", "serve", model, flags...]
    bind: str
    port: int | None  # None: SLURM, the payload picks a free port on the node


async def serve_command(
    engine: JobEngine,
    host: HostConfig,
    p: StartServerInput,
    req: ServeRequest,
    plan: ServePlan,
    install: VllmInstall | None,
    agents: int,
) -> ServeCommand:
    """Check the port (not on SLURM), then build and check the flags; ``agents`` vLLM processes (``--nnodes``)."""
    slurm = host.launcher == "slurm"
    bind = "0.0.0.0" if slurm else "127.0.0.1"
    port: int | None = p.port if isinstance(p.port, int) else None
    if not slurm:
        port = await check_port(engine, host, bind, port)
    known: KnownFlags | None = install.flags if install else None
    argv = to_argv(_typed_args(p, req, plan, agents, bind, port), known)
    if agents > 1 and known is not None:
        check_multinode_flags(known, host.name)
    if port is None:  # SLURM: the payload picks a free port on the compute node
        i = argv.index("--port") if "--port" in argv else -1
        if i >= 0:
            argv[i + 1] = "{port}"
        else:
            argv += ["--port", "{port}"]
    if p.extra_args:
        if install is None:
            raise NotFound(
                "extra_args can't be checked: vLLM is not installed on the host.",
                "Install vLLM there first, or drop extra_args.",
            )
        typed = {flag_name(f) for f in VllmServeArgs.model_fields}
        argv += (
            build_extra_argv(p.extra_args, known, typed)
            if known is not None
            else build_extra_argv_unchecked(p.extra_args, typed)
        )
    return ServeCommand(["vllm", "serve", *argv], bind, port)


def _typed_args(
    p: StartServerInput, req: ServeRequest, plan: ServePlan, agents: int, bind: str, port: int | None
) -> VllmServeArgs:
    """The options we set, from the request and its plan."""
    return VllmServeArgs(
        model=p.model,
        served_model_name=[req.base_name] if p.served_model_name else None,
        tensor_parallel_size=plan.tensor_parallel_size,
        pipeline_parallel_size=plan.pipeline_parallel_size,
        max_model_len=plan.max_model_len,
        gpu_memory_utilization=p.gpu_memory_utilization,
        dtype=p.dtype,
        kv_cache_dtype=p.kv_cache_dtype,
        quantization=plan.quantization,
        enable_prefix_caching=p.enable_prefix_caching,
        max_num_seqs=p.max_num_seqs,
        enable_lora=bool(req.adapters),
        max_loras=max(1, len(req.adapters)),
        max_lora_rank=req.lora_rank or 16,
        lora_modules=req.adapters or None,
        nnodes=agents,
        distributed_executor_backend="mp" if agents > 1 else None,
        host=bind,
        port=port or 8000,
    )
