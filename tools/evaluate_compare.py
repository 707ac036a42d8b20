"""compare_runs: the metrics of finished fine-tune and evaluation jobs side by side, and their loss curves.

Reads only what the jobs wrote on their hosts (``outputs/manifest.json`` and ``metrics.jsonl``,
through each host's transport), so it works for jobs of any host and after a server restart.
One row per job: final / eval loss, perplexity, each task's headline score, tokens/s, peak
memory, wall time. The PNG (matplotlib, imported only when drawn) puts every fine-tune's
training and eval loss on one chart, and each evaluation's loss as a level line, so a base-vs-
adapter pair reads at a glance.
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field, field_validator

from runners.errors import Conflict, InvalidInput, NotFound
from runners.spec import JOB_ID_RE
from tools.plots import loss_png, read_metrics_points

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = ["CompareInput", "CompareOutput", "RunRow", "compare_runs", "comparison_png", "table_text"]

KINDS = ("finetune", "evaluate")
HEADLINE = ("acc,none", "acc_norm,none", "exact_match,none", "f1,none")


class CompareInput(BaseModel):
    job_ids: list[str] = Field(min_length=1, max_length=20, description="Fine-tune and evaluation job ids.")
    plot: bool = Field(True, description="Also return a PNG of the loss curves.")

    @field_validator("job_ids")
    @classmethod
    def _ids(cls, v: list[str]) -> list[str]:
        for j in v:
            if not JOB_ID_RE.match(j):
                raise ValueError(f"{j!r} is not a job id")
        if len(set(v)) != len(v):
            raise ValueError("a job id is listed twice")
        return v


class RunRow(BaseModel):
    """One job's numbers (None where the job does not have that number)."""

    job_id: str
    kind: str
    name: str | None = None
    state: str
    target: str | None = Field(None, description="Model (+ adapter) the numbers are about.")
    final_loss: float | None = Field(None, description="Fine-tune: the last training loss.")
    eval_loss: float | None = Field(None, description="Fine-tune: its last eval loss; evaluation: its loss.")
    perplexity: float | None = Field(None, description="exp(eval_loss).")
    scores: dict[str, float] = Field(default_factory=dict, description="task: headline lm-eval metric.")
    tokens_per_s: float | None = Field(None, description="Fine-tune: median training tokens/s.")
    peak_memory_gib: float | None = Field(None, description="Peak GPU memory reserved (host RAM on a CPU run).")
    wall_time_s: float | None = None


class CompareOutput(BaseModel):
    rows: list[RunRow]
    table: str = Field(description="The rows as a Markdown table.")
    best: dict[str, str] = Field(default_factory=dict, description="metric: job_id with the best value.")
    summary: str


def _median(xs: list[float]) -> float | None:
    xs = sorted(xs)
    if not xs:
        return None
    mid = len(xs) // 2
    return xs[mid] if len(xs) % 2 else (xs[mid - 1] + xs[mid]) / 2


def _headline(metrics: dict[str, float]) -> tuple[str, float] | None:
    for key in HEADLINE:
        if key in metrics:
            return key.split(",")[0], metrics[key]
    for key, value in metrics.items():
        if "stderr" not in key and key != "sample_len":
            return key.split(",")[0], value
    return None


async def _read_json(ctx: ToolContext, host: str, path: str) -> Any:
    data = await ctx.transport(ctx.host(host)).read_range(path, 0, 4 << 20)
    try:
        return json.loads(data.decode("utf-8")) if data else None
    except ValueError:
        return None


async def _row(ctx: ToolContext, job_id: str) -> tuple[RunRow, list[tuple[float, float]], list[tuple[float, float]]]:
    """A job's row and its (step, loss) / (step, eval_loss) points."""
    engine = await ctx.engine()
    view = await engine.status(job_id)
    if view.kind not in KINDS:
        raise InvalidInput(f"Job {job_id} is a {view.kind} job.", "compare_runs takes fine-tune and evaluation jobs.")
    row = RunRow(job_id=job_id, kind=view.kind, name=view.name, state=view.state.value, wall_time_s=view.duration_s)
    manifest = await _read_json(ctx, view.host, f"{view.job_dir}/outputs/manifest.json") or {}
    t = ctx.transport(ctx.host(view.host))
    train, evals = await read_metrics_points(t, f"{view.job_dir}/metrics.jsonl")
    if view.kind == "finetune":
        row.target = manifest.get("model")
        row.final_loss = manifest.get("final_loss") or (train[-1][1] if train else None)
        row.eval_loss = manifest.get("final_eval_loss") or (evals[-1][1] if evals else None)
        rates = await _rates(t, f"{view.job_dir}/metrics.jsonl")
        row.tokens_per_s = _median(rates)
    else:
        row.target = manifest.get("target")
        loss = manifest.get("loss") or {}
        row.eval_loss = loss.get("eval_loss")
        for task, metrics in ((manifest.get("tasks") or {}).get("scores") or {}).items():
            head = _headline(metrics)
            if head is not None:
                row.scores[f"{task} {head[0]}"] = round(float(head[1]), 4)
    if row.eval_loss is not None:
        row.perplexity = math.exp(row.eval_loss) if row.eval_loss < 700 else math.inf
    peak = manifest.get("gpu_mem_peak_reserved_gib") or manifest.get("gpu_mem_peak_allocated_gib")
    if peak is None and manifest.get("host_ram_peak_gib"):
        ram = manifest["host_ram_peak_gib"]
        peak = max(ram) if isinstance(ram, list) else ram
    row.peak_memory_gib = peak
    row.wall_time_s = manifest.get("wall_time_s") or view.duration_s
    return row, train, evals


async def _rates(t: Any, path: str) -> list[float]:
    size = await t.file_size(path) or 0
    data = await t.read_range(path, max(0, size - (4 << 20)), 4 << 20) if size else b""
    out = []
    for line in data.decode("utf-8", errors="replace").splitlines():
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if isinstance(r, dict) and isinstance(r.get("tokens_per_s"), int | float):
            out.append(float(r["tokens_per_s"]))
    return out


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def table_text(rows: list[RunRow]) -> str:
    """The rows as a Markdown table; task scores get one column each."""
    tasks = sorted({k for r in rows for k in r.scores})
    head = ["job", "kind", "target", "final loss", "eval loss", "perplexity", *tasks, "tok/s", "peak GiB", "wall s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r.job_id, r.kind, (r.target or "-").rsplit("/", 2)[-1] if r.target else "-"]
        cells += [_fmt(r.final_loss), _fmt(r.eval_loss), _fmt(r.perplexity)]
        cells += [_fmt(r.scores.get(t)) for t in tasks]
        cells += [_fmt(r.tokens_per_s), _fmt(r.peak_memory_gib), _fmt(r.wall_time_s)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_png(
    rows: list[RunRow], curves: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]]
) -> bytes:
    """Every fine-tune's loss and eval loss against step, and each evaluation's loss as a level line."""
    if not any(tr or ev for tr, ev in curves.values()) and not any(r.eval_loss is not None for r in rows):
        raise Conflict("None of these jobs has a loss to draw.", "Call compare_runs with plot=false for the table.")

    def draw(ax: Any) -> None:
        for r in rows:
            train, evals = curves.get(r.job_id, ([], []))
            label = r.name or r.job_id
            if r.kind == "finetune":
                if train:
                    (line,) = ax.plot([s for s, _ in train], [v for _, v in train], label=f"{label} train")
                    color = line.get_color()
                else:
                    color = None
                if evals:
                    ax.plot([s for s, _ in evals], [v for _, v in evals], "o--", color=color, label=f"{label} eval")
            elif r.eval_loss is not None:
                ax.axhline(r.eval_loss, linestyle=":", linewidth=1.5, label=f"{label} eval_loss {r.eval_loss:.3g}")

    return loss_png("compare_runs: loss", draw, legend_size=7)


def _best(rows: list[RunRow]) -> dict[str, str]:
    best: dict[str, str] = {}
    with_loss = [r for r in rows if r.eval_loss is not None]
    if with_loss:
        best["eval_loss"] = min(with_loss, key=lambda r: r.eval_loss or 0.0).job_id
    for task in sorted({k for r in rows for k in r.scores}):
        scored = [r for r in rows if task in r.scores]
        best[task] = max(scored, key=lambda r: r.scores[task]).job_id
    return best


async def compare_runs(ctx: ToolContext, p: CompareInput) -> tuple[CompareOutput, bytes | None]:
    """The table (and the PNG when asked) of the jobs, in the order given."""
    rows: list[RunRow] = []
    curves: dict[str, tuple[list[tuple[float, float]], list[tuple[float, float]]]] = {}
    for job_id in p.job_ids:
        try:
            row, train, evals = await _row(ctx, job_id)
        except NotFound as e:
            raise NotFound(f"compare_runs: {e.message}", "list_jobs shows the known jobs.") from e
        rows.append(row)
        curves[job_id] = (train, evals)
    best = _best(rows)
    parts = [f"{k}: {v}" for k, v in best.items()]
    summary = f"{len(rows)} runs compared" + (f"; best {', '.join(parts)}" if parts else "") + "."
    png = comparison_png(rows, curves) if p.plot else None
    return CompareOutput(rows=rows, table=table_text(rows), best=best, summary=summary), png
