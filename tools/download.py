"""download_model and list_cached_models: the host's Hugging Face cache, filled and read.

Why a job for the download: a 140 GB checkpoint takes longer than any tool call, and
``snapshot_download`` resumes, so a job that is resubmitted continues where it stopped.
On a SLURM host the job runs on the login node with the direct launcher over the same
transport (``JobSpec.launcher = "direct"``): compute nodes are usually offline, and
their host env often says ``HF_HUB_OFFLINE=1``, which this one job overrides.

Why the cache listing runs on the host: only the host knows what its cache holds.
``list_cached_models`` runs the host probe runners/payloads/probes/hf_cache.py
(huggingface_hub's ``scan_cache_dir``) with the host's interpreter and HF variables, in one
round trip.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field, field_validator

from runners.config import HostConfig
from runners.errors import CommandFailed
from runners.payloads.job_io import EXIT_MISSING_DEPENDENCY
from runners.probes import probe_argv
from runners.spec import JobSpec, Resources
from runners.transports.base import Transport
from tools.model_ref import check_ref
from tools.submit import SubmitOptions, SubmitOutput, next_action, submit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = [
    "HF_ENV_VARS",
    "CachedModel",
    "CachedRevision",
    "DownloadInput",
    "DownloadOutput",
    "ListCachedInput",
    "ListCachedOutput",
    "build_download_spec",
    "download_model",
    "list_cached_models",
    "parse_scan",
]

_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$")
_PATTERN = re.compile(r"^[^\x00-\x1f]{1,200}$")
# What decides where the cache is and how the Hub is reached; passed to the cache scan.
HF_ENV_VARS = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME", "HF_ENDPOINT")
SCAN_TIMEOUT_S = 60.0
NO_HUB_EXIT = EXIT_MISSING_DEPENDENCY  # the hf_cache.py probe: huggingface_hub is not installed


class DownloadInput(SubmitOptions):
    """Arguments of download_model."""

    model: str = Field(description="Hub repository id, e.g. 'meta-llama/Llama-3.1-8B-Instruct'.")
    revision: str | None = Field(None, description="Branch, tag or commit; default main.")
    allow_patterns: list[str] | None = Field(
        None, max_length=64, description="Only files matching these globs, e.g. ['*.safetensors', '*.json']."
    )

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_ref(v, "model", paths="none")

    @field_validator("revision")
    @classmethod
    def _revision(cls, v: str | None) -> str | None:
        if v is not None and (not _REVISION.match(v) or ".." in v):
            raise ValueError(f"{v!r} is not a branch, tag or commit")
        return v

    @field_validator("allow_patterns")
    @classmethod
    def _patterns(cls, v: list[str] | None) -> list[str] | None:
        for pat in v or []:
            if not _PATTERN.match(pat):
                raise ValueError(f"{pat!r} is not a file pattern")
        return v


class DownloadOutput(SubmitOutput):
    model: str = Field(description="The repository being fetched.")
    on_login_node: bool = Field(description="True on SLURM hosts: the download runs on the login node.")


class ListCachedInput(BaseModel):
    host: str | None = Field(None, description="Host from list_hosts; the default host when omitted.")


class CachedRevision(BaseModel):
    commit: str
    refs: list[str] = Field(default_factory=list, description="Branches/tags pointing at it (e.g. main).")
    size_bytes: int
    files: int
    snapshot_path: str = Field(description="Load from here, or by repo id with the same HF_HOME.")


class CachedModel(BaseModel):
    repo_id: str
    repo_type: str = Field(description="model, dataset or space.")
    size_bytes: int
    size_gib: float
    files: int
    last_modified: datetime | None = None
    revisions: list[CachedRevision]


class ListCachedOutput(BaseModel):
    host: str
    cache_dir: str = Field(description="The hub cache directory on the host.")
    models: list[CachedModel]
    total_bytes: int
    warnings: list[str] = Field(default_factory=list, description="Corrupt cache entries huggingface_hub skipped.")
    summary: str


def build_download_spec(p: DownloadInput, host: HostConfig, environ: Mapping[str, str]) -> JobSpec:
    """The job: the download payload; on SLURM hosts on the login node; the token as a secret if set."""
    secrets = ["HF_TOKEN"] if "HF_TOKEN" in environ and "HF_TOKEN" not in host.secrets else []
    config = {"model": p.model, "revision": p.revision, "allow_patterns": p.allow_patterns}
    return JobSpec(
        kind="download",
        name=f"download {p.model}"[:120],
        payload="download",
        payload_config={k: v for k, v in config.items() if v is not None},
        # Why: the host env may declare the Hub offline for compute nodes; this job is the one that goes online.
        env={"HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_PROGRESS_BARS": "1"},
        secrets=secrets,
        resources=Resources(gpus=0),
        launcher="direct" if host.launcher == "slurm" else None,
    )


async def download_model(ctx: ToolContext, p: DownloadInput, environ: Mapping[str, str]) -> DownloadOutput:
    """The tool: the download job on the host (its login node on SLURM); ``environ`` holds HF_TOKEN if any."""
    host = ctx.host(p.host)
    res = await submit(ctx, host, build_download_spec(p, host, environ), p)
    return DownloadOutput(
        **res.model_dump(),
        model=p.model,
        on_login_node=host.launcher == "slurm",
        next_action=next_action(res, f"wait_for_job(job_id='{res.job_id}'), then list_cached_models."),
    )


def parse_scan(host: str, stdout: str) -> ListCachedOutput:
    """The scan snippet's JSON as a typed listing, largest first."""
    try:
        doc = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError) as e:
        raise CommandFailed(
            f"The cache scan on {host} printed no result.", "Check the host's python (list_hosts)."
        ) from e
    if "error" in doc:
        raise CommandFailed(f"The cache scan on {host} failed: {doc['error']}.", "Install huggingface_hub there.")
    models = []
    for r in doc.get("repos", []):
        lm = r.get("last_modified")
        models.append(
            CachedModel(
                repo_id=r["repo_id"],
                repo_type=r["repo_type"],
                size_bytes=r["size_bytes"],
                size_gib=round(r["size_bytes"] / 2**30, 3),
                files=r["files"],
                last_modified=datetime.fromtimestamp(lm, UTC) if isinstance(lm, int | float) else None,
                revisions=[CachedRevision(**v) for v in r.get("revisions", [])],
            )
        )
    models.sort(key=lambda m: -m.size_bytes)
    total = sum(m.size_bytes for m in models)
    desc = ", ".join(f"{m.repo_id} ({m.size_gib:.2f} GiB)" for m in models[:8])
    more = f" and {len(models) - 8} more" if len(models) > 8 else ""
    summary = (
        f"{len(models)} cached repos on {host}, {total / 2**30:.2f} GiB in {doc['cache_dir']}: {desc}{more}."
        if models
        else f"The HF cache on {host} ({doc['cache_dir']}) is empty."
    )
    return ListCachedOutput(
        host=host,
        cache_dir=doc["cache_dir"],
        models=models,
        total_bytes=total,
        warnings=doc.get("warnings", []),
        summary=summary,
    )


async def list_cached_models(transport: Transport, host: HostConfig) -> ListCachedOutput:
    """Scan the host's HF cache with its interpreter and its HF environment variables."""
    env_args = []
    for k in HF_ENV_VARS:
        if k in host.env:
            v = host.env[k]
            if v.startswith("~"):
                v = await transport.expand_path(v)
            env_args.append(f"{k}={v}")
    argv = ["env", *env_args, *probe_argv("hf_cache.py", python=host.interpreter)]
    res = await transport.run(argv, timeout=SCAN_TIMEOUT_S)
    if res.rc == NO_HUB_EXIT:
        raise CommandFailed(
            f"huggingface_hub is not installed in {host.interpreter} on {host.name}.",
            "Run setup_host, or set the host's python to an environment that has it.",
        )
    res.check(f"The HF cache scan on {host.name}")
    return parse_scan(host.name, res.out)
