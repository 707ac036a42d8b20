"""compare_runs' pure parts: the table, the best run per metric, the PNG (no jobs needed)."""

from __future__ import annotations

import pytest

from runners.errors import Conflict
from tools.evaluate_compare import RunRow, _best, comparison_png, table_text


def rows() -> list[RunRow]:
    ft = RunRow(job_id="finetune-1", kind="finetune", state="succeeded", final_loss=4.9, eval_loss=4.92,
                tokens_per_s=3000.0, wall_time_s=80.0)  # fmt: skip
    base = RunRow(job_id="evaluate-1", kind="evaluate", state="succeeded", eval_loss=6.05, scores={"t acc": 0.5})
    tuned = RunRow(job_id="evaluate-2", kind="evaluate", state="succeeded", eval_loss=4.92, scores={"t acc": 1.0})
    return [ft, base, tuned]


def test_table_has_a_column_per_task_and_a_dash_where_a_job_has_no_number():
    text = table_text(rows())
    head, _, *lines = text.splitlines()
    assert "| t acc |" in head and len(lines) == 3
    assert lines[0].count("| - |") >= 1 and "| 0.5 |" in lines[1] and "| 1 |" in lines[2]


def test_best_is_the_lowest_loss_and_the_highest_score():
    best = _best(rows())
    assert best["t acc"] == "evaluate-2" and best["eval_loss"] in ("finetune-1", "evaluate-2")


def test_png_is_drawn_and_nothing_to_draw_is_refused():
    png = comparison_png(rows(), {"finetune-1": ([(1, 6.0), (2, 5.0)], [(2, 4.9)])})
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(Conflict):
        comparison_png([RunRow(job_id="evaluate-3", kind="evaluate", state="failed")], {})
