"""Small regression tests for what the fuzzer and the injection/path tests found (one per fix)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from runners.errors import CommandFailed, NotFound
from runners.transports.base import CommandResult
from tools.finetune.inputs import FinetuneInput
from tools.models import resolve_model
from tools.serve.schema import StartServerInput


def test_a_model_name_too_long_for_a_path_is_not_found_not_a_crash(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(NotFound):
        resolve_model("x" * 5000)  # os.stat raised ENAMETOOLONG out of Path.is_dir


def test_serve_port_is_a_tcp_port():
    with pytest.raises(ValidationError, match="1-65535"):
        StartServerInput(model="Qwen/Qwen2.5-0.5B", port=1_048_576)
    assert StartServerInput(model="Qwen/Qwen2.5-0.5B", port=65535).port == 65535


@pytest.mark.parametrize("field", ["per_device_batch_size", "gradient_accumulation_steps"])
def test_finetune_batch_numbers_are_positive(field):
    with pytest.raises(ValidationError):  # 0 divided the planner by zero
        FinetuneInput(model="a/b", dataset="c/d", **{field: 0})


def test_host_command_errors_carry_no_python_traceback():
    err = (
        b'Traceback (most recent call last):\n  File "<string>", line 7, in <module>\n    s.bind((h, p))\n'
        b"    ^^^^^^^^^^^^^^\nOverflowError: bind(): port must be 0-65535.\n"
    )
    with pytest.raises(CommandFailed) as e:
        CommandResult(("python3",), 1, b"", err).check("Checking port")
    assert "Traceback" not in str(e.value) and 'File "' not in str(e.value)
    assert "OverflowError: bind(): port must be 0-65535." in str(e.value)


@pytest.mark.anyio
async def test_local_job_logs_redact_secrets_inherited_from_the_server_env(tmp_path):
    """A local job inherits the server's environment: any *_KEY/*TOKEN* value it prints is redacted."""
    from runners.config import Config, HostConfig
    from runners.engine import JobEngine
    from runners.spec import JobSpec

    value = "inherited-secret-value-123456"
    host = HostConfig(name="local", workdir=str(tmp_path / "w"), allow_scripts=True)
    eng = JobEngine(Config(hosts={"local": host}), tmp_path / "s", environ={"SOME_SERVICE_KEY": value})
    try:
        res = await eng.submit(JobSpec(kind="command", argv=["echo", value]))
        await eng.wait(res.job_id, "finished", 30)
        text = (await eng.read_log(res.job_id, offset=0)).text
        assert value not in text and "[REDACTED:SOME_SERVICE_KEY]" in text
    finally:
        await eng.aclose()


def test_memory_error_is_diagnosed_as_host_memory():
    from runners.diagnosis import diagnose

    tail = 'Traceback (most recent call last):\n  File "<string>", line 1, in <module>\nMemoryError\n'
    assert diagnose(tail, 1).kind == "host_oom"


@pytest.mark.anyio
async def test_a_full_job_filesystem_is_named_when_the_log_cannot_say(tmp_path, monkeypatch):
    """A job on a full disk dies without a log line or an exit code: df names the cause."""
    from runners.config import Config, HostConfig
    from runners.engine import JobEngine
    from runners.spec import JobSpec
    from runners.transports.base import CommandResult
    from runners.transports.local import LocalTransport

    host = HostConfig(name="local", workdir=str(tmp_path / "w"), allow_scripts=True)
    eng = JobEngine(Config(hosts={"local": host}), tmp_path / "s")
    try:
        res = await eng.submit(JobSpec(kind="command", argv=["bash", "-c", "exit 1"]))
        await eng.wait(res.job_id, "finished", 30)
        real_run = LocalTransport.run

        async def full_df(self, argv, **kw):
            if argv[0] == "df":
                out = b"Filesystem 1024-blocks Used Available Capacity Mounted on\ntmpfs 1024 1024 0 100% /x\n"
                return CommandResult(tuple(argv), 0, out, b"")
            return await real_run(self, argv, **kw)

        monkeypatch.setattr(LocalTransport, "run", full_df)
        assert (await eng.status(res.job_id)).error.kind == "disk_full"
    finally:
        await eng.aclose()


def test_submit_command_env_values_without_nul_are_checked_at_the_surface():
    from tools.jobs import SubmitCommandInput

    with pytest.raises(ValidationError, match="NUL"):  # was only caught deep in JobSpec (a logged traceback)
        SubmitCommandInput(argv=["true"], env={"A": "x\x00y"})
