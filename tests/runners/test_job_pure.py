"""The pure parts of the job engine: states, reconcile, parsers, renderers, diagnosis."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from pydantic import ValidationError

from runners.diagnosis import diagnose
from runners.errors import Conflict, InvalidInput
from runners.jobdir import render_env
from runners.launchers.base import Observation
from runners.launchers.direct import parse_status_output
from runners.logs import progress_from
from runners.reconcile import reconcile
from runners.redaction import make_redactor
from runners.spec import JobSpec, format_slurm_time, parse_time_limit
from runners.states import TERMINAL, JobState, can_transition, transition
from runners.store import JobRecord

NOW = 1_000_000.0


def rec(state: JobState = JobState.RUNNING, **kw) -> JobRecord:
    base = dict(
        job_id="command-x-1",
        token="t" * 32,
        host="local",
        kind="command",
        state=state,
        job_dir="/w/jobs/command-x-1",
        spec_json="{}",
        spec_hash="h",
        created_at=NOW - 10,
        updated_at=NOW - 10,
        phase="launched",
        native_id="123",
    )
    base.update(kw)
    return JobRecord(**base)


def test_terminal_states_are_final_except_lost():
    for s in TERMINAL - {JobState.LOST}:
        for t in JobState:
            assert can_transition(s, t) == (s == t)
    assert can_transition(JobState.LOST, JobState.SUCCEEDED)
    assert not can_transition(JobState.LOST, JobState.RUNNING)
    with pytest.raises(Conflict):
        transition(JobState.SUCCEEDED, JobState.RUNNING)
    assert transition(JobState.QUEUED, JobState.RUNNING) is JobState.RUNNING


@pytest.mark.parametrize(
    ("obs", "state", "code"),
    [
        (Observation(exists=True, alive=True, native_id="123"), JobState.RUNNING, None),
        (Observation(exists=True, alive=False, exit_code=0, native_id="123"), JobState.SUCCEEDED, 0),
        (Observation(exists=True, alive=False, exit_code=2, native_id="123"), JobState.FAILED, 2),
        # The process vanished without an exit code: lost, never success.
        (Observation(exists=True, alive=False, native_id="123"), JobState.LOST, None),
        (Observation(exists=True, alive=False, native_id="123", cancel_requested=True), JobState.CANCELLED, None),
        (Observation(exists=True, alive=False, exit_code=143, cancel_requested=True), JobState.CANCELLED, 143),
        (Observation(exists=True, alive=False, exit_code=143, timed_out=True), JobState.FAILED, 143),
        (Observation(exists=False), JobState.LOST, None),
        (Observation(exists=True, alive=True, pending=True), JobState.QUEUED, None),
    ],
)
def test_reconcile(obs, state, code):
    out = reconcile(rec(), obs, NOW)
    assert (out.state, out.exit_code) == (state, code)


def test_reconcile_is_patient_with_young_jobs_and_keeps_terminal_ones():
    young = rec(JobState.QUEUED, phase="intent", native_id=None, created_at=NOW - 1)
    assert reconcile(young, Observation(exists=False), NOW).state is JobState.QUEUED
    assert reconcile(young, Observation(exists=False), NOW + 1000).state is JobState.LOST
    starting = rec(JobState.QUEUED, native_id=None, created_at=NOW - 1)
    assert reconcile(starting, Observation(exists=True, alive=False), NOW).state is JobState.QUEUED
    done = rec(JobState.SUCCEEDED, exit_code=0)
    assert not reconcile(done, Observation(exists=False), NOW).changed
    assert not reconcile(rec(), None, NOW).changed  # host did not answer: keep the last known state
    lost = rec(JobState.LOST)
    assert reconcile(lost, Observation(exists=True, alive=False, exit_code=0), NOW).state is JobState.SUCCEEDED
    serve = rec(kind="serve")
    assert reconcile(serve, Observation(exists=True, alive=True, ready=True), NOW).state is JobState.READY
    assert reconcile(rec(), Observation(exists=True, alive=True, ready=True), NOW).state is JobState.RUNNING


def test_parse_status_output():
    text = "a\x1f0\nb\x1f1\x1f42\x1f1\x1f\x1f0\x1f0\x1f0\nc\x1f1\x1f43\x1f0\x1f3\x1f1\x1f0\x1f1\ngarbage\n"
    obs = parse_status_output(text)
    assert obs["a"] == Observation(exists=False)
    assert obs["b"].alive and obs["b"].exit_code is None and obs["b"].native_id == "42"
    assert obs["c"].exit_code == 3 and obs["c"].cancel_requested and obs["c"].ready


@pytest.mark.parametrize(
    ("value", "secs"), [(90, 90), ("10", 600), ("01:30", 90), ("02:00:00", 7200), ("1-00:00:00", 86400), ("1-2", 93600)]
)
def test_parse_time_limit(value, secs):
    assert parse_time_limit(value) == secs
    assert parse_time_limit(format_slurm_time(secs)) == secs


@pytest.mark.parametrize("bad", ["", "abc", "-5", "1:2:3:4", 0])
def test_parse_time_limit_rejects(bad):
    with pytest.raises(InvalidInput):
        parse_time_limit(bad)


def test_job_spec_validation():
    JobSpec(kind="command", argv=["echo", "hi"])
    JobSpec(kind="finetune", payload="finetune", payload_config={"model": "x"})
    for bad in [
        dict(kind="command"),  # neither argv nor payload
        dict(kind="command", argv=["echo"], payload="x"),
        dict(kind="command", argv=[]),
        dict(kind="command", argv=["-rf"]),
        dict(kind="command", argv=["a\x00b"]),
        dict(kind="command", argv=["x"], env={"BAD-NAME": "1"}),
        dict(kind="command", argv=["x"], env={"LLM_OPS_JOB_ID": "1"}),
        dict(kind="command", argv=["x"], payload=None, secrets=["A B"]),
        dict(kind="command", payload="../evil"),
        dict(kind="nope", argv=["x"]),
    ]:
        with pytest.raises(ValidationError):
            JobSpec(**bad)


def test_env_file_quotes_every_value():
    nasty = {"A": 'it\'s $(rm -rf /) `x` "q" \n newline', "B": ""}
    script = render_env(nasty) + 'printf "%s|%s" "$A" "$B"'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True).stdout
    assert out == nasty["A"] + "|"
    assert shlex.quote(nasty["A"]) in render_env(nasty)


def test_redaction():
    r = make_redactor({"HF_TOKEN": "abcd1234efgh", "SHORT": "ab"})
    text = r("token=abcd1234efgh other=hf_" + "A" * 30 + " ab stays")
    assert "abcd1234efgh" not in text and "[REDACTED:HF_TOKEN]" in text
    assert "hf_AAAA" not in text and "ab stays" in text


@pytest.mark.parametrize(
    ("log", "code", "kind"),
    [
        ("x\ntorch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB\n", 1, "cuda_oom"),
        ("run.sh: line 9: 4242 Killed                  python train.py\n", 137, "host_oom"),
        ("", 137, "host_oom"),
        (
            "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970, unhandled system error\n",
            1,
            "nccl",
        ),
        ("Traceback (most recent call last):\nModuleNotFoundError: No module named 'unsloth'\n", 1, "missing_module"),
        ("OSError: [Errno 28] No space left on device: '/scratch/x'\n", 1, "disk_full"),
        (
            'Traceback (most recent call last):\n  File "a.py", line 1\nValueError: bad learning rate\n',
            1,
            "python_exception",
        ),
        ("just ended\n", 3, "exit_code"),
    ],
)
def test_diagnose(log, code, kind):
    e = diagnose(log, code)
    assert e.kind == kind and e.hint
    if kind == "missing_module":
        assert "unsloth" in e.hint
    if kind == "python_exception":
        assert e.line == "ValueError: bad learning rate"


def test_progress_from_metrics():
    assert progress_from({"step": 25, "total_steps": 100}, 50.0) == (25.0, 150.0)
    assert progress_from({"loss": 1.0}, 10.0) == (None, None)
    assert progress_from(None, None) == (None, None)
