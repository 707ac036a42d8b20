"""evaluate_model: the loss / perplexity of a model on a dataset and lm-eval benchmark tasks, as a job.

The controller side. It never imports torch or lm_eval: it resolves what to evaluate (a model,
a model + adapter, a fine-tune job's output, or a ready server job), checks the dataset with the
fine-tune's own stdlib checker (``runners/payloads/dataset_formats.py``), uploads the user's local
task files, and builds the job that ``runners/payloads/evaluate.py`` runs on the host.

A fine-tune job as the target brings its settings along: its base model, its dataset and its
``eval_fraction`` / ``seed`` / ``max_seq_length`` / ``chat_template``, so the default evaluation
is the fine-tune's own held-out split, scored the way the fine-tune scored it. ``use_adapter=false``
evaluates the same fine-tune's base model on the same rows: the base-vs-adapter pair an agent
compares with ``compare_runs``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import Field, field_validator, model_validator

from runners.errors import Conflict, HostError, InvalidInput
from runners.spec import JobSpec, Resources
from runners.states import JobState
from tools.finetune.inputs import UPLOAD_NAME, classify_dataset
from tools.hosts import host_gpus
from tools.model_ref import check_ref
from tools.submit import SubmitOutput, TimedSubmitOptions, next_action, submit

if TYPE_CHECKING:
    from runners.config import HostConfig
    from tools.context import ToolContext

__all__ = ["EvaluateInput", "EvaluateOutput", "build_evaluate_spec", "evaluate_model"]

_TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-*]{0,127}$")
TASK_FILE_SUFFIXES = (".yaml", ".yml", ".jsonl", ".json", ".csv", ".txt")
MAX_TASK_FILE_BYTES = 64 * 1024 * 1024
JOB_ID = r"^[a-z][a-z0-9-]{2,79}$"


class EvaluateInput(TimedSubmitOptions):
    """Arguments of evaluate_model (the names are the public interface)."""

    model: str | None = Field(None, description="Base model, merged or quantized checkpoint: Hub id or host path.")
    adapter: str | None = Field(None, description="A LoRA adapter directory on the host, on top of model.")
    finetune_job_id: str | None = Field(
        None, pattern=JOB_ID, description="Evaluate this fine-tune's output (its adapter or full model)."
    )
    use_adapter: bool = Field(
        True, description="With finetune_job_id: false evaluates its base model on the same rows (base vs adapter)."
    )
    server_job_id: str | None = Field(
        None, pattern=JOB_ID, description="A ready start_vllm_server job on the same host (tasks only)."
    )
    served_model: str | None = Field(None, description="With server_job_id: the served name (default its first).")
    dataset: str | None = Field(
        None,
        description="Loss / perplexity on this dataset (any submit_finetune format; local file uploaded). "
        "Default with finetune_job_id: the fine-tune's held-out split (its whole dataset if it held none out).",
    )
    dataset_format: Literal["auto", "alpaca", "sharegpt", "messages", "text", "prompt_completion"] = "auto"
    dataset_split: str = Field("train", description="Split of a Hub dataset.")
    max_rows: int | None = Field(None, ge=1, le=10_000_000, description="Score only the first N rows.")
    max_seq_length: int | None = Field(None, ge=8, le=1_048_576, description="Default: the fine-tune's, else 2048.")
    chat_template: str | None = Field(None, description="'simple', 'chatml' or Jinja; default as the fine-tune.")
    tasks: list[str] = Field(
        default_factory=list, description="lm-eval task names (e.g. 'hellaswag'), or those of task_files."
    )
    task_files: list[str] = Field(
        default_factory=list, description="Local lm-eval task YAML files and their data files, uploaded with the job."
    )
    include_path: str | None = Field(None, description="A directory of lm-eval task YAMLs on the host.")
    limit: float | None = Field(None, gt=0, description="Examples per task (<1: a fraction); for quick checks.")
    num_fewshot: int | None = Field(None, ge=0, le=64)
    apply_chat_template: bool = Field(
        False, description="Render task prompts through the chat template (true for chat-tuned models)."
    )
    batch_size: int = Field(8, ge=1, le=4096)
    backend: Literal["auto", "hf", "vllm"] = Field(
        "auto", description="Tasks on the host: auto = vLLM when it imports on a CUDA host, else transformers."
    )
    gpus: int | None = Field(None, ge=0, le=8, description="Default 1 on a GPU host, 0 on a CPU host.")
    output_name: str | None = Field(None, max_length=64, description="A label for list_jobs and compare_runs.")

    @field_validator("model", "adapter", "dataset")
    @classmethod
    def _refs(cls, v: str | None, info: Any) -> str | None:
        return None if v is None else check_ref(v, info.field_name, paths="relative")

    @field_validator("include_path")
    @classmethod
    def _include(cls, v: str | None) -> str | None:
        if v is not None and not check_ref(v, "include_path", paths="relative").startswith(("/", "~")):
            raise ValueError(f"include_path {v!r}: give a directory on the host as an absolute path")
        return v

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, v: list[str]) -> list[str]:
        for t in v:
            if not _TASK.match(t):
                raise ValueError(f"{t!r} is not an lm-eval task name")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> EvaluateInput:
        given = [n for n in ("model", "finetune_job_id", "server_job_id") if getattr(self, n)]
        if len(given) != 1:
            raise ValueError("give exactly one of model (with an optional adapter), finetune_job_id or server_job_id")
        if self.adapter and not self.model:
            raise ValueError("adapter needs model (its base)")
        if self.server_job_id and self.dataset:
            raise ValueError("the loss needs the weights: give model or finetune_job_id for a dataset")
        if self.task_files and not self.tasks:
            raise ValueError("task_files given but no tasks: name the tasks they define in tasks")
        if not (self.model or self.finetune_job_id) and not self.tasks:
            raise ValueError("a served model is evaluated on tasks: give tasks")
        if self.model and not self.dataset and not self.tasks:
            raise ValueError("nothing to evaluate: give a dataset (loss / perplexity) or tasks")
        return self


class EvaluateOutput(SubmitOutput):
    """What evaluate_model submitted: the job, what it evaluates, on which rows and tasks."""

    target: str = Field(description="What is evaluated: model [+ adapter] or the served model.")
    dataset: str | None = Field(None, description="The dataset scored for the loss, if any.")
    held_out: bool = Field(False, description="True when the rows are the fine-tune's held-out split.")
    tasks: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)


async def _finetune_source(ctx: ToolContext, job_id: str, host: HostConfig | None) -> dict[str, Any]:
    """The fine-tune job's settings and outputs; a job that did not succeed has no adapter to evaluate."""
    engine = await ctx.engine()
    view = await engine.status(job_id)
    if view.kind != "finetune":
        raise InvalidInput(f"Job {job_id} is a {view.kind} job, not a fine-tune.", "Give a submit_finetune job_id.")
    if host is not None and view.host != host.name:
        raise InvalidInput(
            f"Fine-tune {job_id} ran on {view.host}, not {host.name}.",
            f"Leave host out (the evaluation runs where the adapter is) or use host={view.host!r}.",
        )
    if view.state is not JobState.SUCCEEDED:
        why = view.error.line if view.error and view.error.line else (view.reason or "")
        raise Conflict(
            f"Fine-tune {job_id} is {view.state.value}{f' ({why})' if why else ''}: it has no finished adapter "
            "to evaluate.",
            "wait_for_job until it succeeds, or evaluate another job (list_jobs kind='finetune').",
        )
    data = await ctx.transport(ctx.host(view.host)).read_range(f"{view.job_dir}/outputs/manifest.json", 0, 1 << 20)
    try:
        manifest = json.loads(data.decode("utf-8")) if data else None
    except ValueError:
        manifest = None
    if not isinstance(manifest, dict):
        raise HostError(f"Fine-tune {job_id} has no readable outputs/manifest.json.", "Read its log (get_job_logs).")
    rec = engine.catalog.get(job_id)
    cfg = json.loads(rec.spec_json).get("payload_config", {}) if rec is not None else {}
    dataset = str(cfg.get("dataset") or "")
    if re.fullmatch(rf"{UPLOAD_NAME}\.(jsonl|json|csv|parquet)", dataset):
        dataset = f"{view.job_dir}/{dataset}"  # uploaded into the fine-tune's job dir
    return {"host": view.host, "job_dir": view.job_dir, "manifest": manifest, "config": cfg, "dataset": dataset}


async def _server_source(ctx: ToolContext, p: EvaluateInput, host: HostConfig | None) -> tuple[str, dict[str, Any]]:
    """(host name, the payload's ``server`` object) of a ready server job; no secret leaves the host."""
    from tools.serve.connection import served_model

    engine = await ctx.engine()
    view = await engine.status(str(p.server_job_id))
    if view.kind != "serve":
        raise InvalidInput(f"Job {p.server_job_id} is a {view.kind} job, not a server.", "Give a server job_id.")
    if view.state is not JobState.READY:
        raise Conflict(
            f"Server job {p.server_job_id} is {view.state.value}, not ready.",
            f"wait_for_job(job_id='{p.server_job_id}', until='ready') first, or start it again.",
        )
    if host is not None and view.host != host.name:
        raise InvalidInput(f"Server {p.server_job_id} runs on {view.host}.", "Leave host out or give that host.")
    runtime = await ctx.serve_runtime()
    doc = await runtime.endpoint_doc(view.host, view.job_dir)
    if doc is None or not isinstance(doc.get("port"), int):
        raise HostError(f"Server job {p.server_job_id} has no endpoint.json yet.", "Wait a moment and retry.")
    names = [str(n) for n in doc.get("served_names") or []]
    rec = engine.catalog.get(str(p.server_job_id))
    scfg = json.loads(rec.spec_json).get("payload_config", {}) if rec is not None else {}
    mode = str(scfg.get("api_key", "auto"))
    bind = str(doc.get("bind") or "127.0.0.1")
    node = str(doc.get("host")) if ctx.host(view.host).launcher == "slurm" else bind
    return view.host, {
        "job_dir": view.job_dir,
        "host": "127.0.0.1" if node in ("0.0.0.0", "::", "") else node,
        "port": int(doc["port"]),
        "model": served_model(names, p.served_model, str(p.server_job_id)),
        "tokenizer": scfg.get("model"),
        "api_key_env": None if mode == "none" else (mode[4:] if mode.startswith("env:") else "VLLM_API_KEY"),
    }


def _task_uploads(files: list[str]) -> dict[str, bytes]:
    """The user's local task files by base name (flat in the job dir, where the payload looks for YAMLs)."""
    out: dict[str, bytes] = {}
    for f in files:
        path = Path(f).expanduser()
        if not path.is_file():
            raise InvalidInput(f"Task file {f} does not exist here.", "Give local task YAML / data file paths.")
        if path.suffix.lower() not in TASK_FILE_SUFFIXES:
            raise InvalidInput(
                f"Task file {path.name}: lm-eval task files here are {', '.join(TASK_FILE_SUFFIXES)}.",
                "Python task code (!function) is not uploaded; put such tasks on the host and use include_path.",
            )
        if path.stat().st_size > MAX_TASK_FILE_BYTES:
            raise InvalidInput(f"Task file {path.name} is over {MAX_TASK_FILE_BYTES >> 20} MiB.", "Use include_path.")
        if path.name in out:
            raise InvalidInput(f"Two task files are named {path.name}.", "Rename one.")
        out[path.name] = path.read_bytes()
    return out


def build_evaluate_spec(p: EvaluateInput, cfg: dict[str, Any], gpus: int, target: str) -> JobSpec:
    """The JobSpec the engine starts: payload ``evaluate`` with its settings (no secret in them)."""
    return JobSpec(
        kind="evaluate",
        name=p.output_name or f"evaluate {target.rsplit('/', 1)[-1]}"[:120],
        payload="evaluate",
        payload_config=cfg,
        env={"TOKENIZERS_PARALLELISM": "false"},
        resources=Resources(gpus=gpus, time_limit_s=p.time_limit_s),
    )


async def evaluate_model(ctx: ToolContext, p: EvaluateInput) -> EvaluateOutput:
    """Resolve the target, check the dataset and task files, and submit the evaluation job.

    Long because three kinds of target each bring their own defaults (a fine-tune its data and
    settings, a server its endpoint), and the order of the checks is the order of the errors.
    """
    host = ctx.host(p.host) if p.host else None
    notes: list[str] = []
    cfg: dict[str, Any] = {"tasks": p.tasks, "limit": p.limit, "num_fewshot": p.num_fewshot,
                           "apply_chat_template": p.apply_chat_template, "batch_size": p.batch_size,
                           "backend": p.backend, "dataset_format": p.dataset_format,
                           "dataset_split": p.dataset_split, "max_rows": p.max_rows}  # fmt: skip
    held_out = False
    if p.finetune_job_id:
        src = await _finetune_source(ctx, p.finetune_job_id, host)
        host = ctx.host(src["host"])
        fcfg, paths = src["config"], src["manifest"].get("paths") or {}
        for k in ("seed", "max_seq_length", "chat_template", "packing"):
            if fcfg.get(k) is not None:
                cfg[k] = fcfg[k]
        if "model" in paths and p.use_adapter:  # a full fine-tune: its output is a whole model
            cfg["model"] = paths["model"]
        else:
            cfg["model"] = fcfg.get("model") or src["manifest"].get("model")
            if p.use_adapter:
                cfg["adapter"] = paths.get("adapter") or f"{src['job_dir']}/outputs/adapter"
        if p.dataset is None and src["dataset"]:
            cfg["dataset"] = src["dataset"]
            cfg["dataset_format"] = fcfg.get("dataset_format") or p.dataset_format
            frac = float(fcfg.get("eval_fraction") or 0)
            held_out = frac > 0
            cfg["eval_fraction"] = frac
            if not held_out:
                notes.append(f"Fine-tune {p.finetune_job_id} held no rows out: the loss is on its training rows.")
    elif p.server_job_id:
        host_name, server = await _server_source(ctx, p, host)
        host = ctx.host(host_name)
        cfg["server"] = server
        cfg["model"] = server["tokenizer"]
    else:
        cfg["model"], cfg["adapter"] = p.model, p.adapter
    host = host or ctx.host(None)
    if p.max_seq_length is not None:
        cfg["max_seq_length"] = p.max_seq_length
    if p.chat_template is not None:
        cfg["chat_template"] = p.chat_template
    uploads = _task_uploads(p.task_files)
    if p.dataset is not None:
        source, upload, check = classify_dataset(p.dataset, p.dataset_format)
        cfg["dataset"] = p.dataset
        if upload is not None:
            name = f"{UPLOAD_NAME}{upload.suffix.lower()}"
            uploads[name] = upload.read_bytes()
            cfg["dataset"] = name
        if check is not None:
            cfg["dataset_format"] = check.format
        if source == "host_path" and host.transport == "local" and not Path(p.dataset).expanduser().exists():
            raise InvalidInput(
                f"Dataset {p.dataset} does not exist.", "Give a JSONL/JSON/CSV/Parquet file or a Hub id."
            )
    if p.include_path:
        cfg["include_path"] = [p.include_path]
    g = host_gpus(host)
    gpus = p.gpus if p.gpus is not None else (1 if g.count else 0)
    target = (
        f"{cfg['server']['model']} served by {p.server_job_id}"
        if p.server_job_id
        else str(cfg["model"]) + (f" + {cfg['adapter']}" if cfg.get("adapter") else "")
    )
    spec = build_evaluate_spec(p, {k: v for k, v in cfg.items() if v is not None}, gpus, target)
    res = await submit(ctx, host, spec, p, uploads=uploads)
    what = "loss" + (" on the fine-tune's held-out split" if held_out else "") if cfg.get("dataset") else ""
    what = " and ".join(x for x in (what, f"tasks {', '.join(p.tasks)}" if p.tasks else "") if x)
    head = "Dry run" if res.dry_run else f"Submitted {res.job_id}"
    return EvaluateOutput(
        **{**res.model_dump(), "summary": f"{head}: evaluate {target} on {host.name}: {what}."},
        next_action=next_action(res, f"wait_for_job(job_id='{res.job_id}'), then compare_runs([...])."),
        target=target,
        dataset=cfg.get("dataset"),
        held_out=held_out,
        tasks=p.tasks,
        notes=notes,
    )
