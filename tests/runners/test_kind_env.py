"""A host's env per job kind: a serve job and a fine-tune on one machine may need different trees.

Why it exists: the GPU machine keeps vLLM (with its pinned compressed-tensors) and the
fine-tune stack (unsloth, which patches vLLM whenever it can import it) in separate
trees, so the two kinds of job need different PYTHONPATHs on the same host.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.config import load_config
from runners.engine import JobEngine
from runners.errors import ConfigError
from runners.spec import JobSpec
from tools.serve.host import host_command

TOML = """
[hosts.box]
transport = "local"
workdir = "{work}"
[hosts.box.env]
SHARED = "host"
WHICH = "host"
[hosts.box.kind_env.command]
WHICH = "command"
ONLY_COMMAND = "yes"
[hosts.box.kind_env.serve]
WHICH = "serve"
PYTHONPATH = "/opt/vllm-tree"
ONLY_SERVE = "yes"
"""


def _config(tmp_path: Path):
    p = tmp_path / "c.toml"
    p.write_text(TOML.format(work=tmp_path / "work"))
    return load_config(p, environ={})


def test_env_for_lays_the_kind_over_the_host_env(tmp_path):
    host = _config(tmp_path).host("box")
    assert host.env_for("serve") == {
        "SHARED": "host",
        "WHICH": "serve",
        "PYTHONPATH": "/opt/vllm-tree",
        "ONLY_SERVE": "yes",
    }
    assert host.env_for("finetune") == {"SHARED": "host", "WHICH": "host"}
    # the controller's vLLM probe runs with what serve jobs will see
    argv = host_command(host, ["python", "-c", "pass"])
    assert argv[:1] == ["env"] and "PYTHONPATH=/opt/vllm-tree" in argv and "WHICH=serve" in argv


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ('[hosts.a.kind_env.trainn]\nX = "1"\n', "hosts.a.kind_env.trainn"),
        ('[hosts.a.kind_env.serve]\n"BAD-NAME" = "1"\n', "not a valid environment variable"),
    ],
)
def test_bad_kind_env_names_the_key(tmp_path, table, words):
    p = tmp_path / "bad.toml"
    p.write_text('[hosts.a]\ntransport = "local"\n' + table)
    with pytest.raises(ConfigError, match=words):
        load_config(p, environ={})


@pytest.mark.anyio
async def test_a_job_sees_its_kinds_env_and_not_another_kinds(tmp_path):
    engine = JobEngine(_config(tmp_path), tmp_path / "state", environ={})
    try:
        spec = JobSpec(
            kind="command",
            argv=["bash", "-c", 'echo "$SHARED|$WHICH|$ONLY_COMMAND|${ONLY_SERVE-unset}"'],
        )
        res = await engine.submit(spec, "box")
        view, reached = await engine.wait(res.job_id, "finished", 20)
        assert reached and view.exit_code == 0, view
        lines = (Path(res.job_dir) / "output.log").read_text().splitlines()
        assert "host|command|yes|unset" in lines, lines
    finally:
        await engine.aclose()
