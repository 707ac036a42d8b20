"""SLURM's job states mapped onto ours: a pure function, tested on its own.

Why a separate module: SLURM has some twenty-five job states and dozens of pending
reasons; an agent must read one vocabulary (``runners/states.py``) plus a reason it
can act on ("waiting for GPUs", "time limit reached: ask for more time"). The rules:

* ``PENDING`` (and the requeue/hold states) → ``queued``, with SLURM's reason
  (``Priority``, ``Resources``, ``QOSMaxGRESPerUser``...) and a sentence for it.
* ``RUNNING`` (and ``COMPLETING`` until the exit code is there, ``SUSPENDED``...) →
  ``running``, with the node.
* ``COMPLETED`` → ``succeeded``; ``FAILED`` → ``failed`` with the exit code.
* ``CANCELLED`` → ``cancelled``; ``TIMEOUT`` / ``DEADLINE`` → ``failed``, reason
  ``timeout`` and a hint; ``OUT_OF_MEMORY`` → ``failed``, reason ``oom``.
* ``NODE_FAIL``, ``BOOT_FAIL``, ``PREEMPTED`` → ``lost`` (we submit ``--no-requeue``;
  where a site requeues anyway SLURM shows ``PENDING``/``REQUEUED`` and we say
  ``queued``, reason ``requeued``).

Without accounting (``sacct`` disabled, as on our test cluster) a job that squeue
has forgotten (after ``MinJobAge``) is judged from its directory: the exit-code file
written by run.sh's trap, and slurmstepd's own last words in ``output.log``
(``*** JOB 12 ON n1 CANCELLED AT ... DUE TO TIME LIMIT ***``). No exit code and no
scheduler record is ``lost``, never success.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from runners.states import JobState

__all__ = [
    "PENDING_REASONS",
    "SlurmView",
    "from_log_marker",
    "interpret",
    "pending_text",
]

_QUEUED = {"PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
_RUNNING = {"RUNNING", "SUSPENDED", "STOPPED", "SIGNALING", "STAGE_OUT", "RESIZING", "COMPLETING"}

# SLURM's pending reasons an agent will meet, in words it can act on.
PENDING_REASONS: dict[str, str] = {
    "Priority": "waiting behind higher-priority jobs",
    "Resources": "waiting for free resources (GPUs, CPUs or memory) on the partition",
    "None": "waiting for the scheduler's next pass",
    "BeginTime": "waiting for its start time",
    "Dependency": "waiting for a job it depends on",
    "DependencyNeverSatisfied": "its dependency can never be satisfied; cancel it",
    "JobHeldUser": "held by the user (scontrol release)",
    "JobHeldAdmin": "held by an administrator",
    "ReqNodeNotAvail": "the nodes it needs are down, drained or reserved",
    "PartitionDown": "the partition is down",
    "PartitionInactive": "the partition is inactive",
    "PartitionNodeLimit": "it asks for more nodes than the partition allows; it will never start",
    "PartitionTimeLimit": "its time limit exceeds the partition's maximum; it will never start",
    "QOSMaxGRESPerUser": "your QOS GPU limit is reached; it starts when one of your jobs ends",
    "QOSMaxGRESPerJob": "it asks for more GPUs than the QOS allows per job; it will never start",
    "QOSMaxJobsPerUserLimit": "your QOS job-count limit is reached",
    "QOSMaxCpuPerUserLimit": "your QOS CPU limit is reached",
    "QOSGrpGRES": "the QOS's group GPU limit is reached",
    "AssocGrpGRES": "your account's GPU limit is reached",
    "AssocMaxJobsLimit": "your account's job-count limit is reached",
    "AssocGrpCpuLimit": "your account's CPU limit is reached",
    "AssocGrpBillingMinutes": "your account has used its allocation (billing minutes)",
    "InvalidAccount": "the account is not valid on this cluster; it will never start",
    "InvalidQOS": "the QOS is not valid for this account; it will never start",
    "Reservation": "waiting for its reservation",
    "launch failed requeued held": "the launch failed and SLURM held it; inspect the node",
    "BadConstraints": "no node matches its constraints; it will never start",
    "Licenses": "waiting for licenses",
}

# slurmstepd writes this into the job's output when it ends a job itself.
_MARKER_RE = re.compile(r"\*\*\*\s+JOB\s+\S+\s+ON\s+(\S+)\s+CANCELLED AT\s+\S+(?:\s+DUE TO\s+([A-Z ]+?))?\s+\*\*\*")
_OOM_RE = re.compile(r"oom[-_ ]kill|Exceeded job memory limit|out[- ]of[- ]memory", re.IGNORECASE)


@dataclass(frozen=True)
class SlurmView:
    """Our reading of one SLURM job: state, a short reason code, a sentence and what to do."""

    state: JobState
    reason: str | None = None  # machine-readable: timeout, oom, node_fail, preempted, cancelled, Priority...
    detail: str | None = None  # one sentence for the agent
    hint: str | None = None
    exit_code: int | None = None
    node: str | None = None
    timed_out: bool = False
    cancelled: bool = False


def pending_text(reason: str | None) -> str:
    """``Resources`` → ``queued: waiting for free resources ... (Resources)``."""
    r = (reason or "None").strip()
    words = PENDING_REASONS.get(r)
    if words is None and r.startswith(("QOSMax", "QOSGrp", "AssocGrp", "AssocMax", "MaxGRES")):
        words = "a QOS or account limit is reached"
    return f"queued: {words or 'waiting'} ({r})"


def from_log_marker(log_tail: str | None) -> tuple[str | None, str | None]:
    """(why, node) from slurmstepd's ``*** JOB n ON node CANCELLED AT t [DUE TO X] ***`` line.

    ``why`` is ``timeout``, ``preempted``, ``node_fail``, ``cancelled`` or ``oom`` (from
    the kernel/cgroup's words); None when the log says nothing about it.
    """
    if not log_tail:
        return None, None
    why: str | None = None
    node: str | None = None
    for m in _MARKER_RE.finditer(log_tail):
        node = m.group(1)
        due = (m.group(2) or "").strip()
        why = {"TIME LIMIT": "timeout", "PREEMPTION": "preempted", "NODE FAILURE": "node_fail"}.get(due, "cancelled")
    if why is None and _OOM_RE.search(log_tail):
        why = "oom"
    return why, node


def _timeout(exit_code: int | None, node: str | None, time_limit: str | None) -> SlurmView:
    limit = f" of {time_limit}" if time_limit and time_limit not in ("UNLIMITED", "INVALID") else ""
    return SlurmView(
        JobState.FAILED,
        "timeout",
        f"SLURM stopped the job at its time limit{limit}.",
        "Resubmit with a larger time_limit (within the partition's maximum), or resume from its last checkpoint.",
        exit_code,
        node,
        timed_out=True,
    )


def _oom(exit_code: int | None, node: str | None) -> SlurmView:
    return SlurmView(
        JobState.FAILED,
        "oom",
        "SLURM killed the job for using more host memory than it was given (--mem).",
        "Resubmit with more memory (memory_gib), a smaller batch, or fewer data-loader workers.",
        exit_code,
        node,
    )


def _lost(reason: str, sentence: str, exit_code: int | None, node: str | None) -> SlurmView:
    return SlurmView(
        JobState.LOST,
        reason,
        sentence,
        "Resubmit the job; it resumes from its last checkpoint if it has one.",
        exit_code,
        node,
    )


def _from_exit(
    exit_code: int | None, node: str | None, *, cancel_requested: bool, log_tail: str | None, time_limit: str | None
) -> SlurmView:
    """The job is no longer running: judge it from its exit code and slurmstepd's words."""
    why, mnode = from_log_marker(log_tail)
    node = node or mnode
    if why == "timeout":
        return _timeout(exit_code, node, time_limit)
    if why == "oom":
        return _oom(exit_code, node)
    if why == "node_fail":
        return _lost("node_fail", "The job's node failed.", exit_code, node)
    if why == "preempted":
        return _lost("preempted", "A higher-priority job preempted this one.", exit_code, node)
    if cancel_requested or why == "cancelled":
        return SlurmView(
            JobState.CANCELLED, "cancelled", "The job was cancelled (scancel).", None, exit_code, node, cancelled=True
        )
    if exit_code is None:
        return _lost("vanished", "SLURM no longer knows the job and it left no exit code.", None, node)
    if exit_code == 0:
        return SlurmView(JobState.SUCCEEDED, None, None, None, 0, node)
    return SlurmView(
        JobState.FAILED,
        "exit_code",
        f"The job exited with code {exit_code}.",
        "Read its log (get_job_logs) for the error.",
        exit_code,
        node,
    )


def interpret(
    slurm_state: str | None,
    *,
    reason: str | None = None,
    exit_code: int | None = None,
    node: str | None = None,
    cancel_requested: bool = False,
    log_tail: str | None = None,
    time_limit: str | None = None,
) -> SlurmView:
    """Our state for a SLURM job.

    ``slurm_state`` is what squeue/sacct say (None: SLURM has forgotten the job);
    sacct's ``CANCELLED by 0`` is read as ``CANCELLED``. ``exit_code`` is the job's
    exit-code file (or sacct's ExitCode). ``log_tail`` is the end of output.log.
    """
    node = node or None
    if slurm_state is None:
        return _from_exit(exit_code, node, cancel_requested=cancel_requested, log_tail=log_tail, time_limit=time_limit)
    st = slurm_state.strip().split()[0].upper().rstrip("+") if slurm_state.strip() else ""
    r = (reason or "").strip() or None
    if st in _QUEUED:
        code = "requeued" if st.startswith("REQUEUE") else (r or "None")
        text = (
            pending_text(r)
            if not st.startswith("REQUEUE")
            else "queued: requeued by SLURM (node failure or preemption)"
        )
        return SlurmView(JobState.QUEUED, code, text, None, None, None)
    if st in _RUNNING:
        if st == "COMPLETING" and exit_code is not None:
            return _from_exit(
                exit_code, node, cancel_requested=cancel_requested, log_tail=log_tail, time_limit=time_limit
            )
        return SlurmView(JobState.RUNNING, None, f"running on {node}" if node else "running", None, None, node)
    if st == "COMPLETED":
        # The batch script exits with run.sh's status (exec), so COMPLETED is exit 0 even when a
        # shared filesystem has not shown us the exit-code file yet.
        return SlurmView(JobState.SUCCEEDED, None, None, None, 0 if exit_code is None else exit_code, node)
    if st in ("TIMEOUT", "DEADLINE"):
        return _timeout(exit_code, node, time_limit)
    if st == "OUT_OF_MEMORY":
        return _oom(exit_code, node)
    if st == "CANCELLED":
        # A time limit can show as CANCELLED for a moment on some versions: slurmstepd's words decide.
        why, _ = from_log_marker(log_tail)
        if why == "timeout":
            return _timeout(exit_code, node, time_limit)
        return SlurmView(
            JobState.CANCELLED, "cancelled", "The job was cancelled (scancel).", None, exit_code, node, cancelled=True
        )
    if st == "NODE_FAIL":
        return _lost("node_fail", "The job's node failed (SLURM NODE_FAIL).", exit_code, node)
    if st == "BOOT_FAIL":
        return _lost("boot_fail", "The job's node failed to boot (SLURM BOOT_FAIL).", exit_code, node)
    if st == "PREEMPTED":
        return _lost("preempted", "A higher-priority job preempted this one (SLURM PREEMPTED).", exit_code, node)
    if st == "REVOKED":
        return _lost("revoked", "Another cluster of the federation ran the job (SLURM REVOKED).", exit_code, node)
    if st == "FAILED":
        if exit_code == 0:  # the script ran but SLURM failed around it (prolog, epilog)
            exit_code = None
        why, _ = from_log_marker(log_tail)
        if why == "oom":
            return _oom(exit_code, node)
        sentence = (
            f"The job exited with code {exit_code}."
            if exit_code is not None
            else f"SLURM reports the job FAILED ({r or 'no reason given'})."
        )
        return SlurmView(
            JobState.FAILED,
            "exit_code" if exit_code is not None else (r or "failed"),
            sentence,
            "Read its log (get_job_logs) for the error.",
            exit_code,
            node,
        )
    # An unknown (newer) state: say what SLURM says, and keep the job active rather than guess an end.
    return SlurmView(JobState.RUNNING, st.lower() or None, f"SLURM state {st}", None, exit_code, node)
