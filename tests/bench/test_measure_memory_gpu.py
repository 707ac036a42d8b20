"""bench/measure_memory_gpu.py's planning on the CPU: the one GPU call must run its whole list."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import measure_memory_gpu as mm


def test_plan_jobs_isolates_unsloth_and_builds_checkpoints_first():
    workers = mm.plan_jobs(mm.CASE_SETS["issue17"])
    seen_builds: set[str] = set()
    for jobs in workers:
        kinds = {j.get("backend") for j in jobs if "build" not in j}
        if "unsloth" in kinds:
            assert len(jobs) == 1 and jobs[0]["model"] in seen_builds  # a fresh process, checkpoint ready
        for j in jobs:
            if "build" in j:
                seen_builds.add(j["build"])
            elif j["task"] == "qlora":
                assert j["model"] in seen_builds
    ids = [j["id"] for w in workers for j in w if "id" in j]
    assert ids == [c["id"] for c in mm.CASE_SETS["issue17"]]  # every case once, in priority order


def test_case_ids_are_unique_and_rows_carry_estimate_memory_names():
    for cases in mm.CASE_SETS.values():
        assert len({c["id"] for c in cases}) == len(cases)
    c = mm.case("meta-llama/Llama-3.2-1B", "lora", "hf", 2048, 4, ckpt=False, mp="none", attn="eager")
    assert c["id"].endswith("-noautocast-eager-adamw")
    assert {"mixed_precision", "attn_implementation", "gradient_checkpointing"} <= c.keys()


def test_the_budget_is_respected_by_estimates():
    assert all(mm.estimate_seconds(j) > 0 for w in mm.plan_jobs(mm.CASE_SETS["issue17"]) for j in w)
