"""quantize_model: check a quantization request against its host, and build its job.

The controller side never imports torch: it validates the method against the host's
GPUs (from the config, or detected by the caller) and the calibration data the method
needs, then builds a :class:`~runners.spec.JobSpec` that runs
``runners/payloads/quantize.py`` on the host. Why refuse here: a job that fails after
ten minutes of model loading because the host has no GPU, or because GPTQ was given
nothing to calibrate on, costs the agent a round trip it can avoid.

Which methods need what (verified with llm-compressor 0.14.0.1, transformers 5.17.0,
torch 2.13 CPU; docs/workflow.md):

* ``bnb-nf4``, ``bnb-int8``: bitsandbytes through transformers; CPU works.
* ``fp8-dynamic``: llm-compressor, data-free; CPU works.
* ``fp8`` (static activation scales), ``gptq``: llm-compressor, need calibration
  data; CPU works but only makes sense for small models.
* ``awq``: llm-compressor refuses to run without an accelerator.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator

from runners.config import HostConfig
from runners.errors import InvalidInput
from runners.spec import JobSpec, Resources
from tools.hosts import detect_gpus, host_gpus
from tools.model_ref import check_ref
from tools.submit import SubmitOutput, TimedSubmitOptions, next_action, submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "CALIBRATED_METHODS",
    "GPU_METHODS",
    "QuantizeInput",
    "QuantizeMethod",
    "QuantizeOutput",
    "build_quantize_spec",
    "check_quantize",
    "quantize_model",
]

QuantizeMethod = Literal["bnb-nf4", "bnb-int8", "awq", "gptq", "fp8", "fp8-dynamic"]
CALIBRATED_METHODS = frozenset({"awq", "gptq", "fp8"})
GPU_METHODS = frozenset({"awq"})
SLOW_ON_CPU = frozenset({"gptq", "fp8"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class QuantizeInput(TimedSubmitOptions):
    """Arguments of quantize_model."""

    model: str = Field(description="Hub id (fetched into the host's HF cache first: download_model) or a host path.")
    method: QuantizeMethod = Field(
        description="bnb-nf4 | bnb-int8 (bitsandbytes), awq | gptq | fp8 | fp8-dynamic (llm-compressor, for vLLM)."
    )
    calibration_dataset: str | None = Field(
        None, description="Needed by awq, gptq and fp8: a JSONL/JSON/TXT path on the host or a Hub dataset id."
    )
    num_calibration_samples: int = Field(256, ge=1, le=65_536, description="Calibration rows used.")
    output_name: str = Field("quantized", description="Directory name under the job's outputs/.")

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_ref(v, "model")

    @field_validator("calibration_dataset")
    @classmethod
    def _calib(cls, v: str | None) -> str | None:
        return None if v is None else check_ref(v, "calibration_dataset")

    @field_validator("output_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v) or v == "manifest.json":
            raise ValueError("output_name is letters, digits, '.', '_', '-' (max 64), not starting with '.'")
        return v


class QuantizeOutput(SubmitOutput):
    """The engine's submit result, plus where the checkpoint and its manifest will be."""

    method: str = Field(description="The quantization method.")
    output_dir: str = Field(description="The quantized checkpoint on the host, once the job succeeds.")
    manifest_path: str = Field(description="outputs/manifest.json: sizes, reload check, perplexity before/after.")
    gpus: int = Field(description="GPUs the job asks for.")
    notes: list[str] = Field(default_factory=list, description="Warnings that did not stop the submit.")


def check_quantize(p: QuantizeInput, host: HostConfig, detected_gpus: int | None) -> tuple[int, list[str]]:
    """GPUs to request and notes; raises :class:`InvalidInput` for a request the host cannot run.

    ``detected_gpus`` is what nvidia-smi found when the config does not say (None: unknown).
    """
    notes: list[str] = []
    if p.method in CALIBRATED_METHODS and not p.calibration_dataset:
        alt = "fp8-dynamic (no data needed)" if p.method == "fp8" else "bnb-nf4 or fp8-dynamic, which need none"
        raise InvalidInput(
            f"Method {p.method} calibrates on sample text, and no calibration_dataset was given.",
            f"Pass calibration_dataset (a JSONL of {{'text': ...}} rows on the host, or a Hub dataset id such as "
            f"'HuggingFaceH4/ultrachat_200k'), or use {alt}.",
        )
    acc = host.accelerator
    known: int | None = acc.count if acc else detected_gpus
    if p.method in GPU_METHODS and known == 0:
        how = "its config names no gpus and nvidia-smi found none" if acc is None else "its config says so"
        raise InvalidInput(
            f"Method {p.method} needs a CUDA GPU (llm-compressor's AWQ refuses to run without one), and host "
            f"{host.name!r} has none ({how}).",
            "Pick a host with a GPU (list_hosts), or use gptq / fp8-dynamic / bnb-nf4, which also run on a CPU.",
        )
    if known is None:
        if host.launcher == "slurm":
            notes.append(f"Host {host.name} names no gpus in its config; asking SLURM for 1 GPU.")
            known = 1
        else:
            notes.append(f"Could not tell whether host {host.name} has a GPU; the payload uses one if torch sees it.")
            known = 0
    gpus = known
    if gpus == 0 and p.method in SLOW_ON_CPU:
        notes.append(f"{p.method} on a CPU-only host is practical only for small models (minutes per layer).")
    if p.method in ("fp8", "fp8-dynamic"):
        notes.append(
            "Serving FP8 at full speed needs an FP8 GPU (Ada, Hopper or newer); vLLM falls back to "
            "weight-only FP8 (Marlin) on older cards."
        )
    return min(gpus, 1), notes


def build_quantize_spec(p: QuantizeInput, gpus: int, time_limit_s: int | None) -> JobSpec:
    """The job: the quantize payload on one GPU (quantization is single-device; more GPUs only idle)."""
    config = {
        "model": p.model,
        "method": p.method,
        "output_name": p.output_name,
        "calibration_dataset": p.calibration_dataset,
        "num_calibration_samples": p.num_calibration_samples,
    }
    return JobSpec(
        kind="quantize",
        name=f"quantize {p.model} {p.method}"[:120],
        payload="quantize",
        payload_config={k: v for k, v in config.items() if v is not None},
        resources=Resources(gpus=gpus, time_limit_s=time_limit_s),
    )


async def quantize_model(ctx: ToolContext, p: QuantizeInput) -> QuantizeOutput:
    """The tool: check against the host's GPUs (nvidia-smi when its config names none), then submit."""
    host = ctx.host(p.host)
    gpus, notes = check_quantize(p, host, host_gpus(host, await detect_gpus(ctx, host)).count)
    res = await submit(ctx, host, build_quantize_spec(p, gpus, p.time_limit_s), p)
    return QuantizeOutput(
        **res.model_dump(),
        method=p.method,
        output_dir=f"{res.job_dir}/outputs/{p.output_name}",
        manifest_path=f"{res.job_dir}/outputs/manifest.json",
        gpus=gpus,
        notes=notes,
        next_action=next_action(res, f"wait_for_job(job_id='{res.job_id}'); the manifest has perplexity before/after."),
    )
