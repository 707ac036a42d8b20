"""setup_host: a uv environment of versions known to work together, built on the host by a job.

Why pins, not "latest": vLLM pins torch exactly, Unsloth caps transformers and TRL, and
llm-compressor caps transformers too; a fresh ``pip install vllm unsloth`` resolves to
whatever was released last night. The pins below were read from the packages' metadata
(docs/workflow.md): torch 2.11.0 + transformers 5.17.0 + vllm 0.26.0
+ unsloth 2026.10.9 + trl 1.15.0. llm-compressor 0.14.0.1 wants compressed-tensors 0.19.0
while vllm 0.26.0 pins 0.17.0, so it gets its own environment (``components=["llmcompressor"]``).

Why a job: installing a CUDA torch stack takes minutes. On a SLURM host it runs on the
login node (compute nodes are offline). When the job has succeeded, calling
``setup_host`` again with the same arguments finds the environment ready (its
``llm-ops-env.json`` marker matches) and records its interpreter as the host's
``python`` in the server's state (runners/host_overrides.py) — the user's config file
is never rewritten.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from runners.engine import SubmitResult
from runners.errors import InvalidInput
from runners.host_overrides import record_python
from runners.spec import JobSpec, Resources
from runners.transports.base import Transport
from tools.submit import SubmitOptions, next_action, submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "MARKER",
    "PINS",
    "Component",
    "SetupHostInput",
    "SetupHostOutput",
    "build_setup_spec",
    "env_dir_for",
    "env_is_ready",
    "requirements_for",
    "setup_host",
]

Component = Literal["vllm", "unsloth", "llmcompressor"]
MARKER = "llm-ops-env.json"
# Versions that go together (read from each package's metadata; see docs/workflow.md).
TORCH, TRANSFORMERS = "torch==2.11.0", "transformers==5.17.0"
PINS: dict[str, list[str]] = {
    "vllm": ["vllm==0.26.0", TORCH, TRANSFORMERS, "huggingface_hub==1.33.0"],
    "unsloth": [
        "unsloth==2026.10.9",
        "trl==1.15.0",
        "peft==0.21.0",
        "accelerate==1.15.0",
        "datasets==4.8.5",
        "bitsandbytes==0.50.2",
        TORCH,
        TRANSFORMERS,
        "huggingface_hub==1.33.0",
    ],
    "llmcompressor": [
        "llmcompressor==0.14.0.1",
        "compressed-tensors==0.19.0",
        "datasets==4.8.5",
        TORCH,
        TRANSFORMERS,
        "huggingface_hub==1.33.0",
    ],
}
_REQ = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(\[[A-Za-z0-9,._-]+\])?((==|>=|<=|~=|!=|<|>)[A-Za-z0-9.*+!_-]+)?$")
_WHEEL = re.compile(r"^/[^\x00-\x1f ]+\.whl$")
_PY = re.compile(r"^3\.\d{1,2}(\.\d{1,2})?$")
_ENV_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")


class SetupHostInput(SubmitOptions):
    """Arguments of setup_host."""

    components: list[Component] = Field(
        default=["vllm", "unsloth"],
        description="Stacks to install: vllm, unsloth (one env), or llmcompressor (its own env).",
    )
    python: str = Field("3.12", description="Python version of the environment (uv fetches it if missing).")
    extra_packages: list[str] = Field(
        default=[],
        max_length=64,
        description="More requirements: 'name==1.2.3' (pin them) or an absolute path to a wheel on the host.",
    )
    env_name: str | None = Field(
        None, description="Directory under <workdir>/envs/; default 'llm-ops' (or 'llmcompressor')."
    )
    record_as_host_python: bool = Field(
        True, description="Once ready, payloads on this host run with this environment's python."
    )

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not _PY.match(v):
            raise ValueError(f"{v!r} is not a Python version like 3.12")
        return v

    @field_validator("extra_packages")
    @classmethod
    def _extra(cls, v: list[str]) -> list[str]:
        for req in v:
            if not (_REQ.match(req) or _WHEEL.match(req)) or ".." in req.split("/"):
                raise ValueError(f"{req!r} is not a requirement (name==version) or an absolute .whl path")
        return v

    @field_validator("env_name")
    @classmethod
    def _env_name(cls, v: str | None) -> str | None:
        if v is not None and not _ENV_NAME.match(v):
            raise ValueError("env_name is letters, digits, '_', '-' (max 64)")
        return v

    @model_validator(mode="after")
    def _shape(self) -> SetupHostInput:
        if "llmcompressor" in self.components and len(set(self.components)) > 1:
            raise ValueError(
                "llmcompressor pins compressed-tensors 0.19.0 and vllm 0.26.0 pins 0.17.0: set it up in its own "
                "call (components=['llmcompressor'])"
            )
        if not self.components and not self.extra_packages:
            raise ValueError("nothing to install: give components or extra_packages")
        return self

    @property
    def name(self) -> str:
        return self.env_name or ("llmcompressor" if self.components == ["llmcompressor"] else "llm-ops")


class SetupHostOutput(BaseModel):
    host: str
    status: Literal["ready", "submitted", "dry_run"] = Field(
        description="ready: the environment already satisfies the request (nothing submitted)."
    )
    env_dir: str = Field(description="The environment on the host.")
    python: str = Field(description="Its interpreter.")
    recorded_as_host_python: bool = Field(description="True when payloads on this host now run with it.")
    requirements: list[str]
    job_id: str | None = None
    submit: SubmitResult | None = None
    summary: str
    next_action: str | None = None


def requirements_for(p: SetupHostInput) -> list[str]:
    """The sorted, de-duplicated requirement list for the request."""
    reqs: set[str] = set(p.extra_packages)
    for c in p.components:
        reqs.update(PINS[c])
    return sorted(reqs)


def env_dir_for(workdir: str, name: str) -> str:
    return f"{workdir.rstrip('/')}/envs/{name}"


async def env_is_ready(transport: Transport, env_dir: str, requirements: list[str], python: str) -> bool:
    """True when the environment's marker says it was built for exactly this request and its python exists.

    The payload does the thorough check (every pin installed at its version) before it
    writes the marker, and again on every run.
    """
    raw = await transport.read_range(f"{env_dir}/{MARKER}", 0, 1 << 20)
    if not raw:
        return False
    try:
        built = json.loads(raw)
    except ValueError:
        return False
    if built.get("requirements") != requirements or built.get("python") != python:
        return False
    return await transport.exists(f"{env_dir}/bin/python")


def build_setup_spec(p: SetupHostInput, env_dir: str, slurm: bool) -> JobSpec:
    """The job: the stdlib-only setup payload, run by the host's current interpreter (any Python 3 will do)."""
    if not requirements_for(p):
        raise InvalidInput("Nothing to install.", "Give components or extra_packages.")
    return JobSpec(
        kind="command",
        name=f"setup_host {p.name}: {', '.join(p.components) or 'extra packages'}"[:120],
        payload="setup_host",
        payload_config={"env_dir": env_dir, "python": p.python, "requirements": requirements_for(p)},
        env={"HF_HUB_OFFLINE": "0", "UV_NO_PROGRESS": "1"},
        resources=Resources(gpus=0),
        launcher="direct" if slurm else None,
    )


async def setup_host(ctx: ToolContext, p: SetupHostInput) -> SetupHostOutput:
    """The tool: an environment that already satisfies the request is recorded as the host's python
    (the server's overrides, never the user's config); otherwise the setup job is submitted."""
    host = ctx.host(p.host)
    env_dir = env_dir_for(await (await ctx.engine()).workdir(host.name), p.name)
    python = f"{env_dir}/bin/python"
    reqs = requirements_for(p)
    base = {"host": host.name, "env_dir": env_dir, "python": python, "requirements": reqs}
    if not p.dry_run and await env_is_ready(ctx.transport(host), env_dir, reqs, p.python):
        if p.record_as_host_python and host.python != python:
            record_python(ctx.state_dir, host.name, python)
            ctx.apply_host_overrides()
        what = "recorded as" if p.record_as_host_python else "not recorded as"
        return SetupHostOutput(
            **base,
            status="ready",
            recorded_as_host_python=p.record_as_host_python,
            summary=f"{env_dir} on {host.name} already satisfies the request; {what} the host's python.",
        )
    res = await submit(ctx, host, build_setup_spec(p, env_dir, host.launcher == "slurm"), p)
    return SetupHostOutput(
        **base,
        status="dry_run" if p.dry_run else "submitted",
        recorded_as_host_python=False,
        job_id=res.job_id,
        submit=res,
        summary=res.summary,
        next_action=next_action(
            res,
            f"wait_for_job(job_id='{res.job_id}'); when it succeeded, call setup_host again with the same "
            "arguments to record the environment as the host's python.",
        ),
    )
