"""Partition GPU status from sinfo output, as a pure function."""

from __future__ import annotations

import pytest

from runners.errors import InvalidInput
from runners.launchers.slurm.gpus import SEP, gpu_count, sinfo_gpus_argv, slurm_gpu_status, split_gres


def _line(node, gres, used, state, cpus="0/64/0/64"):
    return SEP.join([node, gres, used, state, cpus, "512000", "0"]) + SEP + "\n"  # as sinfo -O prints it


def test_split_gres_keeps_commas_inside_parentheses():
    assert split_gres("gpu:a100:2(IDX:0,2),mps:0") == ["gpu:a100:2(IDX:0,2)", "mps:0"]
    assert split_gres("(null)") == []


@pytest.mark.parametrize(
    ("gres", "n", "kind"),
    [
        ("gpu:2", 2, None),
        ("gpu:h100:4(S:0-1)", 4, "h100"),
        ("gpu:h100:2(IDX:0-1)", 2, "h100"),
        ("gpu:a100:0(IDX:N/A)", 0, "a100"),
        ("gpu:a100:4,gpu:v100:2", 6, "a100"),
        ("mps:800", 0, None),
        ("(null)", 0, None),
    ],
)
def test_gpu_count(gres, n, kind):
    assert gpu_count(gres) == (n, kind)


def test_partition_totals_allocated_idle_and_unavailable():
    out = "".join(
        [
            _line("h1", "gpu:h100:4(S:0-1)", "gpu:h100:4(IDX:0-3)", "allocated"),
            _line("h2", "gpu:h100:4(S:0-1)", "gpu:h100:1(IDX:0)", "mixed"),
            _line("h3", "gpu:h100:4(S:0-1)", "gpu:h100:0(IDX:N/A)", "drained"),
            _line("h4", "gpu:h100:4(S:0-1)", "gpu:h100:0(IDX:N/A)", "idle"),
            _line("h4", "gpu:h100:4(S:0-1)", "gpu:h100:0(IDX:N/A)", "idle"),  # same node, second partition
            _line("h5", "gpu:h100:4(S:0-1)", "gpu:h100:0(IDX:N/A)", "down*"),
        ]
    )
    st = slurm_gpu_status(out, "pli")
    assert (st.total, st.allocated, st.idle, st.unavailable) == (20, 5, 7, 8)
    assert st.gpu_types == ["h100"] and len(st.nodes) == 5
    assert "20 h100 GPUs" in st.summary and "7 idle" in st.summary


def test_empty_partition_is_zero_not_an_error_here():
    st = slurm_gpu_status("", "nope")
    assert st.total == 0 and st.nodes == []


def test_sinfo_argv():
    argv = sinfo_gpus_argv("pli")
    assert argv[:3] == ["sinfo", "--noheader", "--Node"] and argv[-1] == "--partition=pli"
    with pytest.raises(InvalidInput):
        sinfo_gpus_argv("-x")
