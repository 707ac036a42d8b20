from __future__ import annotations

import pytest

from runners.errors import Conflict
from tools.plots import loss_curve_png, loss_points


def test_loss_points_skip_torn_and_foreign_lines():
    lines = [
        '{"event": "start"}',
        '{"step": 1, "loss": 2.5}',
        '{"step": 2, "loss": 2.1, "eval_loss": 2.4}',
        '{"step": 3, "lo',
        "not json",
        '{"step": "x", "loss": 1}',
    ]
    train, evals = loss_points(lines)
    assert train == [(1, 2.5), (2, 2.1)] and evals == [(2, 2.4)]


def test_png_is_drawn_and_empty_metrics_are_a_clear_error():
    png = loss_curve_png("t", [(1, 2.0), (2, 1.5)], [])
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    with pytest.raises(Conflict, match="no loss values"):
        loss_curve_png("t", [], [])
