"""The payloads' shared helper (runners/payloads/job_io.py): one exit-code table, the settings
rule, the metrics writer, and that a payload runs from a directory holding only what the
engine ships beside it (runners/payloads/__init__.py shipped_files).

Why a subprocess in a bare directory: that is the host's view, a job directory with the
payload and its siblings and nothing of the repository on sys.path.
"""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from runners.payloads import job_io, shipped_files

PAYLOADS = Path(job_io.__file__).parent
ROOT = PAYLOADS.parents[1]
# Every file in runners/payloads/ that the engine runs as ``python <name>.py job.json``.
RUNNABLE = sorted(p.stem for p in PAYLOADS.glob("*.py") if "def main(" in p.read_text(encoding="utf-8"))


def test_each_exit_code_has_one_name_and_one_meaning() -> None:
    names = {n: getattr(job_io, n) for n in dir(job_io) if n.startswith("EXIT_") and n != "EXIT_CODES"}
    assert len(set(names.values())) == len(names), names  # no code under two names
    assert set(names.values()) == set(job_io.EXIT_CODES)  # every code has its meaning, and nothing else
    assert names["EXIT_BAD_INPUT"] == 2 and names["EXIT_OOM"] == 3 and names["EXIT_UNREACHABLE"] == 5


@pytest.mark.parametrize("name", RUNNABLE)
def test_no_payload_keeps_its_own_exit_codes_or_helpers(name: str) -> None:
    """The table, the failure classes and the metrics writer live in job_io only (one way to do each)."""
    tree = ast.parse((PAYLOADS / f"{name}.py").read_text(encoding="utf-8"))
    own = {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for t in node.targets
           if isinstance(t, ast.Name)}  # fmt: skip
    own |= {t.id for node in ast.walk(tree) if isinstance(node, ast.Assign) for tup in node.targets
            if isinstance(tup, ast.Tuple) for t in tup.elts if isinstance(t, ast.Name)}  # fmt: skip
    assert not {n for n in own if n.startswith("EXIT_")}, f"{name}.py defines exit codes; use job_io's"
    classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    assert not classes & {"Failure", "BadInput", "MissingDependency", "Metrics", "_Metrics"}
    assert "job_io" in shipped_files(name)


def test_job_io_imports_nothing_heavy() -> None:
    code = (
        "import sys; import runners.payloads.job_io; "
        "sys.exit(sorted(m for m in ('torch', 'transformers', 'datasets', 'vllm') if m in sys.modules) != [])"
    )
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_every_shipped_module_exists() -> None:
    for name in RUNNABLE:
        for mod in shipped_files(name):
            assert (PAYLOADS / f"{mod}.py").is_file(), (name, mod)


def test_settings_refuse_unknown_keys_and_keep_defaults_for_none(tmp_path: Path) -> None:
    path = tmp_path / "job.json"
    defaults = {"model": None, "n": 3}
    path.write_text(json.dumps({"job_id": "x", "payload_config": {"model": "m", "n": None, "host": "h"}}))
    assert job_io.load_settings(path, defaults, ignored={"host"}, required=("model",)) == {"model": "m", "n": 3}
    with pytest.raises(job_io.BadInput, match="unknown config keys: host"):
        job_io.load_settings(path, defaults)
    path.write_text(json.dumps({"n": 4}))  # a bare settings object (tests, by hand)
    with pytest.raises(job_io.BadInput, match="settings need 'model'") as err:
        job_io.load_settings(path, defaults, required=("model",))
    assert (err.value.kind, err.value.code) == ("bad_input", job_io.EXIT_BAD_INPUT)
    path.write_text("{not json")
    with pytest.raises(job_io.BadInput, match="cannot read"):
        job_io.load_settings(path, defaults)


def test_metrics_rows_rank_and_clock(tmp_path: Path) -> None:
    main, other = (
        job_io.Metrics(tmp_path / "m.jsonl", rank=0, world_size=2),
        job_io.Metrics(tmp_path / "m.jsonl", rank=1, world_size=2),
    )
    main.write({"event": "log", "step": 1})
    other.write({"event": "log", "step": 1})  # rank 1 writes only its own errors
    other.write(job_io.error_row("exception", "boom"), any_rank=True)
    job_io.Metrics(tmp_path / "m.jsonl", epoch=True).write({"event": "ready"})
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["event"], r.get("rank")) for r in rows] == [("log", 0), ("error", 1), ("ready", None)]
    assert rows[0]["time"] < 60 and rows[2]["time"] > 1.7e9  # seconds since start vs Unix time


def test_report_failure_gives_each_kind_its_code(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    metrics = job_io.Metrics(tmp_path / "m.jsonl")
    assert job_io.report_failure(metrics, job_io.MissingDependency("no llmcompressor"), phase="quantize") == 4
    assert job_io.report_failure(metrics, RuntimeError("CUDA out of memory. Tried")) == job_io.EXIT_OOM
    assert job_io.report_failure(metrics, ValueError("shapes")) == job_io.EXIT_FAILED
    rows = [json.loads(line) for line in (tmp_path / "m.jsonl").read_text().splitlines()]
    assert [(r["kind"], r.get("phase")) for r in rows] == [("missing_dependency", "quantize"), ("oom", None),
                                                           ("failed", None)]  # fmt: skip
    assert "MissingDependency: no llmcompressor" in capsys.readouterr().out


def _bare_job(tmp_path: Path, payload: str, settings: dict) -> Path:
    """A job directory as the engine leaves it on a host: the shipped files and job.json, nothing else."""
    job = tmp_path / payload
    job.mkdir()
    for mod in shipped_files(payload):
        (job / f"{mod}.py").write_bytes((PAYLOADS / f"{mod}.py").read_bytes())
    (job / "job.json").write_text(json.dumps({"job_id": "t", "payload_config": settings}))
    return job


@pytest.mark.parametrize(
    ("payload", "settings"),
    [
        ("download", {"model": "org/m", "lora_rank": 8}),
        ("setup_host", {"env_dir": "/tmp/x", "requirements": ["a==1"], "lora_rank": 8}),
        ("quantize", {"model": "m", "method": "bnb-nf4", "lora_rank": 8}),
        ("finetune", {"model": "m", "dataset": "d.jsonl", "lora_rank": 8}),
    ],
)
def test_a_payload_runs_from_its_shipped_files_alone(tmp_path: Path, payload: str, settings: dict) -> None:
    job = _bare_job(tmp_path, payload, settings)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}  # no PYTHONPATH: the repository is out of reach
    proc = subprocess.run([sys.executable, "-E", "-s", f"{payload}.py", "job.json"], cwd=job, env=env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == job_io.EXIT_BAD_INPUT, proc.stdout + proc.stderr
    last = json.loads((job / "metrics.jsonl").read_text().splitlines()[-1])
    assert (
        last["event"] == "error" and last["kind"] == "bad_input" and "unknown config keys: lora_rank" in last["message"]
    )


def test_the_serve_payload_runs_from_its_shipped_files_alone(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        job = _bare_job(tmp_path, "serve", {"argv": ["vllm", "serve", "m", "--port", "{port}"], "port": port})
        proc = subprocess.run([sys.executable, "-E", "-s", "serve.py", "job.json"], cwd=job, capture_output=True,
                              text=True, timeout=60)  # fmt: skip
    assert proc.returncode == job_io.EXIT_PORT_IN_USE, proc.stdout + proc.stderr
    last = json.loads((job / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["kind"] == "port_in_use" and last["hint"].startswith("Use port='auto'")
