"""The serve payload's part of a multi-node server: which flags each SLURM task adds to vLLM.

The head's address comes from ``scontrol show hostnames`` (SLURM's own expansion of
``node[01-02]``), so these run the real scontrol; no controller is needed for it.
"""

from __future__ import annotations

import shutil

import pytest

from runners.payloads.serve import MASTER_PORT_BASE, multinode_args
from tests.helpers.ci import unavailable


@pytest.fixture(autouse=True)
def _scontrol() -> None:
    if shutil.which("scontrol") is None:
        unavailable("scontrol is not installed (apt-get install slurm-client)")


def test_head_task_gets_rank_zero_and_the_first_node_as_master():
    env = {"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}
    rank, flags = multinode_args(2, env)
    assert rank == 0 and "--headless" not in flags
    assert flags == ["--node-rank", "0", "--master-addr", "gpu07", "--master-port", str(MASTER_PORT_BASE + 1234)]


def test_other_tasks_are_headless_with_the_same_master():
    env = {"SLURM_PROCID": "1", "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "1234"}
    rank, flags = multinode_args(2, env)
    assert rank == 1 and flags[-1] == "--headless" and flags[flags.index("--master-addr") + 1] == "gpu07"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"SLURM_JOB_NODELIST": "gpu01"}, "must run under srun"),
        ({"SLURM_PROCID": "0", "SLURM_JOB_NODELIST": ""}, "first node"),
        ({"SLURM_PROCID": "3", "SLURM_JOB_NODELIST": "gpu[01-02]"}, "has 2 processes"),
    ],
)
def test_outside_an_allocation_it_says_why(env: dict[str, str], match: str):
    with pytest.raises(RuntimeError, match=match):
        multinode_args(2, env)
