"""The SLURM launcher: ``sbatch`` to start, one ``squeue`` to watch, ``scancel`` to stop.

It works through any :class:`~runners.transports.base.Transport`: a local SLURM, or SSH to
a login node. Every command is built by :mod:`runners.launchers.slurm.commands` (argv, values
validated) and every state is read by :mod:`runners.launchers.slurm.states` (pure).

* **Script.** run.sh *is* the batch script: the host's header lines (``module load``),
  a line that records the SLURM job id and node in the job directory, then the
  common body (sources ``env`` — the host's env such as ``HF_HOME``,
  ``HF_HUB_OFFLINE=1``, ``WANDB_MODE=offline``, the job's env, its secrets — sets the
  exit-code trap and runs the command). ``dry_run`` returns it as is.
* **Start, never twice.** A constant bash script on the host runs sbatch and writes
  ``slurm_id`` itself, so a reply lost on the way back (SSH dropped) still leaves the
  id on the host. Before sbatch it leaves a ``submitting`` marker; a start that finds
  the marker but no id is *ambiguous* and is resolved by looking the job's token up
  (``--comment``, under its ``--job-name``) in squeue — sbatch runs again only when
  SLURM positively does not know the job.
* **Observe.** One round trip and one ``squeue`` call for all of a host's jobs
  (``--jobs=ids``; ``--me`` when some job has no id yet, matched by token). Jobs
  squeue has forgotten are looked up with one ``sacct`` call when the cluster has
  accounting, else judged from their exit-code file and slurmstepd's last words.
* **Cancel.** A ``cancel_requested`` marker, then ``scancel`` (SLURM sends TERM, waits
  its ``KillWait``, then KILL; a pending job simply leaves the queue).
* **Rejections.** sbatch's refusal becomes a :class:`SchedulerError`; for a bad
  partition it lists the partitions that exist.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence
from dataclasses import dataclass

from runners.config import HostConfig
from runners.errors import CommandFailed, HostError, SchedulerError
from runners.jobdir import CANCEL_MARK, EXIT_CODE, LOG, READY_MARK, PreparedJob, render_body
from runners.launchers.base import JobRef, Observation
from runners.launchers.slurm.commands import (
    SACCT_FIELDS,
    SEP,
    SQUEUE_FIELDS,
    SacctRow,
    SbatchOptions,
    SqueueRow,
    parse_sacct,
    parse_squeue,
    resolve_options,
    sacct_disabled,
    sbatch_argv,
    scancel_argv,
    sinfo_partitions_argv,
    squeue_by_name_argv,
)
from runners.launchers.slurm.states import SlurmView, interpret
from runners.reconcile import describe_exit
from runners.states import JobState
from runners.transports.base import Transport

__all__ = [
    "CANCEL_SCRIPT",
    "NODE_FILE",
    "OBSERVE_SCRIPT",
    "SLURM_ID",
    "START_SCRIPT",
    "SUBMITTING",
    "SlurmLauncher",
    "job_name_for",
    "parse_observe_output",
    "to_observation",
]

SLURM_ID = "slurm_id"
NODE_FILE = "node"
SUBMITTING = "submitting"
BATCH = 400  # jobs per round trip: keeps the argv well below ARG_MAX
_AMBIGUOUS = "AMBIGUOUS"

# $1 job dir, $2 force (1: sbatch even if an earlier attempt left its marker), then sbatch's argv.
START_SCRIPT = rf"""
cd -- "$1" || {{ echo "job directory $1 is missing" >&2; exit 97; }}
force=$2; shift 2
if [ -s {SLURM_ID} ]; then read -r id < {SLURM_ID}; echo "$id"; exit 0; fi
if [ -e {SUBMITTING} ] && [ "$force" != 1 ]; then echo {_AMBIGUOUS}; exit 0; fi
: > {SUBMITTING}
out=$("$@" 2> sbatch.err); rc=$?
if [ $rc -ne 0 ]; then cat sbatch.err >&2; exit $rc; fi
id=${{out%%;*}}; id=${{id//[[:space:]]/}}
case $id in ''|*[!0-9_]*) echo "sbatch printed no job id: $out" >&2; exit 96 ;; esac
printf '%s\n' "$id" > {SLURM_ID}.tmp && mv -f {SLURM_ID}.tmp {SLURM_ID}
rm -f {SUBMITTING}
echo "$id"
"""

# $1 squeue format, $2 try sacct (0/1), $3 sacct format, then quads: job id, dir, token, native id.
# Output lines (fields split by \x1f):
#   Q rc           squeue's exit status, then S <row> per job (or E <text> when it failed)
#   A rc           sacct's exit status (only when asked and needed), then C <row> (or F <text>)
#   J id 0         job directory missing
#   J id 1 native exit_code cancel node submitting marker
OBSERVE_SCRIPT = rf"""
fmt=$1; use_sacct=$2; afmt=$3; shift 3
n=0; ids=; need_me=0
while [ $# -ge 4 ]; do
  J[n]=$1; D[n]=$2; nid=$4; shift 4
  if [ -z "$nid" ] && [ -s "${{D[n]}}/{SLURM_ID}" ]; then {{ read -r nid < "${{D[n]}}/{SLURM_ID}"; }} 2>/dev/null; fi
  case $nid in ''|*[!0-9_]*) nid= ;; esac
  N[n]=$nid
  if [ -n "$nid" ]; then ids="$ids${{ids:+,}}$nid"; else need_me=1; fi
  n=$((n+1))
done
emit() {{ local tag=$1 l; while IFS= read -r l; do [ -n "$l" ] && printf '%s\037%s\n' "$tag" "$l"; done <<< "$2"; }}
rc=0; sq=
if [ $need_me = 1 ]; then sq=$(squeue --noheader --states=all --me --format="$fmt" 2>&1); rc=$?
elif [ -n "$ids" ]; then sq=$(squeue --noheader --states=all --format="$fmt" --jobs="$ids" 2>&1); rc=$?
fi
printf 'Q\037%s\n' "$rc"
if [ $rc = 0 ]; then emit S "$sq"; else emit E "$sq"; fi
if [ "$use_sacct" = 1 ]; then
  miss=
  for ((i=0; i<n; i++)); do
    nid=${{N[i]}}; [ -z "$nid" ] && continue
    case $'\n'"$sq" in *$'\n'"$nid"$'\037'*) ;; *) miss="$miss${{miss:+,}}$nid" ;; esac
  done
  if [ -n "$miss" ] && command -v sacct >/dev/null 2>&1; then
    sa=$(sacct --noheader --allocations --parsable2 --delimiter=$'\037' --format="$afmt" --jobs="$miss" 2>&1); arc=$?
    printf 'A\037%s\n' "$arc"
    if [ $arc = 0 ]; then emit C "$sa"; else emit F "$sa"; fi
  fi
fi
for ((i=0; i<n; i++)); do
  d=${{D[i]}}
  if [ ! -d "$d" ]; then printf 'J\037%s\0370\n' "${{J[i]}}"; continue; fi
  ec=; [ -s "$d/{EXIT_CODE}" ] && {{ read -r ec < "$d/{EXIT_CODE}"; }} 2>/dev/null
  c=0; [ -e "$d/{CANCEL_MARK}" ] && c=1
  node=; [ -s "$d/{NODE_FILE}" ] && {{ read -r node < "$d/{NODE_FILE}"; }} 2>/dev/null
  sub=0; [ -e "$d/{SUBMITTING}" ] && sub=1
  mark=
  if [ -n "$ec" ] && [ -f "$d/{LOG}" ]; then
    mark=$(tail -c 16384 "$d/{LOG}" | grep -a -E '\*\*\* JOB .* CANCELLED AT|oom[-_ ]kill|Exceeded job memory limit' \
           | tail -n 2 | tr '\n\037' '  ')
  fi
  r=0; [ -e "$d/{READY_MARK}" ] && r=1
  printf 'J\037%s\0371\037%s\037%s\037%s\037%s\037%s\037%s\037%s\n' "${{J[i]}}" "${{N[i]}}" "$ec" "$c" "$node" "$sub" "$mark" "$r"
done
"""

# $1 job dir, $2 native id (may be empty). Prints what it did.
CANCEL_SCRIPT = rf"""
cd -- "$1" 2>/dev/null || {{ echo missing; exit 0; }}
: > {CANCEL_MARK}
id=$2
if [ -z "$id" ] && [ -s {SLURM_ID} ]; then read -r id < {SLURM_ID}; fi
case $id in ''|*[!0-9_]*) echo no-id; exit 0 ;; esac
if out=$(scancel -- "$id" 2>&1); then echo scancelled; exit 0; fi
case $out in *"already completing or completed"*|*"Invalid job id"*) echo finished; exit 0 ;; esac
echo "$out" >&2; exit 1
"""


def job_name_for(job_id: str) -> str:
    """``--job-name``: recognisable in ``squeue`` output, and how an ambiguous submit is found."""
    return f"llmops-{job_id}"


@dataclass(frozen=True)
class _JobLine:
    exists: bool
    native_id: str | None = None
    exit_code: int | None = None
    cancel: bool = False
    node: str | None = None
    submitting: bool = False
    marker: str | None = None
    ready: bool = False  # a serve job's payload wrote the ready marker (its endpoint answers)


@dataclass(frozen=True)
class ObserveResult:
    """Everything one observe round trip showed (parsed, before interpretation)."""

    squeue_ok: bool
    squeue_error: str | None
    rows: list[SqueueRow]
    sacct_rows: list[SacctRow]
    sacct_disabled: bool
    jobs: dict[str, _JobLine]


def parse_observe_output(text: str) -> ObserveResult:
    """Parse OBSERVE_SCRIPT's output (pure)."""
    sq_rc, sa_rc = 0, None
    sq_lines: list[str] = []
    err_lines: list[str] = []
    sa_lines: list[str] = []
    sa_err: list[str] = []
    jobs: dict[str, _JobLine] = {}
    for line in text.splitlines():
        tag, _, rest = line.partition(SEP)
        if tag == "Q":
            sq_rc = int(rest) if rest.strip().lstrip("-").isdigit() else 1
        elif tag == "S":
            sq_lines.append(rest)
        elif tag == "E":
            err_lines.append(rest)
        elif tag == "A":
            sa_rc = int(rest) if rest.strip().lstrip("-").isdigit() else 1
        elif tag == "C":
            sa_lines.append(rest)
        elif tag == "F":
            sa_err.append(rest)
        elif tag == "J":
            f = rest.split(SEP)
            if len(f) >= 2 and f[1] == "0":
                jobs[f[0]] = _JobLine(exists=False)
            elif len(f) in (8, 9):
                ec = f[3].strip()
                jobs[f[0]] = _JobLine(
                    exists=True,
                    native_id=f[2] or None,
                    exit_code=int(ec) if re.fullmatch(r"-?\d+", ec) else None,
                    cancel=f[4] == "1",
                    node=f[5] or None,
                    submitting=f[6] == "1",
                    marker=f[7].strip() or None,
                    ready=len(f) == 9 and f[8].strip() == "1",
                )
    err = "\n".join(err_lines)
    forgot = sq_rc != 0 and "Invalid job id" in err  # every id is unknown: that is an answer, not a failure
    return ObserveResult(
        squeue_ok=sq_rc == 0 or forgot,
        squeue_error=None if sq_rc == 0 or forgot else (err.strip()[-300:] or f"squeue exited {sq_rc}"),
        rows=parse_squeue("\n".join(sq_lines)) if sq_rc == 0 else [],
        sacct_rows=parse_sacct("\n".join(sa_lines)) if sa_rc == 0 else [],
        sacct_disabled=sa_rc is not None and sacct_disabled(sa_rc, "\n".join(sa_err)),
        jobs=jobs,
    )


def to_observation(view: SlurmView, native_id: str | None, *, cancel_marker: bool, ready: bool = False) -> Observation:
    """Our :class:`Observation` for the engine's reconcile: active states as such, ends as a verdict.

    Why a verdict: SLURM (with the job's exit code and slurmstepd's words) decides *why*
    a job ended — time limit, out of memory, node failure — which the exit code alone
    cannot tell; the reason sentence carries its hint.
    """
    if view.state is JobState.QUEUED:
        return Observation(
            exists=True,
            alive=True,
            pending=True,
            native_id=native_id,
            detail=view.detail,
            cancel_requested=cancel_marker,
        )
    if view.state is JobState.RUNNING:
        return Observation(
            exists=True,
            alive=True,
            native_id=native_id,
            detail=view.detail,
            cancel_requested=cancel_marker,
            ready=ready,
        )
    code = None if view.state is JobState.LOST else view.exit_code
    reason: str | None = None
    if view.state is not JobState.SUCCEEDED:
        reason = (view.detail or view.state.value).rstrip(".")
        if code is not None and view.reason != "exit_code":
            reason += f" ({describe_exit(code)})"
        elif code is not None:
            reason = f"the command failed with {describe_exit(code)}"
        if view.hint:
            reason += f". {view.hint.rstrip('.')}"
    return Observation(
        exists=True,
        alive=False,
        native_id=native_id,
        exit_code=code,
        cancel_requested=view.cancelled,
        timed_out=view.timed_out,
        detail=reason,
        verdict=view.state,
    )


class SlurmLauncher:
    """Jobs as SLURM batch jobs on the host's cluster (see the module docstring)."""

    name = "slurm"
    # The engine reads this: a submitted job waits in SLURM's queue, so it stays 'queued'
    # until squeue says RUNNING (a direct job runs the moment it starts).
    queues_jobs = True

    def __init__(self, host: HostConfig) -> None:
        self.host = host
        self.slurm = host.slurm_settings
        self._use_sacct = True  # until sacct says accounting is disabled

    # -- script -----------------------------------------------------------------------
    def options(self, job: PreparedJob) -> SbatchOptions:
        r = job.spec.resources
        return resolve_options(
            self.slurm,
            job_name=job_name_for(job.job_id),
            token=job.token,
            job_dir=job.job_dir,
            gpus=r.gpus,
            nodes=r.nodes,
            ntasks_per_node=r.tasks_per_node,
            time_limit_s=r.time_limit_s,
            partition=r.partition,
            memory_gib=r.memory_gib,
            cpus=r.cpus,
        )

    def sbatch_argv(self, job: PreparedJob) -> list[str]:
        return sbatch_argv(self.options(job), job.path("run.sh"))

    def render_script(self, job: PreparedJob) -> str:
        """run.sh = the batch script: header lines, then where it runs, then the common body."""
        d = shlex.quote(job.job_dir)
        lines = [
            "#!/bin/bash",
            f"# llm-ops-mcp job {job.job_id} (slurm launcher on host {job.host.name}); generated, do not edit.",
            f"# submitted with: {shlex.join(self.sbatch_argv(job))}",
            *self._header(),
            # Where and as what it runs, in the job directory (the host's directory is the truth).
            f"printf '%s\\n' \"${{SLURM_JOB_ID:-}}\" > {d}/{SLURM_ID}.tmp && mv -f {d}/{SLURM_ID}.tmp {d}/{SLURM_ID}",
            f"printf '%s\\n' \"${{SLURMD_NODENAME:-$(hostname)}}\" > {d}/{NODE_FILE}",
        ]
        return "\n".join(lines) + "\n" + render_body(job, kill_group_on_exit=False)

    def _header(self) -> list[str]:
        out = []
        for h in self.slurm.header:
            if "\n" in h or "\x00" in h:
                raise SchedulerError(
                    f"Host {self.host.name!r}: a [slurm] header line holds a newline.",
                    "Give one command per header entry.",
                )
            out.append(h)
        return out

    # -- start ------------------------------------------------------------------------
    async def start(self, transport: Transport, job: PreparedJob) -> str:
        argv = self.sbatch_argv(job)
        for force in ("0", "1"):
            res = await transport.run(
                ["bash", "-c", START_SCRIPT, "llm-ops-sbatch", job.job_dir, force, *argv], timeout=120
            )
            if res.rc != 0:
                raise await self._rejected(transport, job, res.err)
            out = res.out.strip().splitlines()[-1] if res.out.strip() else ""
            if out != _AMBIGUOUS:
                if not re.fullmatch(r"\d+(_\d+)?", out):
                    raise CommandFailed(
                        f"sbatch for job {job.job_id} printed no job id ({out[:80]!r}).",
                        "See sbatch.err in the job directory.",
                    )
                return out
            found = await self._lookup(transport, job.job_id, job.token)
            if found is not None:  # the earlier sbatch went through; its reply was lost
                await transport.write_file(job.path(SLURM_ID), f"{found}\n".encode(), 0o644)
                await transport.remove(job.path(SUBMITTING))
                return found
        raise SchedulerError(f"Could not submit job {job.job_id}.", "Retry the submit.")  # pragma: no cover

    async def _lookup(self, transport: Transport, job_id: str, token: str) -> str | None:
        """The SLURM id of the job carrying ``token``, or None when SLURM positively has none."""
        res = await transport.run(squeue_by_name_argv(job_name_for(job_id)), timeout=60)
        if res.rc != 0:
            raise SchedulerError(
                f"The submit of job {job_id} is ambiguous and squeue cannot resolve it: {res.err.strip()[:200]}.",
                "Check the cluster (scontrol ping) and ask for the job's status again; it will not be submitted twice.",
            )
        for row in parse_squeue(res.out):
            if row.comment == token:
                return row.job_id
        return None

    async def _rejected(self, transport: Transport, job: PreparedJob, stderr: str) -> SchedulerError:
        """sbatch's refusal in one sentence, with what to do; a bad partition lists the real ones."""
        lines = [ln.removeprefix("sbatch: error: ").strip() for ln in stderr.strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else "no error output"
        if "partition" in stderr.lower():
            opts = self.options(job)
            parts = await self.partitions(transport)
            listed = ", ".join(parts) if parts else "none reported by sinfo"
            return SchedulerError(
                f"SLURM rejected job {job.job_id}: {msg} (partition {opts.partition or '(default)'!r}). "
                f"Partitions on this cluster: {listed}.",
                "Pick one of those partitions (resources.partition, or [slurm] partition in the host's config).",
            )
        if "unable to contact slurm controller" in stderr.lower() or "socket timed out" in stderr.lower():
            return SchedulerError(
                f"SLURM did not answer the submit of job {job.job_id}: {msg}.",
                "Check the controller (scontrol ping) and retry; the job will not run twice.",
            )
        return SchedulerError(
            f"SLURM rejected job {job.job_id}: {msg}.",
            "Fix the request (GPUs, time limit, memory, account) or the host's [slurm] table.",
        )

    async def partitions(self, transport: Transport) -> list[str]:
        """Partition names, the default one marked ``(default)``; [] when sinfo cannot say."""
        try:
            res = await transport.run(sinfo_partitions_argv(), timeout=30)
        except HostError:
            return []
        if res.rc != 0:
            return []
        out = []
        for p in res.out.split():
            out.append(f"{p[:-1]} (default)" if p.endswith("*") else p)
        return list(dict.fromkeys(out))

    # -- observe ----------------------------------------------------------------------
    async def observe(self, transport: Transport, refs: Sequence[JobRef]) -> dict[str, Observation]:
        """Every listed job, in one round trip and one squeue call per batch of 400."""
        out: dict[str, Observation] = {}
        fmt = SEP.join(code for _, code in SQUEUE_FIELDS)
        for i in range(0, len(refs), BATCH):
            chunk = refs[i : i + BATCH]
            args: list[str] = []
            for r in chunk:
                args += [r.job_id, r.job_dir, r.token, r.native_id or ""]
            res = await transport.run(
                [
                    "bash",
                    "-c",
                    OBSERVE_SCRIPT,
                    "llm-ops-squeue",
                    fmt,
                    "1" if self._use_sacct else "0",
                    ",".join(SACCT_FIELDS),
                    *args,
                ],
                timeout=120,
            )
            res.check("Reading SLURM job states")
            parsed = parse_observe_output(res.out)
            if not parsed.squeue_ok:
                # Controller down or overloaded: the state is unknown (never lost); the engine marks it stale.
                raise SchedulerError(
                    f"SLURM did not answer squeue on {self.host.name}: {parsed.squeue_error}.",
                    "The jobs keep running; ask again once the controller is back (scontrol ping).",
                )
            if parsed.sacct_disabled:
                self._use_sacct = False
            out.update(self._interpret(chunk, parsed))
        return out

    @staticmethod
    def _interpret(refs: Sequence[JobRef], parsed: ObserveResult) -> dict[str, Observation]:
        by_id = {r.job_id: r for r in parsed.rows}
        by_token = {r.comment: r for r in parsed.rows if r.comment}
        acct = {r.job_id: r for r in parsed.sacct_rows}
        out: dict[str, Observation] = {}
        for ref in refs:
            line = parsed.jobs.get(ref.job_id)
            if line is None:
                continue
            if not line.exists:
                out[ref.job_id] = Observation(exists=False)
                continue
            nid = line.native_id or ref.native_id
            row = by_id.get(nid) if nid else None
            if row is None:
                row = by_token.get(ref.token)
                if row is not None and row.comment != ref.token:
                    row = None
            if row is not None:
                nid = row.job_id
            if row is not None:
                view = interpret(
                    row.state,
                    reason=row.reason,
                    exit_code=line.exit_code,
                    node=row.nodes or line.node,
                    cancel_requested=line.cancel,
                    log_tail=line.marker,
                    time_limit=row.time_limit,
                )
            elif nid is not None and nid in acct:
                a = acct[nid]
                code = line.exit_code if line.exit_code is not None else a.exit_code
                view = interpret(
                    a.state,
                    reason=a.reason,
                    exit_code=code,
                    node=a.nodes or line.node,
                    cancel_requested=line.cancel,
                    log_tail=line.marker,
                )
            elif nid is None:
                # Not submitted (yet), or an ambiguous submit SLURM does not know: never started.
                out[ref.job_id] = Observation(exists=True, alive=False, native_id=None, cancel_requested=line.cancel)
                continue
            else:
                view = interpret(
                    None, exit_code=line.exit_code, node=line.node, cancel_requested=line.cancel, log_tail=line.marker
                )
            out[ref.job_id] = to_observation(view, nid, cancel_marker=line.cancel, ready=line.ready)
        return out

    # -- cancel -----------------------------------------------------------------------
    async def cancel(self, transport: Transport, ref: JobRef, grace_s: float) -> str:
        """``scancel``: SLURM sends TERM, waits the cluster's KillWait, then KILL (``grace_s`` is SLURM's)."""
        res = await transport.run(
            ["bash", "-c", CANCEL_SCRIPT, "llm-ops-scancel", ref.job_dir, ref.native_id or ""], timeout=60
        )
        if res.rc != 0:
            raise SchedulerError(
                f"scancel of job {ref.job_id} failed: {res.err.strip()[:200]}.",
                "Check the cluster (scontrol ping) and cancel again.",
            )
        what = res.out.strip() or "unknown"
        if what == "no-id":
            found = await self._lookup(transport, ref.job_id, ref.token)
            if found is None:
                return "not-submitted"
            res = await transport.run(scancel_argv([found]), timeout=60)
            return "scancelled" if res.rc == 0 else "finished"
        return what
