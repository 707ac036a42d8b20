"""Configuration files: good, missing, and each kind of bad, with the file and key named."""

from __future__ import annotations

from pathlib import Path

import pytest

from runners.config import Config, load_config
from runners.errors import ConfigError, NotFound

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.toml"


def test_example_config_loads_all_four_machines():
    cfg = load_config(EXAMPLE, environ={})
    assert set(cfg.hosts) == {"workstation", "cynthia", "della-h100", "della-b200"}
    assert cfg.default == "workstation"
    h100 = cfg.host("della-h100")
    assert (h100.transport, h100.launcher, h100.accelerator.tier.id, h100.accelerator.count) == (
        "ssh",
        "slurm",
        "H100",
        4,
    )
    assert h100.env["HF_HUB_OFFLINE"] == "1" and h100.slurm.partition == "pli"
    assert cfg.host("della-b200").accelerator.tier.memory_vendor_gb == 192
    assert cfg.host("workstation").accelerator.count == 2


def test_no_file_gives_the_embedded_local_host(tmp_path, monkeypatch):
    monkeypatch.setattr("runners.config.default_config_path", lambda: tmp_path / "absent.toml")
    cfg = load_config(environ={})
    assert cfg == Config.embedded_default()
    assert list(cfg.hosts) == ["local"] and cfg.source is None
    h = cfg.host(None)
    assert (h.transport, h.launcher) == ("local", "direct")


def test_missing_explicit_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml", environ={})


def test_env_var_names_the_file(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[hosts.a]\ntransport = "local"\n')
    assert load_config(environ={"LLM_OPS_MCP_CONFIG": str(p)}).source == str(p)


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        ('[hosts.a]\ntransport = "local"\nwrokdir = "/x"\n', "hosts.a.wrokdir", "unknown key"),
        ('[hosts.a]\ntransport = "carrier-pigeon"\n', "hosts.a.transport", "'local' or 'ssh'"),
        ('[hosts.a]\ntransport = "ssh"\n', "hosts.a", "needs 'address'"),
        ('[hosts.a]\ngpus = "X9000:2"\n', "gpus", "Unknown GPU"),
        ('[hosts.a]\nport = 0\ntransport="ssh"\naddress="h"\n', "hosts.a.port", "greater than or equal"),
        (
            '[hosts.a]\nlauncher = "slurm"\n[hosts.a.slurm]\npartition = "-p evil"\n',
            "hosts.a.slurm.partition",
            "not a valid SLURM value",
        ),
        ('[hosts.a]\n[hosts.a.slurm]\npartition = "p"\n', "hosts.a", 'launcher = "slurm"'),
        ('[hosts.a]\nenv = { "BAD-NAME" = "1" }\n', "hosts.a.env", "not a valid environment variable"),
        ("[hosts]\n", "(top level)", "no hosts"),
        ('default_host = "zz"\n[hosts.a]\n', "(top level)", "default_host"),
        ("[hosts.a\n", None, "not valid TOML"),
    ],
)
def test_bad_files_name_file_and_key(tmp_path, text, key, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_config(p, environ={})
    msg = str(ei.value)
    assert str(p) in msg
    if key:
        assert key in msg, msg
    assert words in msg, msg


def test_unknown_host_lists_the_known_ones():
    cfg = load_config(EXAMPLE, environ={})
    with pytest.raises(NotFound, match="cynthia"):
        cfg.host("nope")


def test_secrets_are_read_by_name_only():
    cfg = load_config(EXAMPLE, environ={})
    assert cfg.host("cynthia").secret_values({"HF_TOKEN": "hf_x", "OTHER": "y"}) == {"HF_TOKEN": "hf_x"}
