"""Re-export of :mod:`runners.accelerators` (the GPU tier catalog and accelerator strings).

The catalog moved down to ``runners/`` because the host config validates ``gpus``
strings against it (a lower layer must not import ``tools``). This name stays only for
the modules that still import it (``tools/memory.py``, ``tools/plan.py``,
``tools/serve.py``); new code imports ``runners.accelerators``.
"""

from __future__ import annotations

from runners.accelerators import TIERS, Accelerator, GpuTier, get_tier, parse_accelerator, tier_ids

__all__ = ["TIERS", "Accelerator", "GpuTier", "get_tier", "parse_accelerator", "tier_ids"]
