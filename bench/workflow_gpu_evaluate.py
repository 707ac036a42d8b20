"""GPU benchmark part: evaluate base and adapter through MCP after bench/workflow_gpu.py's fine-tune (issue 18).

``part_evaluate(ctx)`` takes the fine-tune job that ``finetune-serve`` saved in the bench state,
and through the MCP server only: evaluate_model of the fine-tune's base (``use_adapter=false``)
and of its adapter — the loss on the fine-tune's own rows and a local lm-eval multiple-choice
task over the workflow's colour facts, on lm-eval's ``vllm`` back-end in the job's own process —
then, with a served adapter, the same task through lm-eval's ``local-completions`` back-end
against the server job (``server_job_id``), and compare_runs over them. Each step is a row
with its wall time (OUT/workflow_gpu.jsonl, part ``evaluate``).

The lead hooks it into bench/workflow_gpu.py: ``PARTS["evaluate"] = part_evaluate`` and the
host config's ``kind_env.evaluate`` from :func:`evaluate_env` (lm-eval is not on the GPU
machine: bench/gpu_lmeval_bundle.sh packs it into .gpu/lmeval.tgz, unpacked to /tmp/lmeval).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.workflow_gpu import (
    ADAPTER,
    THINGS,
    Ctx,
    StepFailed,
    call,
    gpu_used_mib,
    save_log,
    session,
    start_ready,
    stop,
    wait_job,
)

__all__ = ["TASK", "evaluate_env", "part_evaluate", "write_task"]

TASK = "workflow_colours"
LMEVAL_SITE = "/tmp/lmeval"


def evaluate_env(args: Any, lmeval_site: str = LMEVAL_SITE) -> dict[str, str]:
    """kind_env for evaluate jobs on the GPU machine: lm-eval's tree, vLLM's (the vllm back-end) and the
    fine-tune tree (TRL + datasets, for the loss); unsloth is never imported by the evaluate payload."""
    if args.standin:
        return {}
    return {"PYTHONPATH": ":".join((lmeval_site, args.vllm_site, args.ft_site)), "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1", "VLLM_USE_FLASHINFER_SAMPLER": "0"}  # fmt: skip


def write_task(out_dir: Path) -> list[str]:
    """A local lm-eval multiple-choice task over the workflow's facts: the right colour against three
    other things of the world (tests/helpers/tiny_eval.py has the same shape for the CPU tests)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    things = sorted(THINGS)
    rows = []
    for i, thing in enumerate(things):
        words = [THINGS[thing], *(things[(i + k) % len(things)] for k in (1, 4, 7))]
        label = i % 4
        words[0], words[label] = words[label], words[0]
        rows.append({"question": f"What colour is the {thing}?", "choices": [f"The {thing} is {w}." for w in words],
                     "label": label})  # fmt: skip
    data = out_dir / f"{TASK}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    yaml = out_dir / f"{TASK}.yaml"
    yaml.write_text(
        f"task: {TASK}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {TASK}.jsonl\n"
        "test_split: test\noutput_type: multiple_choice\ndoc_to_text: question\ndoc_to_choice: choices\n"
        'doc_to_target: label\ntarget_delimiter: ""\nmetric_list:\n  - metric: acc\n    aggregation: mean\n'
        "    higher_is_better: true\nmetadata:\n  version: 1.0\n"
    )
    return [str(yaml), str(data)]


async def _evaluate(ctx: Ctx, c: Any, step: str, args: dict[str, Any]) -> dict[str, Any]:
    """One evaluate_model job to its end; a row with the job's numbers and the call-to-end wall time."""
    t = time.monotonic()
    out = await call(c, "evaluate_model", args)
    view, _ = await wait_job(c, out["job_id"], "finished", max(60.0, min(300.0, ctx.left() - 60)))
    end = view.get("metrics") or {}
    ok = view["state"] == "succeeded"
    ctx.row("evaluate", step, ok, job_id=out["job_id"], state=view["state"], wall_s=round(time.monotonic() - t, 1),
            job_wall_s=end.get("wall_time_s"), eval_loss=end.get("eval_loss"), perplexity=end.get("perplexity"),
            scores=end.get("scores"), summary=end.get("summary") or view.get("summary"),
            error=(view.get("error") or {}).get("line"))  # fmt: skip
    save_log(ctx, view["job_dir"], f"evaluate-{out['job_id']}")
    return {**out, "view": view, "ok": ok}


async def part_evaluate(ctx: Ctx) -> None:
    """Base vs adapter (vllm back-end), adapter through the served API (local-completions), compare_runs."""
    st = ctx.state()
    ft = st.get("finetune_job")
    if not ft:
        raise StepFailed("no fine-tune in the bench state: run --part finetune-serve first")
    files = write_task(ctx.work / "eval-task")
    tasks = {"tasks": [TASK], "task_files": files, "apply_chat_template": True}
    backend = "hf" if ctx.args.standin else "vllm"
    jobs: list[str] = [ft]
    async with session(ctx) as c:
        for name, extra in (("base", {"use_adapter": False}), ("adapter", {})):
            r = await _evaluate(ctx, c, f"evaluate {name} ({backend})", {"finetune_job_id": ft, **tasks,
                                "backend": backend, "max_rows": 256, "output_name": f"eval-{name}", **extra})  # fmt: skip
            jobs.append(r["job_id"])
        if ctx.args.standin:  # the stand-in serves no model: no log-likelihoods to score
            ctx.row("evaluate", "evaluate served adapter (local-completions)", True,
                    skipped="the stand-in vLLM has no model behind it")  # fmt: skip
        elif ctx.left() > 240:  # the served adapter through lm-eval's OpenAI-compatible back-end
            baseline = gpu_used_mib()
            request = {"model": str(ctx.model), "max_num_seqs": ctx.sizes.max_num_seqs,
                       "lora_adapters": [{"name": ADAPTER, "job_id": ft}]}  # fmt: skip
            srv = await start_ready(ctx, c, "evaluate", "serve+adapter ready", request)
            try:
                r = await _evaluate(ctx, c, "evaluate served adapter (local-completions)",
                                    {"server_job_id": srv["job_id"], "served_model": ADAPTER, **tasks,
                                     "output_name": "eval-served"})  # fmt: skip
                jobs.append(r["job_id"])
            finally:
                await stop(ctx, c, "evaluate", "stop (adapter server)", srv["job_id"], srv["job_dir"], baseline)
        else:
            ctx.row("evaluate", "evaluate served adapter (local-completions)", True,
                    skipped=f"{ctx.left():.0f} s left")  # fmt: skip
        t = time.monotonic()
        r = await c.call_tool("compare_runs", {"job_ids": jobs})
        out = r.structured_content or {}
        png = next((x for x in r.content if x.type == "image"), None)
        if png is not None:
            import base64

            (ctx.out / "compare_runs.png").write_bytes(base64.b64decode(png.data))
        rows = {x["job_id"]: x for x in out.get("rows", [])}
        base, adapter = (rows.get(j, {}) for j in jobs[1:3])
        key = f"{TASK} acc"
        better = (adapter.get("scores", {}).get(key, 0) > base.get("scores", {}).get(key, 1)) or ctx.args.standin
        ctx.row("evaluate", "compare_runs", not r.is_error and better, wall_s=round(time.monotonic() - t, 2),
                table=out.get("table"), best=out.get("best"), summary=out.get("summary"))  # fmt: skip
