"""GPU tiers (vendor figures) and accelerator strings like ``H100:2``.

Why in runners/: a host's config names its GPUs (``gpus = "H100:4"``) and
``runners/config.py`` validates that string against this catalog, so the catalog sits
at the lowest layer; the estimator and planner in ``tools/`` read it from here.

The catalog is data, not logic: each tier carries the figures the memory model and
the planner need (usable memory, compute capability and what it implies for bf16 /
fp8 / fp4, bandwidth, dense bf16 tensor throughput, interconnect). ``memory_gib`` is
what ``nvidia-smi`` reports as total for the board (MiB ÷ 1024), which is what a job
can actually use; a host's own ``nvidia-smi`` figure or its config override wins
over this table (see ``runners/config.py``).

Sources: NVIDIA product briefs and datasheets (RTX 4090/5090 and Ada/Blackwell
whitepapers, A6000, L40S, L4, A10G, A100, H100, H200, HGX B200 datasheets).
"""

from __future__ import annotations

import re

from pydantic import BaseModel, Field

from runners.errors import InvalidInput

__all__ = ["TIERS", "Accelerator", "GpuTier", "get_tier", "parse_accelerator", "tier_ids"]


class GpuTier(BaseModel):
    """One GPU model as the vendor describes it."""

    id: str = Field(description="Canonical id, e.g. 'H100' or 'A100-80GB'.")
    name: str
    memory_gib: float = Field(description="Usable device memory per GPU as nvidia-smi reports it (GiB).")
    memory_vendor_gb: int = Field(description="Marketing capacity in GB.")
    compute_capability: str
    bf16: bool
    fp8: bool
    fp4: bool
    bandwidth_gb_s: int = Field(description="Memory bandwidth in GB/s.")
    bf16_tflops_dense: float = Field(description="Dense BF16/FP16 tensor TFLOPS with FP32 accumulate.")
    interconnect: str
    typical_max_per_node: int = Field(description="GPUs per node in the usual server/workstation build.")
    notes: str = ""


def _t(**kw: object) -> GpuTier:
    return GpuTier.model_validate(kw)


TIERS: dict[str, GpuTier] = {
    t.id: t
    for t in [
        _t(
            id="T4",
            name="NVIDIA T4",
            memory_gib=15.0,
            memory_vendor_gb=16,
            compute_capability="7.5",
            bf16=False,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=320,
            bf16_tflops_dense=65.0,
            interconnect="PCIe 3.0 x16",
            typical_max_per_node=8,
            notes="FP16 only (no bf16).",
        ),
        _t(
            id="V100",
            name="NVIDIA V100 32GB",
            memory_gib=31.74,
            memory_vendor_gb=32,
            compute_capability="7.0",
            bf16=False,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=900,
            bf16_tflops_dense=125.0,
            interconnect="NVLink 2 (300 GB/s)",
            typical_max_per_node=8,
            notes="FP16 only (no bf16).",
        ),
        _t(
            id="RTX3090",
            name="NVIDIA GeForce RTX 3090",
            memory_gib=24.0,
            memory_vendor_gb=24,
            compute_capability="8.6",
            bf16=True,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=936,
            bf16_tflops_dense=71.0,
            interconnect="PCIe 4.0 x16 (NVLink bridge 112.5 GB/s)",
            typical_max_per_node=4,
        ),
        _t(
            id="RTX4090",
            name="NVIDIA GeForce RTX 4090",
            memory_gib=23.99,
            memory_vendor_gb=24,
            compute_capability="8.9",
            bf16=True,
            fp8=True,
            fp4=False,
            bandwidth_gb_s=1008,
            bf16_tflops_dense=82.6,
            interconnect="PCIe 4.0 x16 (no NVLink)",
            typical_max_per_node=4,
            notes="165 TFLOPS with FP16 accumulate; 82.6 with FP32 accumulate, which training uses.",
        ),
        _t(
            id="RTX5090",
            name="NVIDIA GeForce RTX 5090",
            memory_gib=31.84,
            memory_vendor_gb=32,
            compute_capability="12.0",
            bf16=True,
            fp8=True,
            fp4=True,
            bandwidth_gb_s=1792,
            bf16_tflops_dense=104.8,
            interconnect="PCIe 5.0 x16 (no NVLink)",
            typical_max_per_node=4,
            notes="209.5 TFLOPS with FP16 accumulate; about half with FP32 accumulate.",
        ),
        _t(
            id="A10G",
            name="NVIDIA A10G",
            memory_gib=22.49,
            memory_vendor_gb=24,
            compute_capability="8.6",
            bf16=True,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=600,
            bf16_tflops_dense=70.0,
            interconnect="PCIe 4.0 x16",
            typical_max_per_node=8,
        ),
        _t(
            id="L4",
            name="NVIDIA L4",
            memory_gib=22.49,
            memory_vendor_gb=24,
            compute_capability="8.9",
            bf16=True,
            fp8=True,
            fp4=False,
            bandwidth_gb_s=300,
            bf16_tflops_dense=121.0,
            interconnect="PCIe 4.0 x16",
            typical_max_per_node=8,
        ),
        _t(
            id="A6000",
            name="NVIDIA RTX A6000",
            memory_gib=47.99,
            memory_vendor_gb=48,
            compute_capability="8.6",
            bf16=True,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=768,
            bf16_tflops_dense=154.8,
            interconnect="PCIe 4.0 x16 (NVLink bridge 112.5 GB/s)",
            typical_max_per_node=4,
        ),
        _t(
            id="RTX6000ADA",
            name="NVIDIA RTX 6000 Ada",
            memory_gib=47.99,
            memory_vendor_gb=48,
            compute_capability="8.9",
            bf16=True,
            fp8=True,
            fp4=False,
            bandwidth_gb_s=960,
            bf16_tflops_dense=364.2,
            interconnect="PCIe 4.0 x16 (no NVLink)",
            typical_max_per_node=4,
        ),
        _t(
            id="L40S",
            name="NVIDIA L40S",
            memory_gib=44.99,
            memory_vendor_gb=48,
            compute_capability="8.9",
            bf16=True,
            fp8=True,
            fp4=False,
            bandwidth_gb_s=864,
            bf16_tflops_dense=362.0,
            interconnect="PCIe 4.0 x16 (no NVLink)",
            typical_max_per_node=8,
            notes="48 GB GDDR6 with ECC; nvidia-smi shows ~45 GiB usable.",
        ),
        _t(
            id="A100-40GB",
            name="NVIDIA A100 40GB",
            memory_gib=40.0,
            memory_vendor_gb=40,
            compute_capability="8.0",
            bf16=True,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=1555,
            bf16_tflops_dense=312.0,
            interconnect="NVLink 3 (600 GB/s)",
            typical_max_per_node=8,
        ),
        _t(
            id="A100-80GB",
            name="NVIDIA A100 80GB",
            memory_gib=80.0,
            memory_vendor_gb=80,
            compute_capability="8.0",
            bf16=True,
            fp8=False,
            fp4=False,
            bandwidth_gb_s=2039,
            bf16_tflops_dense=312.0,
            interconnect="NVLink 3 (600 GB/s)",
            typical_max_per_node=8,
        ),
        _t(
            id="H100",
            name="NVIDIA H100 80GB (SXM)",
            memory_gib=79.65,
            memory_vendor_gb=80,
            compute_capability="9.0",
            bf16=True,
            fp8=True,
            fp4=False,
            bandwidth_gb_s=3350,
            bf16_tflops_dense=989.0,
            interconnect="NVLink 4 (900 GB/s)",
            typical_max_per_node=8,
            notes="PCIe variant: 2.0 TB/s, 756 TFLOPS.",
        ),
        _t(
            id="H200",
            name="NVIDIA H200 141GB (SXM)",
            memory_gib=140.4,
            memory_vendor_gb=141,
            compute_capability="9.0",
            bf16=True,
            fp8=True,
            fp4=False,
            bandwidth_gb_s=4800,
            bf16_tflops_dense=989.0,
            interconnect="NVLink 4 (900 GB/s)",
            typical_max_per_node=8,
        ),
        _t(
            id="B200",
            name="NVIDIA B200 (HGX)",
            memory_gib=179.1,
            memory_vendor_gb=192,
            compute_capability="10.0",
            bf16=True,
            fp8=True,
            fp4=True,
            bandwidth_gb_s=8000,
            bf16_tflops_dense=2250.0,
            interconnect="NVLink 5 (1.8 TB/s)",
            typical_max_per_node=8,
            notes="192 GB HBM3e per GPU; 180 GB usable per GPU on HGX B200 (not 141 GB: that is the H200).",
        ),
    ]
}

# Lenient names → canonical id. Keys are normalised by _norm().
_ALIASES: dict[str, str] = {
    "t4": "T4",
    "v100": "V100",
    "v10032gb": "V100",
    "v100sxm2": "V100",
    "3090": "RTX3090",
    "rtx3090": "RTX3090",
    "geforcertx3090": "RTX3090",
    "4090": "RTX4090",
    "rtx4090": "RTX4090",
    "geforcertx4090": "RTX4090",
    "5090": "RTX5090",
    "rtx5090": "RTX5090",
    "geforcertx5090": "RTX5090",
    "a10g": "A10G",
    "l4": "L4",
    "a6000": "A6000",
    "rtxa6000": "A6000",
    "rtx6000ada": "RTX6000ADA",
    "6000ada": "RTX6000ADA",
    "rtx6000adageneration": "RTX6000ADA",
    "l40s": "L40S",
    "a10040gb": "A100-40GB",
    "a10040g": "A100-40GB",
    "a100sxm440gb": "A100-40GB",
    "a100pcie40gb": "A100-40GB",
    "a100": "A100-80GB",
    "a10080gb": "A100-80GB",
    "a10080g": "A100-80GB",
    "a100sxm480gb": "A100-80GB",
    "a100pcie80gb": "A100-80GB",
    "h100": "H100",
    "h10080gb": "H100",
    "h100sxm": "H100",
    "h100sxm580gb": "H100",
    "h10080gbhbm3": "H100",
    "h100pcie": "H100",
    "h200": "H200",
    "h200141gb": "H200",
    "h200sxm": "H200",
    "b200": "B200",
    "b200180gb": "B200",
    "b200192gb": "B200",
}


def _norm(name: str) -> str:
    name = name.lower().strip()
    name = re.sub(r"^nvidia\s*", "", name)
    return re.sub(r"[\s_\-.]", "", name)


def tier_ids() -> list[str]:
    return list(TIERS)


def get_tier(name: str) -> GpuTier:
    """Find a tier by any lenient spelling ('h100', 'NVIDIA H100 80GB HBM3', 'rtx-5090')."""
    key = _norm(name)
    if key in _ALIASES:
        return TIERS[_ALIASES[key]]
    for tid in TIERS:  # canonical ids, case-insensitively
        if _norm(tid) == key:
            return TIERS[tid]
    raise InvalidInput(
        f"Unknown GPU {name!r}.",
        f"Use one of: {', '.join(TIERS)} (case and dashes don't matter), optionally with a count like 'H100:2'.",
    )


class Accelerator(BaseModel):
    """A GPU tier and a count, parsed from strings like ``H100:2``."""

    tier: GpuTier
    count: int = Field(ge=1)

    def __str__(self) -> str:
        return f"{self.tier.id}:{self.count}"


def parse_accelerator(spec: str) -> Accelerator:
    """Parse ``'H100:2'``, ``'b200'``, ``'RTX5090:2'``, ``'2xA100'`` leniently; reject unknown GPUs."""
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInput("Empty accelerator string.", "Write it like 'H100:2' (tier id and GPU count).")
    s = spec.strip()
    count = 1
    m = re.fullmatch(r"(.+?)\s*[:x\u00d7*]\s*(\d+)", s, flags=re.IGNORECASE)
    m2 = re.fullmatch(r"(\d+)\s*[x\u00d7*]\s*(.+)", s, flags=re.IGNORECASE)
    if m and not _is_tier(s):
        s, count = m.group(1), int(m.group(2))
    elif m2:
        count, s = int(m2.group(1)), m2.group(2)
    if count < 1 or count > 1024:
        raise InvalidInput(f"GPU count {count} in {spec!r} is out of range.", "Use a count from 1 to 1024.")
    return Accelerator(tier=get_tier(s), count=count)


def _is_tier(s: str) -> bool:
    try:
        get_tier(s)
    except InvalidInput:
        return False
    return True
