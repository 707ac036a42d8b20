"""The loss curve of a fine-tune as a PNG, drawn only when asked (get_job_status(plot=true)).

matplotlib is imported inside :func:`loss_curve_png`, never at module import, so the
server's start-up does not pay for it. The metrics are read from the job's
``metrics.jsonl`` through the host's transport; at most the last ``MAX_BYTES`` of
it (the newest points) are used, so a very long run costs a bounded read.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from typing import Any

from runners.errors import Conflict, OpsError
from runners.transports.base import Transport

__all__ = ["MAX_BYTES", "loss_curve_png", "loss_png", "loss_points", "read_metrics_points"]

MAX_BYTES = 8 * 1024 * 1024


def loss_points(lines: list[str]) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    """(step, loss) and (step, eval_loss) pairs from metrics.jsonl lines; other lines are skipped."""
    train: list[tuple[float, float]] = []
    evals: list[tuple[float, float]] = []
    for line in lines:
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line while the job writes
        if not isinstance(row, dict) or not isinstance(row.get("step"), int | float):
            continue
        if isinstance(row.get("loss"), int | float):
            train.append((row["step"], float(row["loss"])))
        if isinstance(row.get("eval_loss"), int | float):
            evals.append((row["step"], float(row["eval_loss"])))
    return train, evals


async def read_metrics_points(
    transport: Transport, path: str
) -> tuple[list[tuple[float, float]], list[tuple[float, float]]]:
    size = await transport.file_size(path) or 0
    start = max(0, size - MAX_BYTES)
    data = await transport.read_range(path, start, MAX_BYTES) if size else b""
    text = data.decode("utf-8", errors="replace")
    lines = text.splitlines()
    if start and lines:
        lines = lines[1:]  # the first line was cut by the window
    return loss_points(lines)


def loss_png(title: str, draw: Callable[[Any], None], legend_size: float | None = None) -> bytes:
    """The loss-against-step figure every plot of ours is (about 800x450 PNG): ``draw(ax)`` adds the lines."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - matplotlib is a dependency
        raise OpsError("matplotlib is not installed on the server.", "pip install matplotlib") from e
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    try:
        draw(ax)
        ax.set_xlabel("step")
        ax.set_ylabel("loss")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=legend_size)
        buf = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buf, format="png")
        return buf.getvalue()
    finally:
        plt.close(fig)


def loss_curve_png(title: str, train: list[tuple[float, float]], evals: list[tuple[float, float]]) -> bytes:
    """A small PNG of one job's training and eval loss against step."""
    if not train and not evals:
        raise Conflict("This job has no loss values yet.", "Plot again once it has logged a training step.")

    def draw(ax: Any) -> None:
        if train:
            ax.plot([p[0] for p in train], [p[1] for p in train], label="train loss", linewidth=1.5)
        if evals:
            ax.plot([p[0] for p in evals], [p[1] for p in evals], "o-", label="eval loss", linewidth=1.5)

    return loss_png(title, draw)
