"""The serve payload's own flag check (runners/payloads/serve.py check_flags), against vLLM 0.26.0's recorded help.

It runs on the host, before vLLM starts, when the controller has not seen the host's vLLM
version yet: the ~30 s `vllm serve --help=all` is the job's wait, not a tool call's.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runners.payloads import serve as payload
from tools.serve.flags import parse_help

ROOT = Path(__file__).resolve().parents[2]
HELP = ROOT / "tests" / "data" / "vllm" / "serve-help-all-0.26.0.txt"


@pytest.fixture
def vllm(tmp_path: Path) -> Path:
    """A program that prints the recorded help of vLLM 0.26.0 (as `vllm serve --help=all` does)."""
    prog = tmp_path / "vllm"
    prog.write_text(f"#!/bin/sh\ncat {HELP}\n")
    prog.chmod(0o755)
    return prog


def test_help_flags_agree_with_the_controllers_parser():
    text = HELP.read_text()
    mine, theirs = payload.help_flags(text), parse_help(text, "0.26.0", "recorded").flags
    assert set(theirs) <= set(mine)  # the payload also lists the --no-x forms by name
    assert mine["dtype"] == theirs["dtype"].choices and mine["max-model-len"] is None
    assert "no-enable-prefix-caching" in mine


def test_a_good_command_passes_and_leaves_the_help_for_the_controller(vllm: Path, tmp_path: Path):
    cmd = [str(vllm), "serve", "Qwen/Qwen2.5-0.5B", "--dtype", "bfloat16", "--no-enable-prefix-caching",
           "--max-num-seqs", "32", "--enable-lora", "--lora-modules", "a=/x", "--port", "8000",
           "--compilation-config.mode", "3", "--max-model-len=4096"]  # fmt: skip
    assert payload.check_flags(cmd, tmp_path, "0.26.0") is None
    doc = json.loads((tmp_path / payload.HELP_FILE).read_text())
    assert doc["version"] == "0.26.0" and doc["rc"] == 0 and doc["command"][-2:] == ["serve", "--help=all"]
    assert parse_help(doc["text"], "0.26.0", "job").flags  # what tools/serve/host.py reads back


def test_an_unknown_flag_or_value_is_named_with_the_closest_real_ones(vllm: Path, tmp_path: Path):
    bad = payload.check_flags([str(vllm), "serve", "m", "--max-num-batch-tokens", "4096"], tmp_path, "0.26.0")
    assert bad is not None
    assert bad[0] == "vLLM 0.26.0 on this host has no flag --max-num-batch-tokens"
    assert "--max-num-batched-tokens" in bad[1]
    choice = payload.check_flags([str(vllm), "serve", "m", "--dtype", "bf16"], tmp_path, "0.26.0")
    assert choice is not None and "'bf16' is not accepted" in choice[0] and "bfloat16" in choice[1]


def test_a_help_that_fails_is_a_clear_error(tmp_path: Path):
    prog = tmp_path / "vllm"
    prog.write_text("#!/bin/sh\necho 'ImportError: libcudart.so.13: cannot open shared object file' >&2\nexit 1\n")
    prog.chmod(0o755)
    bad = payload.check_flags([str(prog), "serve", "m"], tmp_path, "0.26.0")
    assert bad is not None and "failed (exit 1)" in bad[0] and "libcudart" in bad[0]
    assert json.loads((tmp_path / payload.HELP_FILE).read_text())["rc"] == 1
