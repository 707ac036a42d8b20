#!/usr/bin/env python
"""Fine-tune payload: LoRA, QLoRA or full fine-tuning with Unsloth, or TRL + PEFT as the fallback.

Runs on the GPU host in the host's own Python, so it is self-contained: stdlib plus torch,
transformers, peft, trl, datasets, bitsandbytes and (optionally) unsloth, and two sibling
files the engine copies beside it (runners/payloads/__init__.py ``shipped_files``):
``job_io.py`` (job.json, metrics.jsonl, the failure record, the exit codes) and
``dataset_formats.py``, which the controller also imports (without torch) to refuse a
malformed dataset before submission.

    python finetune.py --config job_config.json --job-dir DIR

Reports only through files, because the controller may be gone while this runs:
  DIR/metrics.jsonl      {"event": "start"}, {"event": "model_loaded"}, one {"event": "log"} per
                         logging step, then {"event": "end"} or {"event": "error", "kind": ...}
  DIR/outputs/           adapter (or full model) + tokenizer, optional merged/, manifest.json,
                         checkpoints/checkpoint-N (resumable with resume_from)
  stdout                 human-readable progress (the launcher sends it to DIR/output.log)
Exit codes (job_io's table): 0 done, 1 unexpected failure, 2 bad config or dataset, 3 CUDA out of memory.

Distributed (launched by torchrun, one process per GPU; RANK / LOCAL_RANK / WORLD_SIZE set):
rank 0 alone writes metrics, progress lines, outputs and the manifest; any rank that fails
writes its own error row (with its rank) and records the exception in torchrun's error file,
so torchrun's summary names it as the root cause. ``strategy`` picks DDP, FSDP or DeepSpeed
ZeRO 2/3 through the Trainer's own options (``fsdp``/``fsdp_config``, ``deepspeed=dict``);
CPU ranks talk over gloo. ``LLM_OPS_TEST_CRASH_RANK=N`` (tests only) makes rank N raise at
step 2, to prove that a failure on any rank fails the job with that rank's error.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import traceback
from collections.abc import MutableMapping
from importlib import metadata
from pathlib import Path
from typing import Any

try:  # beside this file in the job directory; runners.payloads.* in the repository
    from . import dataset_formats as dsf
    from . import job_io as jio
except ImportError:
    import dataset_formats as dsf  # type: ignore[no-redef]
    import job_io as jio  # type: ignore[no-redef]


DEFAULTS: dict[str, Any] = {
    "model": None,
    "dataset": None,
    "dataset_format": "auto",
    "dataset_split": "train",
    "method": "lora",
    "backend": "auto",
    "max_seq_length": 2048,
    "lora_r": 16,
    "lora_alpha": 16,
    "lora_dropout": 0.0,
    "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "num_epochs": 1.0,
    "max_steps": None,
    "learning_rate": 2e-4,
    "lr_scheduler": "linear",
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "max_grad_norm": 1.0,
    "optim": "adamw_torch",
    "per_device_batch_size": 2,
    "gradient_accumulation_steps": 4,
    "packing": False,
    "eval_fraction": 0.0,
    "eval_steps": None,
    "save_steps": 200,
    "save_total_limit": 2,
    "logging_steps": 1,
    "resume_from": None,
    "save_merged": False,
    "chat_template": None,
    "seed": 3407,
    "wandb_project": None,
    "wandb_mode": None,
    "gradient_checkpointing": True,
    "output_dir": "outputs",
    "estimated_peak_gib": None,
    "strategy": "ddp",
    "cpu_offload": False,
}
# Keys the controller may leave in the job config that only matter on its side.
CONTROLLER_KEYS = {
    "host",
    "gpus",
    "time_limit",
    "idempotency_key",
    "dry_run",
    "output_name",
    "job_id",
    "plan",
}
METHODS, BACKENDS = ("lora", "qlora", "full"), ("auto", "unsloth", "trl")
STRATEGIES = ("ddp", "fsdp", "deepspeed-zero2", "deepspeed-zero3")
CRASH_ENV = "LLM_OPS_TEST_CRASH_RANK"


def dist_info() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) for a plain run."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


RANK, LOCAL_RANK, WORLD_SIZE = dist_info()
IS_MAIN = RANK == 0


def say(*args: Any) -> None:
    """A progress line for output.log: rank 0 only, so N ranks don't print everything N times."""
    if IS_MAIN:
        print(*args, flush=True)


# Used when the tokenizer has none (base models, the tests' tiny tokenizer). Plain-text
# role markers, and the assistant turn ends with EOS so a served model learns to stop.
SIMPLE_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>\\n' + m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
NAMED_TEMPLATES = {"simple": SIMPLE_TEMPLATE, "chatml": CHATML_TEMPLATE}


def load_config(path: Path) -> dict[str, Any]:
    """job.json's settings (or a bare config) over DEFAULTS (job_io.load_settings: unknown keys are
    errors, so typos never pass silently), then this payload's own checks."""
    cfg = jio.load_settings(path, DEFAULTS, ignored=CONTROLLER_KEYS, required=("model", "dataset"))
    if cfg["method"] not in METHODS:
        raise jio.BadInput(f"method must be one of {', '.join(METHODS)}, not {cfg['method']!r}")
    if cfg["backend"] not in BACKENDS:
        raise jio.BadInput(f"backend must be one of {', '.join(BACKENDS)}, not {cfg['backend']!r}")
    if cfg["dataset_format"] != "auto" and cfg["dataset_format"] not in dsf.FORMATS:
        raise jio.BadInput(f"dataset_format must be auto or one of {', '.join(dsf.FORMATS)}")
    if cfg["per_device_batch_size"] == "auto":
        cfg["per_device_batch_size"] = DEFAULTS["per_device_batch_size"]
    if cfg["gradient_accumulation_steps"] == "auto":
        cfg["gradient_accumulation_steps"] = DEFAULTS["gradient_accumulation_steps"]
    if not 0 <= float(cfg["eval_fraction"]) < 0.5:
        raise jio.BadInput("eval_fraction must be in [0, 0.5)")
    if cfg["strategy"] not in STRATEGIES:
        raise jio.BadInput(f"strategy must be one of {', '.join(STRATEGIES)}, not {cfg['strategy']!r}")
    return cfg


def choose_backend(requested: str) -> str:
    """Unsloth when asked for, or for ``auto`` when it imports and a CUDA GPU is present.

    Unsloth must be imported before transformers/trl/peft so its patches apply, which is
    why this runs before any of them is imported.
    """
    import torch

    if requested == "trl":
        return "trl"
    if WORLD_SIZE > 1:
        # Unsloth documents multi-GPU (DDP through accelerate) as not yet official; the controller
        # refuses backend=unsloth with several GPUs, and auto means TRL + accelerate here.
        if requested == "unsloth":
            raise jio.BadInput("backend=unsloth runs on one GPU here; use backend=auto or trl for multi-GPU jobs")
        return "trl"
    if not torch.cuda.is_available():
        if requested == "unsloth":
            raise jio.BadInput("backend=unsloth needs a CUDA GPU; use backend=trl or auto on this host")
        return "trl"
    try:
        import unsloth  # noqa: F401
    except Exception as exc:
        if requested == "unsloth":
            raise jio.BadInput(f"backend=unsloth, but unsloth does not import here: {exc}") from exc
        say(f"unsloth unavailable ({type(exc).__name__}: {exc}); using TRL + PEFT")
        return "trl"
    return "unsloth"


def versions() -> dict[str, str]:
    """Library versions for the manifest: what produced these weights, for reproducing them."""
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "datasets", "accelerate", "bitsandbytes", "unsloth"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def load_dataset_rows(cfg: dict[str, Any]) -> Any:
    """A local file (checked row by row by the stdlib checker first), a saved dataset, or a Hub id."""
    import datasets

    spec, fmt = str(cfg["dataset"]), cfg["dataset_format"]
    path = Path(spec).expanduser()
    if path.is_file():
        kind = {
            ".jsonl": "json",
            ".ndjson": "json",
            ".json": "json",
            ".csv": "csv",
            ".parquet": "parquet",
        }.get(path.suffix.lower())
        if kind is None:
            raise jio.BadInput(f"cannot read {path.name}: dataset files are .jsonl, .json, .csv or .parquet")
        if kind != "parquet":
            dsf.check_file(path, fmt)
        ds = datasets.load_dataset(kind, data_files=str(path), split="train")
    elif path.is_dir() and (path / "dataset_info.json").exists():
        ds = datasets.load_from_disk(str(path))
    else:
        ds = datasets.load_dataset(str(path) if path.is_dir() else spec, split=cfg["dataset_split"])
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[cfg["dataset_split"]]
    checked = dsf.check_rows(iter(ds), fmt)
    return ds, checked.format


def setup_chat_template(tokenizer: Any, choice: str | None) -> None:
    """Named or Jinja template from the config, else the tokenizer's own, else SIMPLE_TEMPLATE."""
    if choice:
        tokenizer.chat_template = NAMED_TEMPLATES.get(choice, choice)
        if "{%" not in tokenizer.chat_template and "{{" not in tokenizer.chat_template:
            raise jio.BadInput(f"chat_template {choice!r} is neither {'/'.join(NAMED_TEMPLATES)} nor a Jinja template")
    elif not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = SIMPLE_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def format_dataset(ds: Any, fmt: str, tokenizer: Any, seed: int) -> Any:
    """Render rows through the chat template into what TRL trains on.

    alpaca / prompt_completion become prompt + completion columns, so TRL computes the loss
    on the answer only; chat formats become one ``text`` per conversation; ``text`` is kept.
    A leading BOS the template writes is dropped because tokenizing adds it again.
    """
    bos = tokenizer.bos_token
    adds_bos = bool(bos) and tokenizer("x").input_ids[:1] == [tokenizer.bos_token_id]

    def strip_bos(s: str) -> str:
        return s[len(bos) :] if adds_bos and s.startswith(bos) else s

    def render(row: dict[str, Any]) -> dict[str, str]:
        if fmt == "text":
            return {"text": row["text"]}
        messages = dsf.to_messages(row, fmt)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if fmt in ("alpaca", "prompt_completion"):
            prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
            if full.startswith(prompt):
                return {"prompt": strip_bos(prompt), "completion": full[len(prompt) :]}
        return {"text": strip_bos(full)}

    out = ds.map(render, remove_columns=ds.column_names)
    if "prompt" in out.column_names and "text" in out.column_names:
        raise jio.BadInput("the chat template does not render prompts as a prefix of the conversation")
    return out.shuffle(seed=seed)


def load_model(cfg: dict[str, Any], backend: str) -> tuple[Any, Any]:
    """Model (wrapped with LoRA unless full) and tokenizer for the chosen backend."""
    import torch

    method, gc = cfg["method"], bool(cfg["gradient_checkpointing"])
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=cfg["model"],
            max_seq_length=cfg["max_seq_length"],
            dtype=None,
            load_in_4bit=method == "qlora",
            full_finetuning=method == "full",
        )
        if method != "full":
            model = FastLanguageModel.get_peft_model(
                model,
                r=cfg["lora_r"],
                target_modules=cfg["target_modules"],
                lora_alpha=cfg["lora_alpha"],
                lora_dropout=cfg["lora_dropout"],
                bias="none",
                random_state=cfg["seed"],
                use_gradient_checkpointing="unsloth" if gc else False,
            )
        return model, tokenizer

    from transformers import AutoModelForCausalLM, AutoTokenizer

    cuda = torch.cuda.is_available()
    dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if cuda else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if cuda and cfg["strategy"] == "ddp":  # each DDP rank holds the whole model on its own GPU
        kwargs["device_map"] = {"": LOCAL_RANK}
    # FSDP / ZeRO load on the CPU and let the engine shard the weights onto the GPUs.
    if method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype,
        )
    tokenizer = AutoTokenizer.from_pretrained(cfg["model"])
    model = AutoModelForCausalLM.from_pretrained(cfg["model"], **kwargs)
    if method == "full":
        return model, tokenizer
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if method == "qlora":
        if not cuda:
            keep_4bit_cpu_layers_differentiable(model)
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gc, gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    lora = LoraConfig(
        r=cfg["lora_r"],
        lora_alpha=cfg["lora_alpha"],
        lora_dropout=cfg["lora_dropout"],
        target_modules=cfg["target_modules"],
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, lora), tokenizer


def keep_4bit_cpu_layers_differentiable(model: Any) -> None:
    """Turn off bitsandbytes' AVX512-BF16 repack in every 4-bit layer of a model trained on the CPU.

    Why: bitsandbytes 0.50.2 ``nn/modules.py`` ``Linear4bit.forward`` repacks the weight at the first
    forward that runs in eval mode without grad (``Trainer.evaluate``) on a CPU where
    ``functional.has_avx512bf16()`` holds, and from then on ``autograd/_functions.py``
    ``matmul_4bit`` sends every forward, training ones too, through ``bitsandbytes::gemv_4bit``,
    which has no autograd kernel: the gradient through each frozen 4-bit layer is silently dropped
    (torch only warns "an autograd kernel was not registered"), so LoRA below it learns from a wrong
    gradient. The attribute is the one that forward reads; the unpacked path is differentiable.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False


def find_checkpoint(spec: str) -> str:
    """A checkpoint dir, or the newest ``checkpoint-N`` in a dir, its checkpoints/ or outputs/checkpoints/."""
    path = Path(spec).expanduser()
    if (path / "trainer_state.json").exists():
        return str(path)
    for base in (path, path / "checkpoints", path / "outputs" / "checkpoints"):
        found = [p for p in base.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()] if base.is_dir() else []
        if found:
            return str(max(found, key=lambda p: int(p.name.split("-")[-1])))
    raise jio.BadInput(f"resume_from {spec}: no checkpoint-N directory with trainer_state.json there")


def gpu_memory() -> dict[str, float]:
    """Allocator counters only (no device sync), so logging every step costs nothing measurable."""
    import torch

    if not torch.cuda.is_available():
        return {}
    gib = 2**30
    return {
        "gpu_mem_allocated_gib": round(torch.cuda.memory_allocated() / gib, 3),
        "gpu_mem_reserved_gib": round(torch.cuda.memory_reserved() / gib, 3),
        "gpu_mem_peak_allocated_gib": round(torch.cuda.max_memory_allocated() / gib, 3),
        "gpu_mem_peak_reserved_gib": round(torch.cuda.max_memory_reserved() / gib, 3),
    }


def make_callback(metrics: jio.Metrics, tokens_per_sample: float, samples_per_step: int) -> Any:
    """A TrainerCallback that turns the Trainer's log dicts into metrics.jsonl rows and progress lines.

    Rates come from wall time between logs and the dataset's mean tokens per sample, which
    needs no device sync (counting tokens per batch on the GPU would stall the pipeline).
    """
    from transformers import TrainerCallback

    class MetricsCallback(TrainerCallback):
        def __init__(self) -> None:
            self.last_t = self.begin_t = time.time()
            self.last_step = self.begin_step = 0
            self.last_loss: float | None = None
            self.last_eval_loss: float | None = None
            self.eval_step = -1
            self.step = 0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.last_t = self.begin_t = time.time()
            self.last_step = self.begin_step = state.global_step
            say(f"training: {state.max_steps} steps from step {state.global_step} on {WORLD_SIZE} process(es)")

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            self.step = state.global_step
            crash = os.environ.get(CRASH_ENV)
            if crash is not None and crash.isdigit() and int(crash) == RANK and state.global_step >= 2:
                raise RuntimeError(f"injected crash on rank {RANK} at step {state.global_step} ({CRASH_ENV})")

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kw: Any) -> None:
            logs = logs or {}
            if "train_runtime" in logs:  # the Trainer's closing summary, not a step
                return
            now, step = time.time(), state.global_step
            row: dict[str, Any] = {
                "event": "log",
                "step": step,
                "total_steps": state.max_steps,
                "epoch": round(state.epoch or 0.0, 4),
            }
            for key in ("loss", "eval_loss", "learning_rate", "grad_norm"):
                if key in logs:
                    row[key] = float(logs[key])
            if "loss" in logs:
                self.last_loss = row["loss"]
                dsteps, dt = step - self.last_step, max(now - self.last_t, 1e-9)
                if dsteps > 0:
                    row["samples_per_s"] = round(dsteps * samples_per_step / dt, 3)
                    row["tokens_per_s"] = round(dsteps * samples_per_step * tokens_per_sample / dt, 1)
                done = step - self.begin_step
                if done > 0:
                    row["eta_s"] = round((state.max_steps - step) * (now - self.begin_t) / done, 1)
                self.last_t, self.last_step = now, step
            if "eval_loss" in logs:
                self.last_eval_loss, self.eval_step = row["eval_loss"], step
            row.update(gpu_memory())
            metrics.write(row)
            parts = [f"step {step}/{state.max_steps}"]
            parts += [f"{k} {row[k]:.4g}" for k in ("loss", "eval_loss", "learning_rate") if k in row]
            parts += [f"{row['tokens_per_s']:.0f} tok/s"] if "tokens_per_s" in row else []
            parts += [f"eta {row['eta_s']:.0f}s"] if "eta_s" in row else []
            say("  ".join(parts))

    return MetricsCallback()


def oom_suggestion(cfg: dict[str, Any]) -> str:
    """What to change, most effective first, so the agent can resubmit without guessing."""
    tips = []
    if cfg["method"] != "qlora":
        tips.append("method=qlora")
    if cfg["per_device_batch_size"] > 1:
        tips.append(
            f"per_device_batch_size={cfg['per_device_batch_size'] // 2} with "
            f"gradient_accumulation_steps={cfg['gradient_accumulation_steps'] * 2}"
        )
    if cfg["max_seq_length"] > 512:
        tips.append(f"max_seq_length={cfg['max_seq_length'] // 2}")
    if not cfg["gradient_checkpointing"]:
        tips.append("gradient_checkpointing=true")
    return "try " + ", or ".join(tips) if tips else "use a GPU with more memory or a smaller model"


def _package_version(name: str) -> tuple[int, int] | None:
    """(major, minor) of an installed package from its metadata, without importing it; None if absent."""
    try:
        parts = metadata.version(name).split(".")[:2]
        return int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)
    except (metadata.PackageNotFoundError, ValueError, IndexError):
        return None


def _transformers_at_least(major: int, minor: int) -> bool:
    return (_package_version("transformers") or (0, 0)) >= (major, minor)


def strategy_args(cfg: dict[str, Any], cuda: bool) -> dict[str, Any]:
    """SFTConfig options that make the Trainer (through accelerate) run ``cfg['strategy']``.

    Only the Trainer's own switches: ``ddp_*`` for DDP, the ``fsdp`` string (the form both
    transformers 5.17 and 5.2x parse) with FSDP's own activation checkpointing, and a
    DeepSpeed config dict whose batch and precision fields are ``auto`` (the Trainer fills
    them from its arguments, so they never disagree).
    """
    if WORLD_SIZE == 1:
        return {}
    strategy, gc, offload = cfg["strategy"], bool(cfg["gradient_checkpointing"]), bool(cfg["cpu_offload"])
    out: dict[str, Any] = {"ddp_backend": "nccl" if cuda else "gloo"}
    if not cuda:  # without it accelerate sees CPU ranks as "not distributed" and wraps nothing
        out["use_cpu"] = True
    if strategy == "ddp":
        out["ddp_find_unused_parameters"] = False  # every LoRA weight gets a gradient every step
    elif strategy == "fsdp":
        if _transformers_at_least(5, 20):  # fsdp=True + fsdp_config (FSDP2); the string form is deprecated
            out["fsdp"] = True
            out["fsdp_config"] = {"reshard_after_forward": True, "cpu_offload": offload, "activation_checkpointing": gc}
        else:  # 5.17 (the GPU host's pin) parses the classic option string
            out["fsdp"] = "full_shard auto_wrap" + (" offload" if offload else "")
            out["fsdp_config"] = {"activation_checkpointing": gc}
        out["gradient_checkpointing"] = False  # FSDP checkpoints itself (no redundant all-gather)
    else:
        stage = 3 if strategy.endswith("3") else 2
        zero: dict[str, Any] = {"stage": stage, "overlap_comm": True, "contiguous_gradients": True}
        if offload:
            zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
            if stage == 3:
                zero["offload_param"] = {"device": "cpu", "pin_memory": True}
        if stage == 3:
            zero["stage3_gather_16bit_weights_on_model_save"] = True
        out["deepspeed"] = {
            "zero_optimization": zero,
            "bf16": {"enabled": "auto"},
            "fp16": {"enabled": "auto"},
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
            "gradient_clipping": "auto",
        }
    return out


def prepare_cpu_offload(cfg: dict[str, Any], cuda: bool) -> None:
    """What FSDP's CPU offload needs from the process before the Trainer sets it up.

    Offloaded gradients are CPU tensors, and the Trainer's gradient clipping all-reduces their
    norm: a NCCL-only process group has no CPU backend and the first step dies with "No backend
    type associated with device type cpu" (measured on 2x H100, torch 2.11 + transformers 5.17;
    pytorch/pytorch#148532). So the group is opened here with gloo for CPU tensors and NCCL for
    CUDA ones; accelerate then adopts the initialised group. torchrun also pins
    OMP_NUM_THREADS=1, which leaves the CPU AdamW step on one core: each rank gets its share of
    the CPUs instead.
    """
    if WORLD_SIZE == 1 or not cfg["cpu_offload"]:
        return
    import torch
    import torch.distributed as dist

    local = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local))
    if cuda and cfg["strategy"] == "fsdp" and not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl", device_id=torch.device("cuda", LOCAL_RANK))


def host_ram_peak_gib() -> float:
    """This process's peak resident host memory so far (GiB): model, optimizer and data on CPU
    ranks, and on GPU ranks what loading and sharding the model took on the host."""
    import resource

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return kib / 2**20 if sys.platform != "darwin" else kib / 2**30  # macOS reports bytes


def per_rank(value: float) -> list[float]:
    """``value`` of every rank, in rank order (a collective: every rank calls it)."""
    mine = round(value, 3)
    if WORLD_SIZE == 1:
        return [mine]
    import torch.distributed as dist

    if not dist.is_initialized():
        return [mine]
    out: list[Any] = [None] * WORLD_SIZE
    dist.all_gather_object(out, mine)
    return [float(x) for x in out]


def trainer_args(cfg: dict[str, Any], backend: str, cuda: bool, out_dir: Path) -> dict[str, Any]:
    """The SFTConfig's arguments: the job's settings, the precision the GPU has, the strategy's switches."""
    import torch

    bf16 = cuda and torch.cuda.is_bf16_supported()
    save_steps = int(cfg["save_steps"] or 0)
    args: dict[str, Any] = dict(
        output_dir=str(out_dir / "checkpoints"),
        per_device_train_batch_size=int(cfg["per_device_batch_size"]),
        gradient_accumulation_steps=int(cfg["gradient_accumulation_steps"]),
        learning_rate=float(cfg["learning_rate"]),
        lr_scheduler_type=cfg["lr_scheduler"],
        warmup_steps=int(cfg["warmup_steps"]),
        weight_decay=float(cfg["weight_decay"]),
        max_grad_norm=float(cfg["max_grad_norm"]),
        optim=cfg["optim"],
        seed=int(cfg["seed"]),
        num_train_epochs=float(cfg["num_epochs"]),
        max_steps=int(cfg["max_steps"] or -1),
        logging_steps=int(cfg["logging_steps"]),
        save_strategy="steps" if save_steps else "no",
        save_steps=save_steps or 500,
        save_total_limit=cfg["save_total_limit"],
        bf16=bf16,
        fp16=cuda and not bf16,
        max_length=int(cfg["max_seq_length"]),
        packing=bool(cfg["packing"]),
        report_to=["wandb"] if cfg["wandb_project"] else "none",
        disable_tqdm=True,
        dataset_num_proc=1,
    )
    if backend == "trl":  # Unsloth runs its own checkpointing; HF's is set on the SFTConfig
        args["gradient_checkpointing"] = bool(cfg["gradient_checkpointing"])
        args["gradient_checkpointing_kwargs"] = {"use_reentrant": False}
    args.update(strategy_args(cfg, cuda))
    if float(cfg["eval_fraction"]) > 0:
        args.update(eval_strategy="steps", eval_steps=int(cfg["eval_steps"] or save_steps or 50))
    return args


def train(cfg: dict[str, Any], job_dir: Path, metrics: jio.Metrics, state: dict[str, Any]) -> dict[str, Any]:
    """The run itself; returns the manifest. ``state`` tells the error handlers how far it got."""
    backend = choose_backend(cfg["backend"])  # before transformers is imported (unsloth patches it)
    state["backend"] = backend
    import datasets
    import torch
    import transformers
    import trl  # noqa: F401  (before the model loads, as it was: a missing trl fails in the setup phase)

    datasets.disable_progress_bars()  # output.log is for people: no tqdm bars
    transformers.utils.logging.disable_progress_bar()

    transformers.set_seed(cfg["seed"])
    out_dir = (job_dir / cfg["output_dir"]).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    if cuda and WORLD_SIZE > 1:
        torch.cuda.set_device(LOCAL_RANK)  # before anything touches the GPU: rank r uses GPU LOCAL_RANK
    prepare_cpu_offload(cfg, cuda)
    announce_start(cfg, backend, cuda, metrics)
    model, tokenizer, ds, eval_ds, fmt = load_model_and_data(cfg, backend, metrics, state)
    trainer, callback, tokens_per_sample = make_trainer(
        cfg, backend, cuda, out_dir, model, tokenizer, ds, eval_ds, metrics
    )
    state.update(phase="train", callback=callback)

    resume = find_checkpoint(str(cfg["resume_from"])) if cfg["resume_from"] else None
    if resume:
        say(f"resuming from {resume}")
    t_train = time.time()
    result = trainer.train(resume_from_checkpoint=resume)
    train_s = time.time() - t_train
    host_ram = per_rank(host_ram_peak_gib())  # a collective: before the ranks part ways
    if eval_ds is not None and callback.eval_step != trainer.state.global_step:
        trainer.evaluate()  # the final eval loss, unless the schedule just took it
    memory = gpu_memory()

    state["phase"] = "save"
    paths: dict[str, str] = {}
    final = out_dir / ("model" if cfg["method"] == "full" else "adapter")
    trainer.save_model(str(final))  # every rank: FSDP / ZeRO-3 gather the weights; rank 0 writes them
    paths["model" if cfg["method"] == "full" else "adapter"] = str(final)
    if not IS_MAIN:
        return {"status": "succeeded", "rank": RANK}
    tokenizer.save_pretrained(str(final))
    if cfg["save_merged"] and cfg["method"] != "full":
        paths["merged"] = str(save_merged(cfg, backend, model, tokenizer, final, out_dir / "merged"))
    manifest = {
        "status": "succeeded",
        "backend": backend,
        "method": cfg["method"],
        "model": cfg["model"],
        "dataset": cfg["dataset"],
        "dataset_format": fmt,
        "train_rows": len(ds),
        "steps": trainer.state.global_step,
        "epochs": trainer.state.epoch,
        "final_loss": callback.last_loss,
        "train_loss": result.training_loss,
        "final_eval_loss": callback.last_eval_loss,
        "resumed_from": resume,
        "paths": paths,
        "checkpoints": str(out_dir / "checkpoints"),
        "train_s": round(train_s, 2),
        "host_ram_peak_gib": host_ram,
        "wall_time_s": round(time.time() - metrics.t0, 2),
        "tokens_per_sample": round(tokens_per_sample, 1),
        "world_size": WORLD_SIZE,
        "strategy": cfg["strategy"] if WORLD_SIZE > 1 else None,
        **memory,
        "versions": versions(),
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, default=str), encoding="utf-8")
    return manifest


def announce_start(cfg: dict[str, Any], backend: str, cuda: bool, metrics: jio.Metrics) -> None:
    """The ``start`` row (device, ranks, the whole config, library versions) and its progress line."""
    import torch

    device = torch.cuda.get_device_name() if cuda else "cpu"
    metrics.write(
        {
            "event": "start",
            "backend": backend,
            "method": cfg["method"],
            "model": cfg["model"],
            "device": device,
            "pid": os.getpid(),
            "host": platform.node(),
            "world_size": WORLD_SIZE,
            "strategy": cfg["strategy"] if WORLD_SIZE > 1 else None,
            "cpu_threads": torch.get_num_threads(),
            "config": cfg,
            "versions": versions(),
        }
    )
    say(
        f"fine-tune {cfg['model']} ({cfg['method']}, backend {backend}) on {device}"
        + (f" x {WORLD_SIZE} ranks ({cfg['strategy']})" if WORLD_SIZE > 1 else "")
    )


def load_model_and_data(
    cfg: dict[str, Any], backend: str, metrics: jio.Metrics, state: dict[str, Any]
) -> tuple[Any, Any, Any, Any, str]:
    """(model, tokenizer, train rows, eval rows or None, dataset format): the dataset is read and
    checked before the model loads, then rendered through the tokenizer's chat template."""
    ds, fmt = load_dataset_rows(cfg)
    state["phase"] = "model"
    t_load = time.time()
    model, tokenizer = load_model(cfg, backend)
    load_s = time.time() - t_load
    metrics.write({"event": "model_loaded", "load_s": round(load_s, 2)})
    say(f"model loaded in {load_s:.1f} s")
    setup_chat_template(tokenizer, cfg["chat_template"])
    ds = format_dataset(ds, fmt, tokenizer, cfg["seed"])
    eval_ds = None
    if float(cfg["eval_fraction"]) > 0:
        split = ds.train_test_split(test_size=float(cfg["eval_fraction"]), seed=cfg["seed"])
        ds, eval_ds = split["train"], split["test"]
    say(f"dataset: {len(ds)} train rows{f', {len(eval_ds)} eval' if eval_ds else ''} ({fmt})")
    return model, tokenizer, ds, eval_ds, fmt


def make_trainer(
    cfg: dict[str, Any],
    backend: str,
    cuda: bool,
    out_dir: Path,
    model: Any,
    tokenizer: Any,
    ds: Any,
    eval_ds: Any,
    metrics: jio.Metrics,
) -> tuple[Any, Any, float]:
    """(SFTTrainer, its metrics callback, mean tokens per sample) for the prepared model and rows."""
    import transformers
    from trl import SFTConfig, SFTTrainer

    if cfg["wandb_project"]:
        os.environ["WANDB_PROJECT"] = str(cfg["wandb_project"])
        if cfg["wandb_mode"]:
            os.environ["WANDB_MODE"] = str(cfg["wandb_mode"])
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**trainer_args(cfg, backend, cuda, out_dir)),
        train_dataset=ds,
        eval_dataset=eval_ds,
        processing_class=tokenizer,
    )
    lengths = [len(x) for x in trainer.train_dataset.select(range(min(len(trainer.train_dataset), 4096)))["input_ids"]]
    tokens_per_sample = sum(lengths) / max(len(lengths), 1)
    samples_per_step = int(cfg["per_device_batch_size"]) * int(cfg["gradient_accumulation_steps"])
    callback = make_callback(metrics, tokens_per_sample, samples_per_step * trainer.args.world_size)
    trainer.add_callback(callback)
    trainer.remove_callback(transformers.PrinterCallback)
    return trainer, callback, tokens_per_sample


def save_merged(cfg: dict[str, Any], backend: str, model: Any, tokenizer: Any, adapter: Path, dest: Path) -> Path:
    """The 16-bit merged model that a server loads without PEFT.

    For QLoRA the merge must go into 16-bit base weights, not the 4-bit ones, so the TRL
    path reloads the base in bf16 (fp32 base on CPU is saved as bf16 too) and merges there.
    """
    if backend == "unsloth":
        model.save_pretrained_merged(str(dest), tokenizer, save_method="merged_16bit")
        return dest
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(cfg["model"], dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(dest))
    tokenizer.save_pretrained(str(dest))
    return dest


def other_rank_failed_first(path: Path) -> bool:
    """True when another rank already wrote an error: ours is then a consequence (a peer vanished
    mid-collective), and the first error is the one the job must report."""
    if WORLD_SIZE == 1:
        return False
    try:
        with path.open("rb") as fh:
            fh.seek(max(0, path.stat().st_size - 65536))
            tail = fh.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return False
    for line in tail:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and row.get("event") == "error" and row.get("rank") not in (None, RANK):
            return True
    return False


def report_error(metrics: jio.Metrics, row: dict[str, Any], exc: BaseException) -> None:
    """An error row from whichever rank failed first, and the exception in torchrun's error file.

    Why the error file: torchrun orders failures by the time in each rank's error file and
    prints the first one as the root cause; without it every rank looks alike ("exit 1").
    """
    if WORLD_SIZE > 1:
        row["message"] = f"rank {RANK}: {row['message']}"
        if os.environ.get("TORCHELASTIC_ERROR_FILE"):
            try:
                from torch.distributed.elastic.multiprocessing.errors import get_error_handler

                handler = get_error_handler()
                handler.initialize()
                handler.record_exception(exc)
            except Exception as rec_exc:  # the metrics row below still reports the error
                print(f"could not write torchrun's error file: {rec_exc}", file=sys.stderr, flush=True)
        if other_rank_failed_first(metrics.path):
            return
    metrics.write(row, any_rank=True)


def finish_distributed() -> None:
    """Leave the process group cleanly (no 'destroy_process_group was not called' warnings)."""
    if WORLD_SIZE == 1:
        return
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception as exc:
        print(f"process group teardown: {exc}", file=sys.stderr, flush=True)


def set_allocator_env(env: MutableMapping[str, str]) -> str | None:
    """Turn on the CUDA allocator's expandable segments before torch is imported; the variable set.

    Without them the caching allocator fragments, most at FSDP's optimizer step (2x H100, 3B
    full fine-tune: 4.4 GiB reserved above the allocated peak). Unsloth does the same on import
    (unsloth_zoo), with the same exceptions: a value the user set wins, and WSL / Windows, where
    the CUDA VMM calls behind it fail, are left alone. torch >= 2.10 reads PYTORCH_ALLOC_CONF,
    older ones PYTORCH_CUDA_ALLOC_CONF.
    """
    if any(env.get(k) for k in ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")):
        return None
    if os.name == "nt" or env.get("WSL_DISTRO_NAME") or "microsoft" in platform.release().lower():
        return None
    torch_version = _package_version("torch")
    if torch_version is None:
        return None
    key = "PYTORCH_ALLOC_CONF" if torch_version >= (2, 10) else "PYTORCH_CUDA_ALLOC_CONF"
    env[key] = "expandable_segments:True"
    return key


def main(argv: list[str] | None = None) -> int:
    """Parse args, run, and turn every failure into a metrics record plus a distinct exit code."""
    settings, job_dir = jio.job_args(argv, "LoRA/QLoRA/full fine-tune payload (Unsloth or TRL + PEFT)")
    files = jio.job_files(settings, job_dir)
    set_allocator_env(os.environ)
    metrics = jio.Metrics(files.metrics, rank=RANK, world_size=WORLD_SIZE)
    state: dict[str, Any] = {"phase": "setup", "backend": None, "callback": None}
    cfg: dict[str, Any] = {}
    try:
        cfg = load_config(files.settings)
        manifest = train(cfg, files.job_dir, metrics, state)
    except (jio.BadInput, dsf.DatasetFormatError) as exc:  # the same on every rank: rank 0 reports it
        metrics.write(jio.error_row("bad_input", str(exc), phase=state["phase"]))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return jio.EXIT_BAD_INPUT
    except Exception as exc:
        return report_train_failure(metrics, exc, cfg, state)
    finish_distributed()
    if not IS_MAIN:
        return jio.EXIT_OK
    metrics.write(
        {
            "event": "end",
            "status": "succeeded",
            "backend": manifest["backend"],
            "steps": manifest["steps"],
            "final_loss": manifest["final_loss"],
            "final_eval_loss": manifest["final_eval_loss"],
            "train_s": manifest["train_s"],
            "wall_time_s": manifest["wall_time_s"],
            "outputs": manifest["paths"],
            "host_ram_peak_gib": manifest["host_ram_peak_gib"],
            **{k: v for k, v in manifest.items() if k.startswith("gpu_mem")},
        }
    )
    say(
        f"done: {manifest['steps']} steps, final loss {manifest['final_loss']}, outputs in "
        f"{files.job_dir / cfg['output_dir']}"
    )
    return jio.EXIT_OK


def report_train_failure(metrics: jio.Metrics, exc: BaseException, cfg: dict[str, Any], state: dict[str, Any]) -> int:
    """The failure record of an exception in training (an OOM with what to change) from the rank
    that failed first; returns the exit code."""
    cb = state["callback"]
    step = cb.step if cb is not None else 0
    where = {"step": step, "phase": state["phase"], "backend": state["backend"]}
    if jio.is_oom(exc):
        import torch

        total = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
        tip = oom_suggestion(cfg) if cfg else "reduce the batch size"
        est = cfg.get("estimated_peak_gib")
        msg = (
            f"CUDA out of memory at step {step} ({state['phase']})"
            + (f": estimate said {est} GiB" if est else "")
            + (f" on a {total:.0f} GiB GPU" if total else "")
            + f"; {tip}"
        )
        row = jio.error_row(
            "cuda_oom", msg, **where, suggestion=tip, estimated_peak_gib=est, gpu_total_gib=total, **gpu_memory()
        )
        report_error(metrics, row, exc)
        print(f"error: {msg}", file=sys.stderr, flush=True)
        return jio.EXIT_OOM
    traceback.print_exc()
    report_error(metrics, jio.error_row("exception", jio.describe(exc).splitlines()[0][:500], **where), exc)
    return jio.EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
