"""submit_finetune: validate a fine-tune request, plan it against the host's GPU, build its job.

The package: ``inputs.py`` (the arguments, the plan model, the dataset check), ``plan.py`` (the
plan: GPUs, ranks, strategy, batch, memory), ``spec.py`` (the job), ``submit.py`` (the tool),
``defaults.py`` (the defaults, read from the payload).

The controller side of fine-tuning. It never imports torch: the model's
architecture comes from ``tools/models.py`` (config.json / catalog), the memory
plan from ``tools/plan.py``, and the dataset is checked with the stdlib checker
the payload itself uses (``runners/payloads/dataset_formats.py``), so a file the
payload would reject is refused here, before anything is submitted.

What runs on the host is ``runners/payloads/finetune.py`` (Unsloth when it
imports and a CUDA GPU is present, else TRL + PEFT), fed ``payload_config``.

Several GPUs (or nodes) run the same payload under torchrun, one process per GPU
(``runners/distributed.py`` builds the argv; srun starts one agent per node on SLURM).
``strategy='auto'`` is decided here, with the estimator as the proof: DDP when the model,
its gradients and optimizer states fit one GPU (a full replica per GPU is the fastest:
no parameter traffic), else FSDP full_shard (sharded like ZeRO-3, ``zero_stage=3`` in
the estimate), which ships with torch, unlike DeepSpeed. Unsloth's multi-GPU support is
not official in 2026.10.9 (its docs: "working on official multi-GPU support", DDP via
accelerate only as a manual recipe), so multi-GPU jobs use TRL + accelerate.
"""
