"""Scripts that run on the GPU host, and which files travel with each of them.

A job directory on a host holds a payload flat beside the modules it imports; nothing of
ours is installed there. So the list of what travels lives here, beside the files, and the
engine (runners/engine.py) copies exactly ``shipped_files(payload)`` into every job
directory, on local, SSH and SLURM hosts alike (they all write through their Transport).
Stdlib only: the controller imports this package.
"""

from __future__ import annotations

__all__ = ["SHARED", "SIBLINGS", "shipped_files"]

# Imported by every payload from its own directory: job.json, metrics.jsonl, the failure record, the exit codes.
SHARED: tuple[str, ...] = ("job_io",)
# What a payload imports from its own directory besides SHARED.
SIBLINGS: dict[str, tuple[str, ...]] = {
    "finetune": ("dataset_formats",),
    "evaluate": ("finetune", "dataset_formats"),  # its loss is the fine-tune's (same template and masking)
}


def shipped_files(payload: str) -> tuple[str, ...]:
    """Module names (without ``.py``) copied into a job directory for ``payload``: itself first."""
    return (payload, *SHARED, *SIBLINGS.get(payload, ()))
