"""The direct launcher: ``setsid`` + ``nohup`` on the host itself, no scheduler.

* Start: a constant bash script (values only as positional parameters) starts
  ``setsid nohup bash ./run.sh TOKEN`` in the job directory, so the job leads its
  own session and process group and survives the server. run.sh writes its own pid
  (= the process-group id) first; the start script waits for that file and prints it.
* Identity: the job token is an argument of run.sh, so it is in
  ``/proc/<pid>/cmdline`` (``ps -o args=`` where there is no /proc). A pid is
  only the job's while its command line carries the token: a reused pid is never
  taken for the job. Zombies count as dead.
* Status: one bash script reports every listed job in one round trip.
* Cancel: ``cancel_requested`` marker, SIGTERM to the whole process group, SIGKILL
  after the grace period; children are in the group, so they go too.
* Time limit: a watchdog subshell in run.sh marks ``timed_out`` and stops the group.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from runners.config import HostConfig
from runners.errors import CommandFailed
from runners.jobdir import (
    CANCEL_MARK,
    EXIT_CODE,
    LOG,
    PID,
    READY_MARK,
    RUN_SH,
    TIMED_OUT_MARK,
    PreparedJob,
    render_body,
)
from runners.launchers.base import JobRef, Observation
from runners.transports.base import Transport

__all__ = ["CANCEL_SCRIPT", "START_SCRIPT", "STATUS_SCRIPT", "DirectLauncher", "parse_status_output"]

SEP = "\x1f"
KILL_GRACE_AFTER_TIME_LIMIT_S = 30
BATCH = 400  # jobs per status round trip (keeps argv far below ARG_MAX)

# Shared shell functions; bash builtins only, so checking hundreds of jobs forks nothing.
_FUNCS = r"""
has_token() {
  local a
  if [ -r "/proc/$1/cmdline" ]; then
    while IFS= read -r -d '' a; do [ "$a" = "$2" ] && return 0; done < "/proc/$1/cmdline"
    return 1
  fi
  ps -o args= -p "$1" 2>/dev/null | grep -qF -- "$2"
}
is_alive() {
  local s
  kill -0 "$1" 2>/dev/null || return 1
  if [ -r "/proc/$1/stat" ]; then
    { read -r s < "/proc/$1/stat"; } 2>/dev/null || return 1
    s=${s##*) }
    [ "${s%% *}" = Z ] && return 1
  fi
  has_token "$1" "$2"
}
group_alive() {
  local g=$1 f line st pg
  kill -0 -- "-$g" 2>/dev/null || return 1
  # Some member exists; it only counts if it is not a zombie (scan /proc, builtins only).
  if [ -r /proc/self/stat ]; then
    for f in /proc/[0-9]*/stat; do
      { read -r line < "$f"; } 2>/dev/null || continue
      read -r st _ pg _ <<< "${line##*) }"
      [ "$pg" = "$g" ] && [ "$st" != Z ] && return 0
    done
    return 1
  fi
  return 0
}
read_pid() {
  pid=
  [ -s "$1" ] && { read -r pid < "$1"; } 2>/dev/null
  case $pid in ''|*[!0-9]*) pid= ;; esac
}
"""

# $1 job dir, $2 token. Idempotent: a job that wrote its pid already is not started twice.
START_SCRIPT = (
    _FUNCS
    + rf"""
cd -- "$1" || {{ echo "job directory $1 is missing" >&2; exit 97; }}
read_pid {PID}
if [ -n "$pid" ]; then echo "$pid"; exit 0; fi
setsid nohup bash ./{RUN_SH} "$2" > {LOG} 2>&1 < /dev/null &
child=$!
i=0
while :; do
  read_pid {PID}
  [ -n "$pid" ] && {{ echo "$pid"; exit 0; }}
  i=$((i+1))
  if [ $i -gt 2000 ] || {{ ! kill -0 "$child" 2>/dev/null && [ ! -e {PID} ]; }}; then
    [ -s {PID} ] && continue
    echo "run.sh did not start (see {LOG})" >&2; exit 98
  fi
  sleep 0.005
done
"""
)

# Triples of (job id, job dir, token); one line per job, fields split by \x1f:
# id, exists, pid, alive, exit_code, cancel_requested, timed_out, ready.
# Alive is checked BEFORE the exit code: run.sh writes exit_code before it dies, so
# "dead and no exit code" read in this order really means it died without one.
STATUS_SCRIPT = (
    _FUNCS
    + rf"""
while [ $# -ge 3 ]; do
  id=$1; d=$2; tok=$3; shift 3
  if [ ! -d "$d" ]; then printf '%s\0370\n' "$id"; continue; fi
  read_pid "$d/{PID}"
  alive=0
  [ -n "$pid" ] && is_alive "$pid" "$tok" && alive=1
  ec=
  [ -s "$d/{EXIT_CODE}" ] && {{ read -r ec < "$d/{EXIT_CODE}"; }} 2>/dev/null
  c=0; [ -e "$d/{CANCEL_MARK}" ] && c=1
  t=0; [ -e "$d/{TIMED_OUT_MARK}" ] && t=1
  r=0; [ -e "$d/{READY_MARK}" ] && r=1
  printf '%s\0371\037%s\037%s\037%s\037%s\037%s\037%s\n' "$id" "$pid" "$alive" "$ec" "$c" "$t" "$r"
done
"""
)

# $1 job dir, $2 token, $3 grace in tenths of a second. Prints what it did.
CANCEL_SCRIPT = (
    _FUNCS
    + rf"""
cd -- "$1" 2>/dev/null || {{ echo missing; exit 0; }}
: > {CANCEL_MARK}
[ -e {EXIT_CODE} ] && {{ echo finished; exit 0; }}
read_pid {PID}
[ -z "$pid" ] && {{ echo not-started; exit 0; }}
is_alive "$pid" "$2" || {{ group_alive "$pid" || {{ echo gone; exit 0; }}; }}
kill -TERM -- "-$pid" 2>/dev/null
# Poll fast first (most jobs stop within milliseconds), then every 0.1 s until the grace is over.
for i in 1 2 3 4 5 6 7 8 9 10; do
  group_alive "$pid" || {{ echo terminated; exit 0; }}
  sleep 0.01
done
i=1
while [ $i -lt "$3" ]; do
  group_alive "$pid" || {{ echo terminated; exit 0; }}
  sleep 0.1
  i=$((i+1))
done
kill -KILL -- "-$pid" 2>/dev/null
echo killed
"""
)


def parse_status_output(text: str) -> dict[str, Observation]:
    """Parse STATUS_SCRIPT's lines (a pure function, tested on its own)."""
    out: dict[str, Observation] = {}
    for line in text.splitlines():
        f = line.split(SEP)
        if len(f) < 2:
            continue
        if f[1] == "0":
            out[f[0]] = Observation(exists=False)
            continue
        if len(f) != 8:
            continue
        ec = f[4].strip()
        out[f[0]] = Observation(
            exists=True,
            native_id=f[2] or None,
            alive=f[3] == "1",
            exit_code=int(ec) if ec.lstrip("-").isdigit() else None,
            cancel_requested=f[5] == "1",
            timed_out=f[6] == "1",
            ready=f[7] == "1",
        )
    return out


class DirectLauncher:
    """Runs jobs as detached process groups on the host (see the module docstring)."""

    name = "direct"

    def __init__(self, host: HostConfig) -> None:
        self.host = host

    def render_script(self, job: PreparedJob) -> str:
        d = shlex.quote(job.job_dir)
        head = [
            "#!/usr/bin/env bash",
            f"# llm-ops-mcp job {job.job_id} (direct launcher); generated, do not edit.",
            # First thing: our pid is the session and process-group id the launcher watches.
            f"printf '%s\\n' \"$$\" > {d}/{PID}.tmp && mv -f {d}/{PID}.tmp {d}/{PID}",
        ]
        pre: list[str] = []
        limit = job.spec.resources.time_limit_s
        if limit:
            pre.append(
                f"( sleep {int(limit)}; [ -e {EXIT_CODE} ] && exit 0; : > {TIMED_OUT_MARK}; "
                f'echo "[llm-ops] time limit of {int(limit)} s reached: stopping the job"; '
                f"trap '' TERM; kill -TERM -- -$$; sleep {KILL_GRACE_AFTER_TIME_LIMIT_S}; "
                "kill -KILL -- -$$ ) &"
            )
        return "\n".join(head) + "\n" + render_body(job, kill_group_on_exit=True, pre_command=tuple(pre))

    async def start(self, transport: Transport, job: PreparedJob) -> str:
        res = await transport.run(["bash", "-c", START_SCRIPT, "llm-ops-start", job.job_dir, job.token], timeout=60)
        res.check(f"Starting job {job.job_id}")
        pid = res.out.strip().splitlines()[-1] if res.out.strip() else ""
        if not pid.isdigit():
            raise CommandFailed(
                f"Starting job {job.job_id} printed no pid ({res.out.strip()[:80]!r}).", "See the job's output.log."
            )
        return pid

    async def observe(self, transport: Transport, refs: Sequence[JobRef]) -> dict[str, Observation]:
        out: dict[str, Observation] = {}
        for i in range(0, len(refs), BATCH):
            args: list[str] = []
            for r in refs[i : i + BATCH]:
                args += [r.job_id, r.job_dir, r.token]
            res = await transport.run(["bash", "-c", STATUS_SCRIPT, "llm-ops-status", *args], timeout=60)
            res.check("Reading job states")
            out.update(parse_status_output(res.out))
        return out

    async def cancel(self, transport: Transport, ref: JobRef, grace_s: float) -> str:
        tenths = max(0, int(grace_s * 10))
        res = await transport.run(
            ["bash", "-c", CANCEL_SCRIPT, "llm-ops-cancel", ref.job_dir, ref.token, str(tenths)],
            timeout=grace_s + 30,
        )
        res.check(f"Cancelling job {ref.job_id}")
        return res.out.strip() or "unknown"
