"""bench/memory_accuracy.py: the band error, the per-regime table and a check that can fail."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import memory_accuracy as ma


def test_band_error_is_zero_inside_and_relative_to_the_nearest_edge():
    row = {"measured_gib": 10.0, "max_allocated_gib": 8.0, "context_gib": 0.5}
    assert ma.band(row) == (8.5, 10.0)
    assert ma.band_error(row, 9.0) == 0.0
    assert ma.band_error(row, 11.0) == pytest.approx(0.1)
    assert ma.band_error(row, 8.5 * 0.9) == pytest.approx(-0.1)
    assert ma.band({"measured_gib": 5.0}) == (5.0, 5.0)  # one number: a band of width 0


def _scored(err: float) -> dict:
    return {"ours": err, "row": {"id": f"r{err}"}}


def test_check_fails_on_an_under_estimate_past_five_percent():
    assert ma.check([_scored(0.0), _scored(-0.04)], 1.0) == []
    missed = ma.check([_scored(0.0), _scored(-0.051)], 1.0)
    assert len(missed) == 1 and "under-estimate" in missed[0] and "r-0.051" in missed[0]
    assert any("over-estimate" in m for m in ma.check([_scored(0.11)], 1.0))
    assert any("median call" in m for m in ma.check([_scored(0.0)], 6.0))


def test_every_measured_row_is_scored_with_a_regime():
    scored, unscored = ma.score(ma.load_rows())
    assert len(scored) >= 50
    assert all(s["regime"] for s in scored)
    assert not [u for u in unscored if "Error" in u]  # rows are skipped for a stated reason, never a crash
    table = ma.regime_table(scored)
    assert "hf lora, no checkpointing, no autocast" in table and "unsloth lora, checkpointing" in table
