"""SLURM states → ours, as a pure function (no cluster needed)."""

from __future__ import annotations

import pytest

from runners.launchers.slurm.states import from_log_marker, interpret, pending_text
from runners.states import JobState


@pytest.mark.parametrize("reason", ["Priority", "Resources", "QOSMaxGRESPerUser", "AssocGrpGRES", "WeirdNew"])
def test_pending_is_queued_with_the_reason(reason):
    v = interpret("PENDING", reason=reason)
    assert v.state is JobState.QUEUED and v.reason == reason
    assert v.detail is not None and reason in v.detail


def test_pending_text_speaks_plainly():
    assert "free resources" in pending_text("Resources")
    assert "QOS" in pending_text("QOSMaxGRESPerUser")
    assert "limit" in pending_text("QOSGrpGRESMinutes")


def test_running_records_the_node():
    v = interpret("RUNNING", node="della-k17g3")
    assert v.state is JobState.RUNNING and v.node == "della-k17g3" and "della-k17g3" in (v.detail or "")


@pytest.mark.parametrize(
    ("slurm", "code", "state", "reason"),
    [
        ("COMPLETED", 0, JobState.SUCCEEDED, None),
        ("COMPLETED", None, JobState.SUCCEEDED, None),
        ("FAILED", 3, JobState.FAILED, "exit_code"),
        ("CANCELLED", 143, JobState.CANCELLED, "cancelled"),
        ("CANCELLED by 1000", None, JobState.CANCELLED, "cancelled"),
        ("TIMEOUT", 143, JobState.FAILED, "timeout"),
        ("DEADLINE", None, JobState.FAILED, "timeout"),
        ("OUT_OF_MEMORY", 137, JobState.FAILED, "oom"),
        ("NODE_FAIL", None, JobState.LOST, "node_fail"),
        ("BOOT_FAIL", None, JobState.LOST, "boot_fail"),
        ("PREEMPTED", None, JobState.LOST, "preempted"),
        ("REQUEUED", None, JobState.QUEUED, "requeued"),
    ],
)
def test_end_states(slurm, code, state, reason):
    v = interpret(slurm, exit_code=code, reason="NonZeroExitCode")
    assert v.state is state and v.reason == reason


def test_timeout_has_a_hint_and_the_limit():
    v = interpret("TIMEOUT", exit_code=143, time_limit="1:00")
    assert v.timed_out and v.hint and "time_limit" in v.hint and "1:00" in (v.detail or "")


def test_oom_has_a_hint():
    assert "memory" in (interpret("OUT_OF_MEMORY").hint or "")


def test_completing_with_an_exit_code_is_final_and_without_one_is_running():
    assert interpret("COMPLETING", exit_code=2).state is JobState.FAILED
    assert interpret("COMPLETING").state is JobState.RUNNING


MARK = "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-01-01T00:00:00 DUE TO TIME LIMIT ***"


def test_without_accounting_the_exit_code_file_and_slurmstepd_decide():
    assert interpret(None, exit_code=0).state is JobState.SUCCEEDED
    assert interpret(None, exit_code=1).state is JobState.FAILED
    v = interpret(None, exit_code=143, log_tail="step 3\n" + MARK + "\n")
    assert v.state is JobState.FAILED and v.reason == "timeout" and v.node == "vm"
    cancelled = "slurmstepd: error: *** JOB 12 ON vm CANCELLED AT 2026-01-01T00:00:00 ***"
    assert interpret(None, exit_code=143, log_tail=cancelled).state is JobState.CANCELLED
    assert interpret(None, exit_code=137, log_tail="Detected 1 oom-kill event(s)").reason == "oom"
    assert interpret(None, exit_code=143, cancel_requested=True).state is JobState.CANCELLED


def test_no_record_and_no_exit_code_is_lost_never_success():
    v = interpret(None)
    assert v.state is JobState.LOST and v.exit_code is None


def test_from_log_marker_reasons():
    assert from_log_marker(MARK) == ("timeout", "vm")
    assert from_log_marker(MARK.replace("TIME LIMIT", "PREEMPTION"))[0] == "preempted"
    assert from_log_marker(MARK.replace("TIME LIMIT", "NODE FAILURE"))[0] == "node_fail"
    assert from_log_marker("all good") == (None, None)


def test_unknown_state_stays_active():
    v = interpret("SOMETHING_NEW")
    assert v.state is JobState.RUNNING and v.reason == "something_new"
