"""SLURM commands as pure functions: validated values in, argv lists (and parsed rows) out.

Why pure: every command we send to a cluster, locally or over SSH to a login node,
is built here and nowhere else, so it can be tested as plain data and no value from
an agent ever reaches a shell unvalidated (STYLE.md 5, after slurm-mcp's
``slurm/commands.py``). Values that start with ``-`` are refused (they would be
read as flags), and ``--`` precedes positional values.

Output is asked for with a fixed separator, ``\\x1f`` (ASCII unit separator, as
SkyPilot does): SLURM never puts it in a job name, comment, reason or node list, and
``|`` or ``,`` can appear in all of those (``--comment`` is free text, node lists
are ``a[1-3],b2``).

The batch script itself is rendered by ``SlurmLauncher.render_script`` (it is the
job's ``run.sh``, and what ``dry_run`` returns).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from runners.config import SlurmConfig
from runners.errors import InvalidInput

__all__ = [
    "SACCT_FIELDS",
    "SEP",
    "SQUEUE_FIELDS",
    "SacctRow",
    "SbatchOptions",
    "SqueueRow",
    "format_time_minutes",
    "parse_sacct",
    "parse_sbatch_id",
    "parse_squeue",
    "resolve_options",
    "sacct_argv",
    "sacct_disabled",
    "sbatch_argv",
    "scancel_argv",
    "sinfo_partitions_argv",
    "squeue_argv",
    "squeue_by_name_argv",
    "squeue_forgot_all",
]

SEP = "\x1f"

# A SLURM "value": partition, account, qos, gres, mem, job name. Constraint expressions
# also use & | ! [ ] * (SlurmConfig allows the same set). Never a leading '-'.
_VALUE_RE = re.compile(r"^[A-Za-z0-9_.,:&|!\[\]*+=@-]{1,256}$")
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")
_GRES_RE = re.compile(r"^[A-Za-z0-9_]+(:[A-Za-z0-9_.-]+)?$")
_MEM_RE = re.compile(r"^\d+[KMGT]?$")
_JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")

# squeue: %i job id, %j name, %T long state, %r reason, %N nodes, %k comment,
# %M time used, %l time limit, %P partition, %S start time (or N/A).
SQUEUE_FIELDS: tuple[tuple[str, str], ...] = (
    ("job_id", "%i"),
    ("name", "%j"),
    ("state", "%T"),
    ("reason", "%r"),
    ("nodes", "%N"),
    ("comment", "%k"),
    ("elapsed", "%M"),
    ("time_limit", "%l"),
    ("partition", "%P"),
)
SACCT_FIELDS: tuple[str, ...] = ("JobID", "JobName", "State", "ExitCode", "Reason", "NodeList", "Comment")


def _value(what: str, v: str) -> str:
    if v.startswith("-") or not _VALUE_RE.fullmatch(v):
        raise InvalidInput(f"{what} {v!r} is not a valid SLURM value.", "Use letters, digits and . _ : , only.")
    return v


def _path(what: str, p: str) -> str:
    if not p.startswith("/") or "\x00" in p or "\n" in p:
        raise InvalidInput(f"{what} {p!r} must be an absolute host path.", "Expand '~' on the host first.")
    return p


def _job_ids(ids: Iterable[str]) -> list[str]:
    out = []
    for i in ids:
        if not _JOB_ID_RE.fullmatch(i):
            raise InvalidInput(f"{i!r} is not a SLURM job id.", "SLURM job ids are numbers (array tasks: 12_3).")
        out.append(i)
    return out


def format_time_minutes(seconds: int) -> str:
    """``--time`` value, rounded *up* to whole minutes (SLURM's unit; a 30 s limit becomes 1 min).

    Why minutes: SLURM stores time limits in minutes and rounds ``MM:SS`` up anyway; we
    say so in the script instead of pretending to second precision.
    """
    if seconds <= 0:
        raise InvalidInput(f"time limit {seconds} s must be positive.", "Give seconds > 0.")
    minutes = -(-int(seconds) // 60)
    d, rem = divmod(minutes, 24 * 60)
    h, m = divmod(rem, 60)
    return f"{d}-{h:02d}:{m:02d}:00" if d else f"{h:02d}:{m:02d}:00"


class SbatchOptions(BaseModel):
    """Everything one ``sbatch`` call carries, already merged from host config and job overrides."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_name: str = Field(description="--job-name; also how an ambiguous submit is found again.")
    token: str = Field(description="--comment: the job's unique token (write-ahead, STYLE.md 7).")
    output: str = Field(description="--output: absolute path of output.log in the job directory.")
    workdir: str = Field(description="--chdir: the job directory.")
    gpus: int = Field(0, ge=0, le=64, description="GPUs per node.")
    gres: str = Field("gpu", description="GRES name, 'gpu' or typed 'gpu:h100'.")
    nodes: int = Field(1, ge=1, le=64)
    ntasks_per_node: int = Field(1, ge=1, le=64, description="Tasks per node: srun's torchrun agents.")
    time: str | None = Field(None, description="--time, already in SLURM form.")
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    mem: str | None = None
    cpus_per_task: int | None = Field(None, ge=1, le=1024)
    requeue: bool = Field(False, description="False: a node failure ends the job (lost), no silent rerun.")

    @field_validator("job_name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v.startswith("-") or not _NAME_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid job name (letters, digits, . _ -)")
        return v

    @field_validator("token")
    @classmethod
    def _token(cls, v: str) -> str:
        if v.startswith("-") or not _TOKEN_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid job token")
        return v

    @field_validator("output", "workdir")
    @classmethod
    def _abs(cls, v: str) -> str:
        return _path("path", v)

    @field_validator("gres")
    @classmethod
    def _gres(cls, v: str) -> str:
        if not _GRES_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a GRES name like 'gpu' or 'gpu:h100'")
        return v

    @field_validator("mem")
    @classmethod
    def _mem(cls, v: str | None) -> str | None:
        if v is not None and not _MEM_RE.fullmatch(v):
            raise ValueError(f"{v!r} is not a SLURM memory size like 64G or 32000M")
        return v

    @field_validator("time")
    @classmethod
    def _time(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"(\d+-)?\d{1,3}(:\d{2}){0,2}", v):
            raise ValueError(f"{v!r} is not a SLURM time")
        return v

    @field_validator("partition", "account", "qos", "constraint")
    @classmethod
    def _plain(cls, v: str | None) -> str | None:
        return None if v is None else _value("value", v)


def resolve_options(
    cfg: SlurmConfig,
    *,
    job_name: str,
    token: str,
    job_dir: str,
    gpus: int = 0,
    nodes: int = 1,
    ntasks_per_node: int = 1,
    time_limit_s: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    qos: str | None = None,
    constraint: str | None = None,
    memory_gib: float | None = None,
    cpus: int | None = None,
) -> SbatchOptions:
    """Merge the host's ``[slurm]`` table with one job's overrides (the job wins).

    Why here and not in the launcher: the merge is the part users get wrong in their
    heads ("which partition did it use?"), so it is a pure function with tests.
    """
    mem = f"{max(1, int(memory_gib * 1024 + 0.999))}M" if memory_gib is not None else cfg.mem
    time = format_time_minutes(time_limit_s) if time_limit_s is not None else cfg.time_limit
    try:
        return SbatchOptions(
            job_name=job_name,
            token=token,
            output=f"{job_dir.rstrip('/')}/output.log",
            workdir=job_dir,
            gpus=gpus,
            gres=cfg.gres,
            nodes=nodes,
            ntasks_per_node=ntasks_per_node,
            time=time,
            partition=partition or cfg.partition,
            account=account or cfg.account,
            qos=qos or cfg.qos,
            constraint=constraint or cfg.constraint,
            mem=mem,
            cpus_per_task=cpus or cfg.cpus_per_task,
        )
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise InvalidInput(f"SLURM options are not valid: {e}", "Fix the host's [slurm] table or the job.") from e


def sbatch_argv(opts: SbatchOptions, script_path: str) -> list[str]:
    """``sbatch --parsable ... -- SCRIPT``: prints ``jobid[;cluster]`` and nothing else."""
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={opts.job_name}",
        f"--comment={opts.token}",
        f"--output={opts.output}",
        f"--chdir={opts.workdir}",
        f"--nodes={opts.nodes}",
        "--requeue" if opts.requeue else "--no-requeue",
    ]
    if opts.nodes > 1 or opts.ntasks_per_node > 1:  # a multi-node (torchrun) job: one srun task per agent
        argv.append(f"--ntasks-per-node={opts.ntasks_per_node}")
    if opts.gpus:
        argv.append(f"--gres={opts.gres}:{opts.gpus}")
    if opts.time:
        argv.append(f"--time={opts.time}")
    for flag, val in (
        ("--partition", opts.partition),
        ("--account", opts.account),
        ("--qos", opts.qos),
        ("--constraint", opts.constraint),
        ("--mem", opts.mem),
    ):
        if val is not None:
            argv.append(f"{flag}={val}")
    if opts.cpus_per_task is not None:
        argv.append(f"--cpus-per-task={opts.cpus_per_task}")
    argv += ["--", _path("script", script_path)]
    return argv


def parse_sbatch_id(stdout: str) -> str:
    """The job id from ``sbatch --parsable`` (``12345`` or ``12345;cluster``)."""
    line = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    jid = line.split(";", 1)[0].strip()
    if not _JOB_ID_RE.fullmatch(jid):
        raise ValueError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
    return jid


def _squeue_format() -> str:
    return SEP.join(code for _, code in SQUEUE_FIELDS)


def squeue_argv(job_ids: Sequence[str]) -> list[str]:
    """One ``squeue`` for many jobs (all states still in slurmctld's memory).

    Why ``--jobs`` and ``-t all``: one call answers for every job of a host, finished
    ones included for ``MinJobAge`` seconds; ids SLURM has forgotten are simply absent
    (when *every* id is unknown squeue exits 1 with "Invalid job id": see
    :func:`squeue_forgot_all`).
    """
    ids = _job_ids(job_ids)
    if not ids:
        raise InvalidInput("squeue needs at least one job id.", None)
    return ["squeue", "--noheader", "--states=all", f"--format={_squeue_format()}", f"--jobs={','.join(ids)}"]


def squeue_by_name_argv(job_name: str) -> list[str]:
    """Look a job up by name (its comment holds the token): resolves an ambiguous submit."""
    if job_name.startswith("-") or not _NAME_RE.fullmatch(job_name):
        raise InvalidInput(f"{job_name!r} is not a valid job name.", None)
    return ["squeue", "--noheader", "--states=all", "--me", f"--format={_squeue_format()}", f"--name={job_name}"]


def squeue_forgot_all(rc: int, stderr: str) -> bool:
    """True when squeue failed only because none of the ids is known any more."""
    return rc != 0 and "Invalid job id" in stderr


class SqueueRow(BaseModel):
    """One job as squeue shows it; strings as SLURM prints them."""

    job_id: str
    name: str
    state: str
    reason: str = ""
    nodes: str = ""
    comment: str = ""
    elapsed: str = ""
    time_limit: str = ""
    partition: str = ""


def parse_squeue(stdout: str) -> list[SqueueRow]:
    """Rows from :func:`squeue_argv` output; a malformed line raises (never silently dropped)."""
    rows = []
    names = [n for n, _ in SQUEUE_FIELDS]
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split(SEP)
        if len(parts) != len(names):
            raise ValueError(f"squeue line has {len(parts)} fields, expected {len(names)}: {line[:200]!r}")
        vals = {
            k: ("" if v in ("(null)", "N/A") and k in ("comment", "nodes") else v.strip())
            for k, v in zip(names, parts, strict=True)
        }
        if vals["reason"] == "None":
            vals["reason"] = ""
        rows.append(SqueueRow(**vals))
    return rows


def sacct_argv(job_ids: Sequence[str]) -> list[str]:
    """``sacct`` for many jobs, allocations only (-X), parsable with our separator."""
    ids = _job_ids(job_ids)
    if not ids:
        raise InvalidInput("sacct needs at least one job id.", None)
    return [
        "sacct",
        "--noheader",
        "--allocations",
        "--parsable2",
        f"--delimiter={SEP}",
        f"--format={','.join(SACCT_FIELDS)}",
        f"--jobs={','.join(ids)}",
    ]


def sacct_disabled(rc: int, stderr: str) -> bool:
    """True when the cluster has no accounting (our test cluster, many small ones)."""
    return rc != 0 and "accounting storage is disabled" in stderr.lower()


class SacctRow(BaseModel):
    job_id: str
    name: str
    state: str
    exit_code: int | None = None
    signal: int | None = None
    reason: str = ""
    nodes: str = ""
    comment: str = ""


def parse_sacct(stdout: str) -> list[SacctRow]:
    """Rows of :func:`sacct_argv`; ``ExitCode`` ``2:0`` is (exit 2, signal 0)."""
    rows = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        parts = line.split(SEP)
        if len(parts) != len(SACCT_FIELDS):
            raise ValueError(f"sacct line has {len(parts)} fields, expected {len(SACCT_FIELDS)}: {line[:200]!r}")
        jid, name, state, exit_code, reason, nodes, comment = parts
        code = sig = None
        m = re.fullmatch(r"(\d+):(\d+)", exit_code.strip())
        if m:
            code, sig = int(m.group(1)), int(m.group(2))
        rows.append(
            SacctRow(
                job_id=jid,
                name=name,
                state=state.strip(),
                exit_code=code,
                signal=sig,
                reason="" if reason in ("None", "(null)") else reason,
                nodes="" if nodes in ("None assigned", "(null)") else nodes,
                comment="" if comment == "(null)" else comment,
            )
        )
    return rows


def scancel_argv(job_ids: Sequence[str], signal: Literal["TERM", "KILL", "INT"] | None = None) -> list[str]:
    """``scancel [--signal=S --full] -- ID...``; without a signal SLURM's TERM, wait, KILL."""
    ids = _job_ids(job_ids)
    if not ids:
        raise InvalidInput("scancel needs at least one job id.", None)
    argv = ["scancel"]
    if signal is not None:
        argv += [f"--signal={signal}", "--full"]
    return [*argv, "--", *ids]


def sinfo_partitions_argv() -> list[str]:
    """Partition names (the default one ends with '*'): for a clear 'no such partition' error."""
    return ["sinfo", "--noheader", "--format=%P"]
