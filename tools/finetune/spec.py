"""The fine-tune job: the payload ``finetune`` with its config (no secrets in it), and for several
processes the torchrun argv that runs the copied payload."""

from __future__ import annotations

from typing import Any

from runners.config import HostConfig
from runners.distributed import DistributedLaunch, launch_argv
from runners.errors import InvalidInput
from runners.spec import JobSpec, Resources
from tools.finetune.defaults import DEFAULTS
from tools.finetune.inputs import FinetuneInput, FinetunePlan

__all__ = ["DEFAULT_OPTIMIZER", "build_finetune_spec"]

# The estimator's optimizer names -> the ``optim`` of transformers' TrainingArguments the payload passes on.
_OPTIM = {"adamw": "adamw_torch", "adamw_8bit": "adamw_8bit", "paged_adamw_8bit": "paged_adamw_8bit", "sgd": "sgd"}
DEFAULT_OPTIMIZER = next(k for k, v in _OPTIM.items() if v == DEFAULTS["optim"])


def _launch(host: HostConfig, plan: FinetunePlan, agents_per_node: int) -> tuple[list[str], int]:
    """The torchrun (or srun + torchrun) argv of a multi-process plan, and the SLURM tasks per node."""
    per_node = plan.world_size // plan.nodes
    if per_node % agents_per_node:
        raise InvalidInput(f"{per_node} ranks per node do not split into {agents_per_node} agents.", None)
    slurm = host.launcher == "slurm"
    d = DistributedLaunch(
        nodes=plan.nodes,
        nproc_per_node=per_node // agents_per_node,
        agents_per_node=agents_per_node,
        launcher="slurm" if slurm else "direct",
        gpus_per_node=plan.gpus,
        gres=host.slurm_settings.gres if slurm else "gpu",
    )
    argv = launch_argv(d, host.interpreter, ["finetune.py", "job.json"])
    return argv, agents_per_node if slurm and d.agents > 1 else 1


def build_finetune_spec(
    p: FinetuneInput,
    host: HostConfig,
    plan: FinetunePlan,
    dataset_ref: str,
    resume_path: str | None,
    *,
    agents_per_node: int = 1,
) -> JobSpec:
    """The JobSpec the engine starts: payload ``finetune`` with its config (no secrets in it).

    A multi-process plan also gets the torchrun (or srun + torchrun) argv that runs the
    copied payload; ``agents_per_node`` > 1 splits one SLURM node into several torchrun
    "nodes" (the single-node test cluster's way to run the multi-node wiring for real).
    """
    cfg: dict[str, Any] = {
        "model": p.model,
        "dataset": dataset_ref,
        "dataset_format": plan.dataset_format if plan.dataset_format != "auto" else p.dataset_format,
        "method": p.method,
        "backend": p.backend if p.backend != "auto" else "auto",
        "max_seq_length": p.max_seq_length,
        "lora_dropout": p.lora_dropout,
        "learning_rate": p.learning_rate,
        "lr_scheduler": p.lr_scheduler,
        "warmup_steps": p.warmup_steps,
        "per_device_batch_size": plan.per_device_batch_size,
        "gradient_accumulation_steps": plan.gradient_accumulation_steps,
        "packing": p.packing,
        "eval_fraction": p.eval_fraction,
        "save_steps": p.save_steps,
        "save_merged": p.save_merged,
        "chat_template": p.chat_template,
        "seed": p.seed,
        "gradient_checkpointing": plan.gradient_checkpointing,
        "optim": _OPTIM[plan.optimizer],
        "estimated_peak_gib": plan.estimated_peak_gib,
        "resume_from": resume_path,
        "strategy": plan.strategy or "ddp",
        "cpu_offload": plan.cpu_offload,
    }
    if p.method != "full":
        cfg["lora_r"] = p.lora_r or DEFAULTS["lora_r"]
        cfg["lora_alpha"] = p.lora_alpha or cfg["lora_r"]
        if p.target_modules:
            cfg["target_modules"] = p.target_modules
    if p.max_steps is not None:
        cfg["max_steps"] = p.max_steps
    else:
        cfg["num_epochs"] = p.num_epochs or DEFAULTS["num_epochs"]
    env: dict[str, str] = {}
    secrets: list[str] = []
    if p.wandb_project:
        cfg["wandb_project"] = p.wandb_project
        cfg["wandb_mode"] = p.wandb_mode or ("offline" if host.launcher == "slurm" else "online")
        if cfg["wandb_mode"] == "online":  # offline runs need no key; online ones fail at submit without it
            secrets.append("WANDB_API_KEY")
    else:
        env["WANDB_DISABLED"] = "true"
    argv, tasks = _launch(host, plan, agents_per_node) if plan.world_size > 1 else (None, 1)
    return JobSpec(
        kind="finetune",
        name=p.output_name or f"finetune {p.model.rsplit('/', 1)[-1]} ({p.method})",
        payload="finetune",
        argv=argv,
        payload_config=cfg,
        env=env,
        secrets=secrets,
        resources=Resources(gpus=plan.gpus, nodes=plan.nodes, tasks_per_node=tasks, time_limit_s=p.time_limit_s),
    )
