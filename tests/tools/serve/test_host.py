"""What start_vllm_server learns from the host, and how fast (tools/serve/host.py).

The host's vLLM is the STAND-IN of tests/standin_vllm_server.py (a `vllm` program and a
`vllm` distribution of version 0.26.0, named as such), run by the real job engine and serve
payload. Its `vllm serve --help=all` is slowed down here to 8 s, as a GPU host takes 23-33 s:
the first start on a host must still return at once, its job must check the flags on the
host, and the next start must know them without asking the host again.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runners.config import Config, HostConfig
from runners.errors import DoesNotFit
from tests.standin_vllm_server import install_standin
from tools.context import ToolContext
from tools.serve.flags import FlagCache
from tools.serve.host import HELP_FILE, detect_vllm
from tools.serve.schema import StartServerInput
from tools.serve.start import start_vllm_server

pytestmark = pytest.mark.anyio
MODEL = "Qwen/Qwen2.5-0.5B"
SLOW_HELP_S = 8


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def _context(tmp_path: Path, host: HostConfig) -> ToolContext:
    return ToolContext(config=Config(hosts={host.name: host}, default_host=host.name), state_dir=tmp_path / "state")


async def test_first_start_returns_at_once_and_its_job_checks_the_flags(tmp_path: Path) -> None:
    env = install_standin(tmp_path / "vllm")
    prog = tmp_path / "vllm" / "bin" / "vllm"
    prog.write_text(
        prog.read_text().replace("exec ", f'case " $* " in *" --help=all "*) sleep {SLOW_HELP_S};; esac\nexec ', 1)
    )
    host = HostConfig(name="gpubox", workdir=str(tmp_path / "work"), gpus="H100:1", env=env)
    ctx = _context(tmp_path, host)
    engine, cache = await ctx.engine(), FlagCache(tmp_path / "state")
    try:
        t0 = time.monotonic()
        first = await start_vllm_server(ctx, StartServerInput(model=MODEL, extra_args={"enforce_eager": True}))
        took = time.monotonic() - t0
        assert took < SLOW_HELP_S / 2, f"the first start waited {took:.1f} s"
        assert "checks them with `vllm serve --help=all` on the host" in " ".join(first.plan.reasons)
        assert first.command[-1] == "--enforce-eager"
        spec = json.loads(engine.catalog.get(first.job_id).spec_json)  # type: ignore[union-attr]
        assert spec["payload_config"]["check_flags"] is True
        view, reached = await engine.wait(first.job_id, until="ready", timeout_s=90)
        assert reached, view.summary
        log = (await engine.read_log(first.job_id, offset=0, max_bytes=1 << 20)).text
        assert "checking the command's flags" in log
        assert (Path(first.job_dir) / HELP_FILE).exists()
        # the next start knows the flags (read from the first job's help, then cached): no check in the job
        t0 = time.monotonic()
        second = await start_vllm_server(ctx, StartServerInput(model=MODEL, max_num_seqs=8))
        assert time.monotonic() - t0 < SLOW_HELP_S / 2
        spec = json.loads(engine.catalog.get(second.job_id).spec_json)  # type: ignore[union-attr]
        assert spec["payload_config"]["check_flags"] is False
        assert not any("checks them" in r for r in second.plan.reasons)
        assert cache.get("gpubox", "0.26.0") is not None
        assert (await detect_vllm(engine, host, cache)).flags_cached
    finally:
        for v in await engine.list_jobs():
            if not v.terminal:
                await engine.cancel(v.job_id, grace_s=2)
        await ctx.aclose()


def _bare_venv(path: Path) -> str:
    """An interpreter with nothing installed (no bitsandbytes): a venv of the running Python's base."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], check=True, timeout=120)
    return str(path / "bin" / "python")


async def test_bitsandbytes_is_probed_and_a_plan_never_names_what_the_host_lacks(tmp_path: Path) -> None:
    env = install_standin(tmp_path / "vllm")
    with_bnb = HostConfig(name="a100", workdir=str(tmp_path / "w1"), gpus="A100-80GB:1", env=env)
    bare = HostConfig(
        name="a100bare", workdir=str(tmp_path / "w2"), gpus="A100-80GB:1", env=env, python=_bare_venv(tmp_path / "v")
    )
    for host in (with_bnb, bare):
        ctx = _context(tmp_path / host.name, host)
        engine, cache = await ctx.engine(), FlagCache(tmp_path / host.name / "state")
        try:
            install = await detect_vllm(engine, host, cache)
            assert install.version == "0.26.0" and not install.flags_cached and install.flags is None
            # a 70B is 131 GiB in bf16: one A100 (no fp8) serves it only as 4-bit bitsandbytes
            p = StartServerInput(model="meta-llama/Llama-3.1-70B", dry_run=True)
            if host is bare:
                assert install.bitsandbytes is None and install.quantization_methods() == {"fp8"}
                with pytest.raises(DoesNotFit, match="does not fit 1x A100-80GB"):
                    await start_vllm_server(ctx, p)
            else:
                assert install.bitsandbytes and "bitsandbytes" in install.quantization_methods()
                out = await start_vllm_server(ctx, p)
                assert out.plan.quantization == "bitsandbytes" and "--quantization" in out.command
                assert "bitsandbytes runs on this host" in " ".join(out.plan.reasons)
        finally:
            await ctx.aclose()
