"""list_gpu_tiers: the GPU tier catalog (``runners/accelerators.py``) as the agent reads it."""

from __future__ import annotations

import json

from pydantic import BaseModel, Field

from runners.accelerators import TIERS, GpuTier

__all__ = ["ListGpuTiersInput", "ListGpuTiersOutput", "list_gpu_tiers", "tiers_json"]


class ListGpuTiersInput(BaseModel):
    min_memory_gib: float | None = Field(None, ge=0, description="Only tiers with at least this much memory.")


class ListGpuTiersOutput(BaseModel):
    tiers: list[GpuTier]
    summary: str


async def list_gpu_tiers(params: ListGpuTiersInput) -> ListGpuTiersOutput:
    tiers = [t for t in TIERS.values() if params.min_memory_gib is None or t.memory_gib >= params.min_memory_gib]
    return ListGpuTiersOutput(
        tiers=tiers, summary=f"{len(tiers)} GPU tiers: " + ", ".join(f"{t.id} {t.memory_gib:g} GiB" for t in tiers)
    )


def tiers_json() -> str:
    """The whole catalog as JSON (the ``gpus://tiers`` resource)."""
    return json.dumps([t.model_dump() for t in TIERS.values()], indent=1)
