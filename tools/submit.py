"""The options every job-submitting tool takes, and the one path a job takes to the engine.

Every workload tool (submit_command, submit_script, submit_finetune, quantize_model,
download_model, setup_host, start_vllm_server, evaluate_model) does the same four things:
resolve the host its ``host`` argument names, build a :class:`~runners.spec.JobSpec` from its
own arguments, hand it to the engine with the caller's ``idempotency_key`` and ``dry_run``,
and answer with the engine's result plus what to call next. The arguments of that shared
part are declared once here (:class:`SubmitOptions`, :class:`TimedSubmitOptions`) and the
engine is called from one function (:func:`submit`), so a new workload cannot word them
differently or forget one.

The flat tool arguments list a model's own fields before the ones it inherits from these
bases (``server/registry.py add_tool``), so an agent reads ``model`` before ``dry_run``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from pydantic import BaseModel, Field

from runners.config import HostConfig
from runners.engine import SubmitResult
from runners.spec import JobSpec, parse_time_limit

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = ["SubmitOptions", "SubmitOutput", "TimedSubmitOptions", "next_action", "submit"]


class SubmitOptions(BaseModel):
    """Where a job runs, how a retry finds it again, and whether it runs at all."""

    host: str | None = Field(None, description="Host from list_hosts; the default host when omitted.")
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="Same key returns the same job instead of a second one."
    )
    dry_run: bool = Field(
        False, description="Check and plan everything, and show the job (run.sh, job.json) without starting it."
    )


class TimedSubmitOptions(SubmitOptions):
    """:class:`SubmitOptions` for work that may be stopped after a time (SLURM ``--time``; a timer elsewhere)."""

    time_limit: str | None = Field(None, description="Stop the job after this long: HH:MM:SS, D-HH:MM:SS or minutes.")

    @property
    def time_limit_s(self) -> int | None:
        """``time_limit`` in seconds (None: no limit); an unreadable one raises InvalidInput naming the forms."""
        return parse_time_limit(self.time_limit)


class SubmitOutput(SubmitResult):
    """A submit's result as a tool returns it: the engine's answer and what to call next."""

    next_action: str | None = Field(None, description="What to call next (None after a dry run).")


async def submit(
    ctx: ToolContext,
    host: HostConfig,
    spec: JobSpec,
    opts: SubmitOptions,
    *,
    uploads: Mapping[str, bytes] | None = None,
) -> SubmitResult:
    """The one call from a tool to the engine: ``spec`` on ``host`` with the caller's key and dry_run.

    ``host`` is the :class:`HostConfig` the tool resolved from ``opts.host`` (``ctx.host``) and planned
    against; the engine's intent-before-side-effect order and its idempotency check apply unchanged.
    """
    engine = await ctx.engine()
    return await engine.submit(
        spec, host.name, idempotency_key=opts.idempotency_key, dry_run=opts.dry_run, uploads=dict(uploads or {})
    )


def next_action(res: SubmitResult, text: str) -> str | None:
    """``text`` for a job that was submitted; None after a dry run (nothing to follow)."""
    return None if res.dry_run else text
