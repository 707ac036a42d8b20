"""What the fine-tune payload sets up in its own process before torch starts: the CUDA
allocator's expandable segments, and the CPU threads and process group FSDP's CPU offload needs.

Measured reasons (2x H100 / H200, Llama-3.2-3B shape, bench/data/multigpu_gpu.jsonl): the
default allocator reserved 2.8 GiB more at FSDP's optimizer step; CPU offload with a NCCL-only
group died at the first gradient clipping.
"""

from __future__ import annotations

import os

import pytest
import torch

from runners.payloads import finetune as payload


def test_expandable_segments_are_set_for_the_installed_torch() -> None:
    env: dict[str, str] = {}
    key = payload.set_allocator_env(env)
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    expected = "PYTORCH_ALLOC_CONF" if (major, minor) >= (2, 10) else "PYTORCH_CUDA_ALLOC_CONF"
    assert key == expected and env == {expected: "expandable_segments:True"}


@pytest.mark.parametrize("key", ["PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF"])
def test_a_users_allocator_setting_wins(key: str) -> None:
    env = {key: "backend:cudaMallocAsync"}
    assert payload.set_allocator_env(env) is None
    assert env == {key: "backend:cudaMallocAsync"}


def test_wsl_is_left_alone() -> None:
    """The CUDA VMM calls behind expandable segments fail under WSL (unslothai/unsloth#3511)."""
    env = {"WSL_DISTRO_NAME": "Ubuntu"}
    assert payload.set_allocator_env(env) is None
    assert env == {"WSL_DISTRO_NAME": "Ubuntu"}


def test_cpu_offload_gives_each_rank_its_share_of_the_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun sets OMP_NUM_THREADS=1; the CPU AdamW step of an offloaded rank needs more."""
    before = torch.get_num_threads()
    monkeypatch.setattr(payload, "WORLD_SIZE", 2)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    try:
        torch.set_num_threads(1)
        payload.prepare_cpu_offload({"cpu_offload": True, "strategy": "fsdp"}, cuda=False)
        assert torch.get_num_threads() == len(os.sched_getaffinity(0))
        torch.set_num_threads(1)
        payload.prepare_cpu_offload({"cpu_offload": False, "strategy": "fsdp"}, cuda=False)
        assert torch.get_num_threads() == 1  # without offload nothing changes
    finally:
        torch.set_num_threads(before)
