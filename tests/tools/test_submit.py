"""The one submit path and the options every submitting tool shares (tools/submit.py, tools/context.py)."""

from __future__ import annotations

import pytest
from pydantic import Field, ValidationError

from runners.config import Config, HostConfig
from runners.errors import InvalidInput
from runners.spec import JobSpec
from server.registry import own_fields_first
from tools.context import ToolContext
from tools.submit import SubmitOptions, TimedSubmitOptions, next_action, submit

pytestmark = pytest.mark.anyio


class _Input(TimedSubmitOptions):
    model: str = Field(description="A model.")
    count: int = 1


def test_a_models_own_fields_come_before_the_submit_options() -> None:
    assert [n for n, _ in own_fields_first(_Input)] == [
        "model",
        "count",
        "time_limit",
        "host",
        "idempotency_key",
        "dry_run",
    ]


def test_options_are_checked_once_for_every_tool() -> None:
    with pytest.raises(ValidationError, match="idempotency_key"):
        _Input(model="m", idempotency_key="")
    assert _Input(model="m", time_limit="1-00:00:00").time_limit_s == 86400
    assert _Input(model="m").time_limit_s is None
    with pytest.raises(InvalidInput, match="time_limit"):
        _ = _Input(model="m", time_limit="soon").time_limit_s


async def test_submit_passes_key_and_dry_run_to_the_engine(tmp_path) -> None:
    cfg = Config(hosts={"local": HostConfig(name="local", workdir=str(tmp_path / "work"))}, default_host="local")
    ctx = ToolContext(config=cfg, state_dir=tmp_path / "state")
    try:
        host = ctx.host(None)
        spec = JobSpec(kind="command", argv=["true"])
        dry = await submit(ctx, host, spec, SubmitOptions(dry_run=True))
        assert dry.dry_run and dry.run_script and next_action(dry, "wait") is None
        first = await submit(ctx, host, spec, SubmitOptions(idempotency_key="k1"))
        again = await submit(ctx, host, spec, SubmitOptions(idempotency_key="k1"))
        assert first.created and not again.created and again.job_id == first.job_id
        assert next_action(first, "wait") == "wait"
        assert ctx.transport(host) is (await ctx.engine()).transport("local")  # one transport per host
    finally:
        await ctx.aclose()
