#!/usr/bin/env python
"""Evaluate payload: the loss / perplexity of a model on a dataset, and benchmark tasks through lm-eval.

Runs on the host in the host's own Python, like the fine-tune payload, with two sibling files
copied beside it: ``finetune.py`` and ``dataset_formats.py``. The loss is computed by the
fine-tune's own code: its dataset loader, chat template, rendering (prompt + completion, so the
loss is on the answer only) and its ``SFTConfig`` (``finetune.trainer_args``), evaluated by TRL's
``SFTTrainer.evaluate`` — exactly the pass that wrote the fine-tune's ``eval_loss``. With the
fine-tune's ``eval_fraction`` and ``seed`` it rebuilds the same held-out split, so a fine-tune's
``final_eval_loss`` and this job's ``eval_loss`` of its adapter are one number.

Benchmark tasks run through EleutherAI's lm-evaluation-harness (``lm_eval`` 0.4.13):
``lm_eval/evaluator.py`` ``simple_evaluate`` with a ``lm_eval/tasks/manager.py`` ``TaskManager``
whose ``include_path`` holds the user's own YAML tasks, and one of its model back-ends:
``hf`` (``lm_eval/models/huggingface.py`` ``HFLM``: transformers, ``peft=`` for an adapter),
``vllm`` (``lm_eval/models/vllm_causallms.py`` ``VLLM``: ``lora_local_path=`` for an adapter) or
``local-completions`` (``lm_eval/models/openai_completions.py`` ``LocalCompletionsAPI``) against a
served model on this host, its API key read from the server job's own env file here.

    python evaluate.py job.json                                # as the job engine runs it
    python evaluate.py --config job_config.json --job-dir DIR  # standalone

Reports through files: ``metrics.jsonl`` (start, one ``progress`` row per chunk of work with
``done``/``total`` — also as ``step``/``total_steps``, which the engine turns into percent — then
``end`` or ``error``), ``outputs/results.json`` (lm-eval's results), ``outputs/manifest.json``.
Exit codes: 0 done, 1 unexpected failure, 2 bad input (unknown task, missing dataset, task data
not cached on an offline host), 3 CUDA out of memory.
"""

from __future__ import annotations

import difflib
import gc
import json
import math
import os
import re
import shlex
import sys
import time
from pathlib import Path
from typing import Any

try:  # beside this file in the job directory; runners.payloads.* in the repository
    from . import dataset_formats as dsf
    from . import finetune as ft
    from . import job_io as jio
except ImportError:
    import dataset_formats as dsf  # type: ignore[no-redef]
    import finetune as ft  # type: ignore[no-redef]
    import job_io as jio  # type: ignore[no-redef]

DEFAULTS: dict[str, Any] = {
    "model": None,  # base model, merged or quantized checkpoint: a Hub id or a path on this host
    "adapter": None,  # a PEFT adapter directory on this host
    "server": None,  # {"job_dir", "port", "model", "api_key"}: a served model on this host
    "backend": "auto",  # auto | hf | vllm (tasks; the loss always runs through transformers)
    "dataset": None,
    "dataset_format": "auto",
    "dataset_split": "train",
    "eval_fraction": 0.0,  # the fine-tune's: > 0 evaluates its held-out split
    "seed": 3407,
    "max_rows": None,
    "max_seq_length": 2048,
    "packing": False,
    "chat_template": None,
    "per_device_eval_batch_size": 8,  # the Trainer's default, which the fine-tune's eval pass used
    "tasks": [],
    "include_path": [],
    "limit": None,
    "num_fewshot": None,
    "batch_size": 8,
    "apply_chat_template": False,
    "bootstrap_iters": 1000,
    "gpu_memory_utilization": None,
    "output_dir": "outputs",
}
CONTROLLER_KEYS = {"host", "gpus", "time_limit", "idempotency_key", "dry_run", "output_name", "job_id", "target"}
OFFLINE_WORDS = re.compile(
    r"offline mode|HF_HUB_OFFLINE|HF_DATASETS_OFFLINE|Couldn't reach|couldn't find .* on the Hub|"
    r"LocalEntryNotFoundError|OfflineModeIsEnabled|ConnectionError|not cached",
    re.IGNORECASE,
)


def load_config(path: Path) -> dict[str, Any]:
    """DEFAULTS with the job's settings on top (job_io.load_settings: an unknown key is refused)."""
    cfg = jio.load_settings(path, DEFAULTS, ignored=CONTROLLER_KEYS)
    if not cfg["model"] and not cfg["server"]:
        raise jio.BadInput("config needs 'model' (or 'server')")
    if not cfg["dataset"] and not cfg["tasks"]:
        raise jio.BadInput("nothing to evaluate: give a dataset (loss / perplexity) or tasks (lm-eval)")
    if cfg["server"] and cfg["dataset"]:
        raise jio.BadInput("the loss needs the weights; evaluate a served model on tasks only")
    if cfg["backend"] not in ("auto", "hf", "vllm"):
        raise jio.BadInput(f"backend must be auto, hf or vllm, not {cfg['backend']!r}")
    if cfg["dataset_format"] != "auto" and cfg["dataset_format"] not in dsf.FORMATS:
        raise jio.BadInput(f"dataset_format must be auto or one of {', '.join(dsf.FORMATS)}")
    return cfg


class Progress:
    """``progress`` rows in metrics.jsonl and a line in output.log, at most every 0.5 s per phase."""

    def __init__(self, metrics: jio.Metrics) -> None:
        self.metrics = metrics
        self.last = 0.0

    def __call__(self, phase: str, done: int, total: int, **extra: Any) -> None:
        now = time.time()
        if done < total and now - self.last < 0.5:
            return
        self.last = now
        row = {"event": "progress", "phase": phase, "done": done, "total": total, "step": done, "total_steps": total}
        self.metrics.write({**row, **extra})
        ft.say(f"{phase}: {done}/{total}" + "".join(f"  {k} {v}" for k, v in extra.items()))


def load_weights(cfg: dict[str, Any]) -> tuple[Any, Any]:
    """The model (base + adapter when one is given) and its tokenizer, with the fine-tune's chat template.

    The tokenizer comes from the adapter when it has one (the fine-tune saves its tokenizer, chat
    template included, beside the adapter), else from the model; one without a template gets the
    fine-tune's default (``finetune.setup_chat_template``), so base and adapter see the same text.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    adapter = Path(cfg["adapter"]).expanduser() if cfg["adapter"] else None
    if adapter is not None and not (adapter / "adapter_config.json").is_file():
        raise jio.BadInput(f"adapter {adapter} has no adapter_config.json on this host")
    tok_src = str(adapter) if adapter is not None and (adapter / "tokenizer_config.json").is_file() else cfg["model"]
    tokenizer = AutoTokenizer.from_pretrained(tok_src)
    ft.setup_chat_template(tokenizer, cfg["chat_template"])
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cuda:
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], **kwargs)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
    model.eval()
    return model, tokenizer


def eval_rows(cfg: dict[str, Any], tokenizer: Any) -> tuple[Any, str, str]:
    """The rendered rows to score, their format, and which rows they are (held-out split or all)."""
    spec = str(cfg["dataset"])
    if spec.startswith(("/", "~", "./", "../")) and not Path(spec).expanduser().exists():
        raise jio.BadInput(f"dataset {spec} does not exist on this host")
    try:
        ds, fmt = ft.load_dataset_rows(cfg)
    except (jio.BadInput, dsf.DatasetFormatError):
        raise
    except Exception as exc:
        if OFFLINE_WORDS.search(f"{type(exc).__name__}: {exc}"):
            raise jio.BadInput(
                f"dataset {spec} is not in this host's HF cache and the host is offline; download it on a "
                f"node with network into the same HF_HOME first ({type(exc).__name__})"
            ) from exc
        raise jio.BadInput(f"cannot load dataset {spec}: {type(exc).__name__}: {exc}".splitlines()[0]) from exc
    ds = ft.format_dataset(ds, fmt, tokenizer, cfg["seed"])  # the fine-tune's rendering and shuffle
    which = f"all {len(ds)} rows"
    if float(cfg["eval_fraction"]) > 0:  # the fine-tune's own held-out split, rebuilt the way it split
        ds = ds.train_test_split(test_size=float(cfg["eval_fraction"]), seed=cfg["seed"])["test"]
        which = f"the fine-tune's held-out split ({len(ds)} rows, eval_fraction {cfg['eval_fraction']})"
    if cfg["max_rows"] and len(ds) > int(cfg["max_rows"]):
        ds = ds.select(range(int(cfg["max_rows"])))
        which += f", first {cfg['max_rows']}"
    return ds, fmt, which


def loss_of(cfg: dict[str, Any], model: Any, tokenizer: Any, job_dir: Path, progress: Progress) -> dict[str, Any]:
    """The fine-tune's eval loss on the dataset: its SFTConfig and TRL's SFTTrainer.evaluate.

    perplexity = exp(eval_loss), as transformers' own language-modeling example reports it
    (examples/pytorch/language-modeling/run_clm.py: ``perplexity = math.exp(metrics["eval_loss"])``).
    """
    import torch
    import transformers
    from trl import SFTConfig, SFTTrainer

    transformers.utils.logging.disable_progress_bar()
    ds, fmt, which = eval_rows(cfg, tokenizer)
    ft_cfg = {**ft.DEFAULTS, **{k: cfg[k] for k in ("max_seq_length", "packing", "seed")}, "save_steps": 0}
    args = ft.trainer_args(ft_cfg, "trl", torch.cuda.is_available(), job_dir / cfg["output_dir"] / "scratch")
    args.update(per_device_eval_batch_size=int(cfg["per_device_eval_batch_size"]), eval_strategy="no")
    args["gradient_checkpointing"] = False
    # SFTTrainer requires a train_dataset; one row keeps its tokenizing pass short (nothing trains).
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**args),
        train_dataset=ds.select(range(1)),
        eval_dataset=ds,
        processing_class=tokenizer,
    )
    trainer.remove_callback(transformers.PrinterCallback)

    class Steps(transformers.TrainerCallback):
        """One progress row per eval batch (the Trainer hands the dataloader to every callback)."""

        done = 0

        def on_prediction_step(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.done += 1
            loader = kw.get("eval_dataloader")
            progress("loss", self.done, len(loader) if loader is not None else self.done)

    trainer.add_callback(Steps())
    tokens = sum(len(x) for x in trainer.eval_dataset["input_ids"])
    t0 = time.time()
    out = trainer.evaluate()
    loss = float(out["eval_loss"])
    return {
        "eval_loss": loss,
        "perplexity": math.exp(loss) if loss < 700 else float("inf"),
        "rows": len(ds),
        "tokens": tokens,
        "dataset": cfg["dataset"],
        "dataset_format": fmt,
        "rows_used": which,
        "eval_s": round(time.time() - t0, 2),
    }


def task_manager(cfg: dict[str, Any], job_dir: Path) -> Any:
    """A TaskManager that knows every task asked for: the job's own YAML files first (fast, no scan
    of lm-eval's thousands of built-in configs when they are all local), then lm-eval's catalogue.
    An unknown name is refused with the nearest known ones."""
    from lm_eval.tasks import TaskManager

    paths = [str(job_dir)] if any(job_dir.glob("*.yaml")) else []  # task files uploaded with the job
    paths += [str(Path(p).expanduser()) for p in cfg["include_path"]]
    for p in paths:
        if not Path(p).is_dir():
            raise jio.BadInput(f"include_path {p} is not a directory on this host")
    wanted = list(cfg["tasks"])
    if paths:
        local = TaskManager(include_path=paths, include_defaults=False)
        if all(local.match_tasks([t]) for t in wanted):
            return local
    tm = TaskManager(include_path=paths or None)
    for t in wanted:
        if not tm.match_tasks([t]):
            near = difflib.get_close_matches(t, tm.all_tasks, n=3)
            raise jio.BadInput(
                f"unknown task {t!r} (lm-eval {_lm_eval_version()})"
                + (f"; did you mean {', '.join(near)}?" if near else "; lm_eval --tasks list names them")
            )
    return tm


def _lm_eval_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lm_eval")
    except metadata.PackageNotFoundError:
        return "?"


def with_progress(lm: Any, progress: Progress) -> Any:
    """Wrap the LM's request methods so each call runs in chunks and reports done/total between them.

    lm-eval's evaluator calls ``getattr(lm, reqtype)(requests)`` once per request type with all of
    them (``lm_eval/evaluator.py`` ``evaluate``); the results of a request do not depend on which
    other requests share its call, so chunking changes nothing but when we can say how far it got.
    """
    for name in ("loglikelihood", "loglikelihood_rolling", "generate_until"):
        inner = getattr(lm, name)

        def run(requests: list[Any], *a: Any, _inner: Any = inner, _name: str = name, **kw: Any) -> list[Any]:
            total = len(requests)
            step = max(64, total // 20)
            out: list[Any] = []
            progress("tasks", 0, total, request_type=_name)
            for i in range(0, total, step):
                out.extend(_inner(requests[i : i + step], *a, **kw))
                progress("tasks", len(out), total, request_type=_name)
            return out

        setattr(lm, name, run)
    return lm


def make_lm(cfg: dict[str, Any], tokenizer: Any) -> tuple[Any, str]:
    """The lm-eval model object for the target and back-end, and the back-end's name."""
    import torch

    server = cfg["server"]
    if server:
        from lm_eval.models.openai_completions import LocalCompletionsAPI

        args: dict[str, Any] = {
            "model": server["model"],
            "base_url": f"http://{server.get('host') or '127.0.0.1'}:{int(server['port'])}/v1/completions",
            "tokenizer": server.get("tokenizer") or cfg["model"],
            "num_concurrent": 4,
            "max_retries": 3,
            "batch_size": 1,
        }
        key = server_api_key(server)
        if key:
            args["header"] = {"Authorization": f"Bearer {key}"}
        limit = served_max_model_len(args["base_url"], server["model"], args.get("header"))
        if limit:  # lm-eval's own default is 2048 whatever the server holds (api_models.py TemplateAPI)
            args["max_length"] = limit
        return LocalCompletionsAPI(**args), "local-completions"
    backend = cfg["backend"]
    if backend == "auto":
        from importlib.util import find_spec

        backend = "vllm" if torch.cuda.is_available() and find_spec("vllm") is not None else "hf"
    if backend == "vllm":
        from lm_eval.models.vllm_causallms import VLLM

        kw: dict[str, Any] = {"pretrained": cfg["model"], "batch_size": "auto", "max_model_len": cfg["max_seq_length"]}
        if cfg["adapter"]:
            kw["lora_local_path"] = str(cfg["adapter"])
            kw["max_lora_rank"] = _adapter_rank(Path(cfg["adapter"]))
        if cfg["gpu_memory_utilization"]:
            kw["gpu_memory_utilization"] = float(cfg["gpu_memory_utilization"])
        return VLLM(**kw), "vllm"
    from lm_eval.models.huggingface import HFLM

    kw = {
        "pretrained": cfg["model"],
        "tokenizer": tokenizer,  # with the fine-tune's chat template, for apply_chat_template
        "batch_size": int(cfg["batch_size"]),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "max_length": int(cfg["max_seq_length"]),
    }
    if cfg["adapter"]:
        kw["peft"] = str(cfg["adapter"])
    return HFLM(**kw), "hf"


def served_max_model_len(base_url: str, model: str, header: dict[str, str] | None) -> int | None:
    """The served model's context length from the server's GET /v1/models (vLLM lists
    ``max_model_len`` per model: vllm/entrypoints/openai/engine/protocol.py ``ModelCard``), so
    lm-eval truncates a long context as the server can take it instead of its fixed 2048 (a
    server with less refuses the request; one with more would see the context cut short)."""
    import urllib.request

    url = base_url.rsplit("/v1/", 1)[0] + "/v1/models"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=header or {}), timeout=30) as r:
            cards = json.loads(r.read()).get("data") or []
    except (OSError, ValueError):
        return None
    by_id = {c.get("id"): c for c in cards if isinstance(c, dict)}
    card = by_id.get(model) or {}
    if not isinstance(card.get("max_model_len"), int):  # a LoRA's card has none: its base model's
        card = by_id.get(card.get("parent")) or {}  # (vllm/entrypoints/openai/models/serving.py)
    return int(card["max_model_len"]) if isinstance(card.get("max_model_len"), int) else None


def server_api_key(server: dict[str, Any]) -> str | None:
    """The served model's API key, read here from the server job's own 0600 env file on this host
    (the serve payload appends VLLM_API_KEY there), so no secret passes through job.json."""
    name = server.get("api_key_env")
    if not name:
        return None
    try:
        text = (Path(server["job_dir"]) / "env").read_text(encoding="utf-8")
    except OSError as exc:
        raise jio.BadInput(f"cannot read the server job's env file for its API key: {exc}") from exc
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export ") :]
        if line.startswith(f"{name}="):
            value = line.split("=", 1)[1]
            return shlex.split(value)[0] if value else ""
    return None


def _adapter_rank(adapter: Path) -> int:
    """vLLM's max_lora_rank must be at least the adapter's r; its allowed values are powers of two."""
    r = int(json.loads((adapter / "adapter_config.json").read_text()).get("r", 16))
    return max(8, 1 << max(0, r - 1).bit_length())


def run_tasks(cfg: dict[str, Any], job_dir: Path, tokenizer: Any, progress: Progress) -> dict[str, Any]:
    """lm-eval's simple_evaluate over the tasks; a task whose data is not cached offline is bad input."""
    import lm_eval

    tm = task_manager(cfg, job_dir)
    lm, backend = make_lm(cfg, tokenizer)
    with_progress(lm, progress)
    t0 = time.time()
    try:
        res = lm_eval.simple_evaluate(
            model=lm,
            tasks=list(cfg["tasks"]),
            task_manager=tm,
            limit=cfg["limit"],
            num_fewshot=cfg["num_fewshot"],
            apply_chat_template=bool(cfg["apply_chat_template"]),
            log_samples=False,
            bootstrap_iters=int(cfg["bootstrap_iters"]),
        )
    except Exception as exc:
        text = f"{type(exc).__name__}: {exc}"
        if OFFLINE_WORDS.search(text):
            raise jio.BadInput(
                "the task data is not in this host's HF cache and the host is offline (HF_HUB_OFFLINE / "
                "HF_DATASETS_OFFLINE); load the tasks once on a node with network and the same HF_HOME "
                f"(e.g. the login node), then resubmit. lm-eval said: {text.splitlines()[0][:300]}"
            ) from exc
        raise
    scores: dict[str, dict[str, float]] = {}
    for task, metrics in (res or {}).get("results", {}).items():
        scores[task] = {
            k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and not isinstance(v, bool)
        }
    (job_dir / cfg["output_dir"] / "results.json").write_text(
        json.dumps({k: res.get(k) for k in ("results", "versions", "n-shot", "n-samples", "configs")}, default=str),
        encoding="utf-8",
    )
    return {"backend": backend, "scores": scores, "tasks_s": round(time.time() - t0, 2), "lm_eval": _lm_eval_version()}


def summary_line(manifest: dict[str, Any]) -> str:
    """One line for people and agents: what was evaluated and the headline numbers."""
    parts = []
    loss = manifest.get("loss")
    if loss:
        parts.append(f"eval_loss {loss['eval_loss']:.4f}, perplexity {loss['perplexity']:.3g} on {loss['rows']} rows")
    for task, m in (manifest.get("tasks") or {}).get("scores", {}).items():
        main = next((k for k in ("acc,none", "acc_norm,none", "exact_match,none") if k in m), None)
        main = main or next((k for k in m if "stderr" not in k), None)
        if main:
            parts.append(f"{task} {main.split(',')[0]} {m[main]:.3f}")
    return f"{manifest['target']}: " + ("; ".join(parts) or "no metrics")


def evaluate(cfg: dict[str, Any], job_dir: Path, metrics: jio.Metrics, state: dict[str, Any]) -> dict[str, Any]:
    """The job: loss first (weights in memory once), freed, then the tasks; returns the manifest."""
    import torch

    out_dir = job_dir / cfg["output_dir"]
    out_dir.mkdir(parents=True, exist_ok=True)
    target = (
        cfg["server"]["model"] if cfg["server"] else cfg["model"] + (f" + {cfg['adapter']}" if cfg["adapter"] else "")
    )
    cuda = torch.cuda.is_available()
    metrics.write(
        {
            "event": "start",
            "target": target,
            "device": torch.cuda.get_device_name() if cuda else "cpu",
            "config": cfg,
            "versions": {**ft.versions(), "lm_eval": _lm_eval_version()},
        }
    )
    ft.say(f"evaluate {target} on {torch.cuda.get_device_name() if cuda else 'cpu'}")
    progress = Progress(metrics)
    manifest: dict[str, Any] = {
        "status": "succeeded",
        "target": target,
        "model": cfg["model"],
        "adapter": cfg["adapter"],
    }
    tokenizer = None
    spec = str(cfg["dataset"] or "")
    if spec.startswith(("/", "~", "./", "../")) and not Path(spec).expanduser().exists():  # before any loading
        raise jio.BadInput(f"dataset {spec} does not exist on this host")
    if cfg["dataset"]:
        state["phase"] = "loss"
        model, tokenizer = load_weights(cfg)
        manifest["loss"] = loss_of(cfg, model, tokenizer, job_dir, progress)
        ft.say(f"eval_loss {manifest['loss']['eval_loss']:.4f}  perplexity {manifest['loss']['perplexity']:.4g}")
        del model
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    if cfg["tasks"]:
        state["phase"] = "tasks"
        if tokenizer is None and not cfg["server"]:
            from transformers import AutoTokenizer

            adapter = Path(cfg["adapter"]) if cfg["adapter"] else None
            src = str(adapter) if adapter and (adapter / "tokenizer_config.json").is_file() else cfg["model"]
            tokenizer = AutoTokenizer.from_pretrained(src)
            ft.setup_chat_template(tokenizer, cfg["chat_template"])
        manifest["tasks"] = run_tasks(cfg, job_dir, tokenizer, progress)
    manifest["wall_time_s"] = round(time.time() - metrics.t0, 2)
    manifest["versions"] = {**ft.versions(), "lm_eval": _lm_eval_version()}
    manifest["gpu_mem_peak_allocated_gib"] = ft.gpu_memory().get("gpu_mem_peak_allocated_gib")
    manifest["summary"] = summary_line(manifest)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    """Parse args, run, and turn every failure into the failure record and job_io's exit code."""
    settings, job_dir = jio.job_args(argv, "evaluate a model: loss / perplexity and lm-eval tasks")
    files = jio.job_files(settings, job_dir)
    os.chdir(files.job_dir)  # a local task's relative data_files are the job's uploaded files
    metrics = jio.Metrics(files.metrics)
    state: dict[str, Any] = {"phase": "setup"}
    try:
        cfg = load_config(files.settings)
        manifest = evaluate(cfg, files.job_dir, metrics, state)
    except dsf.DatasetFormatError as exc:
        return jio.report_failure(metrics, jio.BadInput(str(exc)), label="error", phase=state["phase"])
    except Exception as exc:
        hint = "lower batch_size or max_seq_length, or use a larger GPU" if jio.is_oom(exc) else None
        extra = {"hint": hint} if hint else {}
        return jio.report_failure(metrics, exc, label="error", phase=state["phase"], **extra)
    end = {
        "event": "end",
        "status": "succeeded",
        "summary": manifest["summary"],
        "wall_time_s": manifest["wall_time_s"],
    }
    if manifest.get("loss"):
        end.update(eval_loss=manifest["loss"]["eval_loss"], perplexity=manifest["loss"]["perplexity"])
    if manifest.get("tasks"):
        end["scores"] = manifest["tasks"]["scores"]
    metrics.write(end)
    ft.say(f"done: {manifest['summary']}")
    return jio.EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
