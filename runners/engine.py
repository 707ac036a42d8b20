"""The job engine: submit, watch, read, wait for and cancel jobs on any host.

It composes a :class:`~runners.transports.base.Transport` and a
:class:`~runners.launchers.base.Launcher` per host (made from the host's config by
``make_transport``/``make_launcher``), the SQLite :class:`~runners.store.Catalog`
and the pure :func:`~runners.reconcile.reconcile`. It knows nothing about SSH or
SLURM: those plug in as new Transport/Launcher classes.

Submit order (never submit twice, never lose a job):

1. validate, build the job (id, token, command, files) — no side effect;
2. write the intent to the catalog (``phase=intent``; an idempotency key that is
   already there returns that job instead);
3. write the job directory on the host, then mark ``phase=launched``;
4. start it through the launcher (idempotent on the host: a started job is not
   started again) and record its native id.

A crash between any two steps is repaired by reconciliation from the host's
directory, at start-up and on every status call.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shlex
import time
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import UTC, datetime
from importlib.resources import files as resource_files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from runners.config import Config, HostConfig
from runners.diagnosis import diagnose_job
from runners.errors import HostError, InvalidInput, NotFound, OpsError
from runners.factories import make_launcher, make_transport
from runners.jobdir import (
    ENV_FILE,
    JOB_JSON,
    LOG,
    METRICS,
    OUTPUTS,
    READY_MARK,
    RUN_SH,
    PreparedJob,
    check_uploads,
    job_dir_for,
    job_env,
    render_env,
    render_job_json,
)
from runners.launchers.base import JobRef, Launcher, Observation
from runners.logs import LogChunk, progress_from, read_last_metrics, read_log
from runners.payloads import shipped_files
from runners.reconcile import START_GRACE_S, reconcile
from runners.redaction import JobSecrets
from runners.spec import JOB_ID_RE, JobSpec
from runners.states import ACTIVE, TERMINAL, JobState
from runners.store import Catalog, JobRecord
from runners.transports.base import Transport
from runners.views import JobView, job_view

__all__ = ["CATALOG_FILE", "JobEngine", "SubmitResult", "WaitUntil"]

log = logging.getLogger("llm_ops_mcp.jobs")

CATALOG_FILE = "jobs.sqlite3"
WaitUntil = Literal["finished", "running", "ready"]
ProgressFn = Callable[[float, float | None, str], Awaitable[None]]
READY_POLL_S = 0.2  # wait(until="ready"): how often the ready marker is looked for between status polls


class SubmitResult(BaseModel):
    """What a submit did (or, with dry_run, would do)."""

    job: JobView | None = Field(None, description="The job (None for a dry run).")
    created: bool = Field(description="False when an earlier submit with the same idempotency_key is returned.")
    dry_run: bool = Field(False, description="True when nothing was started.")
    job_id: str = Field(description="The job's id (what it would be, for a dry run).")
    job_dir: str = Field(description="Where the job's files are (or would be) on the host.")
    run_script: str | None = Field(None, description="run.sh as it would be written (dry run only).")
    job_json: str | None = Field(None, description="job.json as it would be written (dry run only).")
    env_names: list[str] = Field(default_factory=list, description="Variables the env file sets (no values).")
    summary: str = Field(description="One line an agent can quote.")


def _spec_hash(host: str, spec: JobSpec, uploads: Mapping[str, bytes] | None = None) -> str:
    files = {k: hashlib.sha256(v).hexdigest() for k, v in sorted((uploads or {}).items())}
    doc = json.dumps({"host": host, "spec": spec.model_dump(mode="json"), "uploads": files}, sort_keys=True)
    return hashlib.sha256(doc.encode()).hexdigest()


def new_job_id(kind: str, now: float) -> str:
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%d-%H%M%S")
    return f"{kind}-{stamp}-{uuid.uuid4().hex[:6]}"


class JobEngine:
    """One per server process; several processes may share one catalog file."""

    def __init__(
        self,
        config: Config,
        state_dir: str | Path,
        *,
        transport_factory: Callable[[HostConfig], Transport] = make_transport,
        launcher_factory: Callable[[HostConfig], Launcher] = make_launcher,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.time,
        start_grace_s: float = START_GRACE_S,
        cancel_grace_s: float = 10.0,
    ) -> None:
        self.config = config
        self.catalog = Catalog(Path(state_dir) / CATALOG_FILE)
        self._transport_factory = transport_factory
        self._launcher_factory = launcher_factory
        self._secrets = JobSecrets(environ)  # what a job's text may reveal; redacted before it is returned
        self._clock = clock
        self.start_grace_s = start_grace_s
        self.cancel_grace_s = cancel_grace_s
        self._transports: dict[str, Transport] = {}
        self._launchers: dict[str, Launcher] = {}
        self._workdirs: dict[str, str] = {}
        self._started = False
        self._start_lock = asyncio.Lock()

    # -- plumbing -----------------------------------------------------------------------
    def transport(self, host: str) -> Transport:
        if host not in self._transports:
            self._transports[host] = self._transport_factory(self.config.host(host))
        return self._transports[host]

    def launcher(self, host: str, override: str | None = None) -> Launcher:
        """The host's launcher, or the one a spec's ``launcher`` names (a SLURM host's login node runs
        ``direct`` jobs over the same transport)."""
        key = f"{host}\x00{override}" if override else host
        if key not in self._launchers:
            cfg = self.config.host(host)
            if override and override != cfg.launcher:
                cfg = cfg.model_copy(update={"launcher": override, "slurm": None})
            self._launchers[key] = self._launcher_factory(cfg)
        return self._launchers[key]

    @staticmethod
    def _override(rec: JobRecord) -> str | None:
        try:
            return json.loads(rec.spec_json).get("launcher")  # type: ignore[no-any-return]
        except (ValueError, AttributeError):
            return None

    async def workdir(self, host: str) -> str:
        if host not in self._workdirs:
            self._workdirs[host] = await self.transport(host).expand_path(self.config.host(host).workdir)
        return self._workdirs[host]

    def _record(self, job_id: str) -> JobRecord:
        if not JOB_ID_RE.match(job_id):
            raise InvalidInput(f"{job_id!r} is not a job id.", "Use a job_id from a submit or list_jobs.")
        rec = self.catalog.get(job_id)
        if rec is None:
            raise NotFound(f"No job {job_id!r} in the catalog.", "list_jobs shows the known jobs.")
        return rec

    async def ensure_started(self) -> None:
        """Reconcile every active job once per process (the server may have been down a while)."""
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            self._started = True
            await self.refresh(self.catalog.active())

    # -- submit -------------------------------------------------------------------------
    def _command(self, host: HostConfig, spec: JobSpec) -> list[str]:
        if spec.argv is not None:
            return list(spec.argv)
        assert spec.payload is not None
        return [host.interpreter, f"{spec.payload}.py", JOB_JSON]

    def _payload_source(self, name: str) -> bytes:
        src = resource_files("runners.payloads").joinpath(f"{name}.py")
        if not src.is_file():
            raise NotFound(f"There is no payload {name!r}.", "Payloads live in runners/payloads/.")
        return src.read_bytes()

    async def prepare(self, spec: JobSpec, host_name: str | None = None) -> tuple[PreparedJob, dict[str, str]]:
        """Build the job and its secret values; no side effect but expanding the host's workdir."""
        host = self.config.host(host_name)
        env = self._secrets.env()
        missing = [n for n in spec.secrets if n not in env]
        if missing:
            raise InvalidInput(
                f"Secret(s) {', '.join(missing)} are not set in the server's environment.",
                "Set them where the MCP server starts, or drop them from the request.",
            )
        now = self._clock()
        job_id = new_job_id(spec.kind, now)
        job = PreparedJob(
            job_id=job_id,
            token=uuid.uuid4().hex,
            host=host,
            spec=spec,
            job_dir=job_dir_for(await self.workdir(host.name), job_id),
            command=self._command(host, spec),
            created_at=now,
            secret_names=sorted(set(host.secrets) | set(spec.secrets)),
        )
        job.env = job_env(job)
        return job, self._secrets.values(host, spec.secrets)

    async def submit(
        self,
        spec: JobSpec,
        host: str | None = None,
        *,
        idempotency_key: str | None = None,
        dry_run: bool = False,
        uploads: Mapping[str, bytes] | None = None,
    ) -> SubmitResult:
        """Start ``spec`` on ``host``; the same ``idempotency_key`` returns the same job.

        ``uploads`` are files (name → bytes) written into the job directory before it starts,
        such as a dataset the controller holds; they are part of the idempotency check.
        """
        uploads = dict(uploads or {})
        check_uploads(uploads)
        await self.ensure_started()
        job, secrets = await self.prepare(spec, host)
        launcher = self.launcher(job.host.name, spec.launcher)
        script = launcher.render_script(job)
        if dry_run:
            return SubmitResult(
                job=None,
                created=False,
                dry_run=True,
                job_id=job.job_id,
                job_dir=job.job_dir,
                run_script=script,
                job_json=render_job_json(job),
                env_names=sorted({*job.env, *secrets}),
                summary=f"Dry run: would start {shlex.join(job.command)} on {job.host.name} in {job.job_dir}.",
            )
        digest = _spec_hash(job.host.name, spec, uploads)
        now = self._clock()
        rec = JobRecord(
            job_id=job.job_id,
            token=job.token,
            host=job.host.name,
            kind=spec.kind,
            state=JobState.QUEUED,
            job_dir=job.job_dir,
            spec_json=spec.model_dump_json(),
            spec_hash=digest,
            created_at=job.created_at,
            updated_at=now,
            phase="intent",
            name=spec.name,
            idempotency_key=idempotency_key,
        )
        existing, created = self.catalog.insert_intent(rec)
        if not created:
            if existing.spec_hash != digest:
                raise InvalidInput(
                    f"idempotency_key {idempotency_key!r} was already used for job {existing.job_id} "
                    "with a different request.",
                    "Use a new key for a different job, or repeat the original request exactly.",
                )
            view = await self.status(existing.job_id, with_details=False)
            return SubmitResult(
                job=view,
                created=False,
                job_id=existing.job_id,
                job_dir=existing.job_dir,
                summary=f"Same idempotency_key as before: {view.summary}",
            )
        await self._launch(job, secrets, script, uploads)
        view = await self.status(job.job_id, with_details=False)
        return SubmitResult(
            job=view, created=True, job_id=job.job_id, job_dir=job.job_dir, summary=f"Submitted: {view.summary}"
        )

    async def _launch(
        self, job: PreparedJob, secrets: dict[str, str], script: str, uploads: Mapping[str, bytes] | None = None
    ) -> None:
        t = self.transport(job.host.name)
        launcher = self.launcher(job.host.name, job.spec.launcher)
        try:
            await t.mkdir(f"{job.job_dir}/{OUTPUTS}")
            await t.write_file(job.path(ENV_FILE), render_env({**job.env, **secrets}).encode(), 0o600)
            await t.write_file(job.path(JOB_JSON), render_job_json(job).encode(), 0o644)
            if job.spec.payload:
                for mod in shipped_files(job.spec.payload):  # the payload and what it imports beside it
                    await t.write_file(job.path(f"{mod}.py"), self._payload_source(mod), 0o644)
            for name, data in (uploads or {}).items():
                await t.write_file(job.path(name), data, 0o644)
            await t.write_file(job.path(RUN_SH), script.encode(), 0o700)
        except OpsError as e:
            self._fail(job.job_id, f"the job directory could not be written: {e.message}")
            raise
        rec = self.catalog.update(job.job_id, phase="launched")
        if rec is not None and rec.cancel_requested:
            await t.write_file(job.path("cancel_requested"), b"", 0o644)
        try:
            pid = await launcher.start(t, job)
        except OpsError as e:
            obs = await self._observe(job.host.name, [self._ref(self._record(job.job_id))], job.spec.launcher)
            o = obs.get(job.job_id) if obs else None
            if o is None or (o.native_id is None and o.exit_code is None):
                self._fail(job.job_id, f"the job did not start: {e.message}")
                raise
            log.warning("start of %s reported %s, but the host shows it started", job.job_id, e)
            return
        now = self._clock()
        if getattr(launcher, "queues_jobs", False):  # SLURM: queued until the scheduler runs it (observe says)
            self.catalog.update(job.job_id, expect_state=JobState.QUEUED, native_id=pid)
            return
        self.catalog.update(
            job.job_id, expect_state=JobState.QUEUED, native_id=pid, state=JobState.RUNNING, started_at=now
        )

    def _fail(self, job_id: str, reason: str) -> None:
        now = self._clock()
        self.catalog.update(job_id, expect_state=JobState.QUEUED, state=JobState.FAILED, reason=reason, ended_at=now)

    # -- observing ----------------------------------------------------------------------
    @staticmethod
    def _ref(rec: JobRecord) -> JobRef:
        return JobRef(rec.job_id, rec.token, rec.job_dir, rec.native_id)

    async def _observe(
        self, host: str, refs: list[JobRef], override: str | None = None
    ) -> dict[str, Observation] | None:
        try:
            return await self.launcher(host, override).observe(self.transport(host), refs)
        except OpsError as e:
            log.warning("cannot read job states on %s: %s", host, e)
            return None

    async def refresh(self, recs: Iterable[JobRecord]) -> tuple[list[JobRecord], dict[str, str]]:
        """Reconcile ``recs`` with their hosts (one round trip per host); returns new records and
        a note per host that could not be asked."""
        by_host: dict[tuple[str, str | None], list[JobRecord]] = defaultdict(list)
        order: list[str] = []
        fresh: dict[str, JobRecord] = {}
        for r in recs:
            order.append(r.job_id)
            fresh[r.job_id] = r
            if r.state in ACTIVE or r.state is JobState.LOST:
                by_host[(r.host, self._override(r))].append(r)  # one round trip per host and launcher
        notes: dict[str, str] = {}

        async def one(key: tuple[str, str | None], items: list[JobRecord]) -> None:
            host, override = key
            if host not in self.config.hosts:
                notes[host] = f"host {host!r} is no longer in the configuration"
                return
            obs = await self._observe(host, [self._ref(r) for r in items], override)
            if obs is None:
                notes[host] = f"host {host!r} did not answer"
                return
            for r in items:
                fresh[r.job_id] = self._apply(r, obs.get(r.job_id))

        await asyncio.gather(*(one(k, items) for k, items in by_host.items()))
        return [fresh[j] for j in order], notes

    def _apply(self, rec: JobRecord, obs: Observation | None) -> JobRecord:
        now = self._clock()
        out = reconcile(rec, obs, now, start_grace_s=self.start_grace_s)
        if not out.changed:
            return rec
        changes: dict[str, object] = {
            "state": out.state,
            "exit_code": out.exit_code,
            "reason": out.reason,
            "native_id": out.native_id,
        }
        if out.state in (JobState.RUNNING, JobState.READY) and rec.started_at is None:
            changes["started_at"] = now
        if out.state in TERMINAL and rec.ended_at is None:
            changes["ended_at"] = now
            if rec.started_at is None:
                changes["started_at"] = rec.created_at
        if out.state is JobState.CANCELLED:
            changes["cancel_requested"] = True
        new = self.catalog.update(rec.job_id, expect_state=rec.state, **changes)
        if new is None:  # another process moved it first: take what it wrote
            new = self.catalog.get(rec.job_id) or rec
        elif new.state != rec.state:
            log.info("job %s: %s -> %s (%s)", rec.job_id, rec.state.value, new.state.value, new.reason or "")
        return new

    async def status(self, job_id: str, *, with_details: bool = True) -> JobView:
        """The job's state, reconciled with its host now; with details: metrics, progress, error excerpt."""
        await self.ensure_started()
        rec = self._record(job_id)
        (rec,), notes = await self.refresh([rec])
        extra: dict[str, object] = {}
        if rec.host in notes:
            extra.update(stale=True, note=notes[rec.host])
        elif with_details:
            extra.update(await self._details(rec))
        return job_view(rec, self._clock(), **extra)

    async def _details(self, rec: JobRecord) -> dict[str, object]:
        t = self.transport(rec.host)
        out: dict[str, object] = {}
        try:
            last = await read_last_metrics(t, f"{rec.job_dir}/{METRICS}")
            if last:
                elapsed = ((rec.ended_at or self._clock()) - rec.started_at) if rec.started_at else None
                pct, eta = progress_from(last[-1], elapsed)
                out.update(metrics=last[-1], progress_percent=pct, eta_s=None if rec.state.terminal else eta)
            if rec.state in (JobState.FAILED, JobState.LOST):
                redact = await self._redactor(rec)
                out["error"] = await diagnose_job(t, rec.job_dir, rec.exit_code, last[-1] if last else None, redact)
        except HostError as e:
            out["note"] = f"details unavailable: {e.message}"
        return out

    async def _redactor(self, rec: JobRecord) -> Callable[[str], str]:
        return await self._secrets.redactor(self.config, rec, self.transport)

    async def list_jobs(
        self, *, state: JobState | None = None, kind: str | None = None, host: str | None = None, limit: int = 50
    ) -> list[JobView]:
        """Newest first; active jobs among them are reconciled with their hosts first."""
        await self.ensure_started()
        recs = self.catalog.list(states=[state] if state else None, kind=kind, host=host, limit=limit)
        if any(r.state in ACTIVE for r in recs):
            recs, notes = await self.refresh(recs)
        else:
            notes = {}
        now = self._clock()
        views = []
        for r in recs:
            if state is not None and r.state != state:
                continue  # it moved on while we looked
            extra = {"stale": True, "note": notes[r.host]} if r.host in notes and r.state in ACTIVE else {}
            views.append(job_view(r, now, **extra))
        return views

    # -- logs ---------------------------------------------------------------------------
    async def read_log(
        self,
        job_id: str,
        *,
        offset: int | None = None,
        max_bytes: int = 65536,
        tail_lines: int = 200,
        grep: str | None = None,
    ) -> LogChunk:
        """A redacted slice of the job's output.log: the tail, or from ``offset`` on."""
        rec = self._record(job_id)
        if offset is not None and offset < 0:
            raise InvalidInput(f"offset {offset} is negative.", "Use 0, a next_offset, or omit it for the tail.")
        if max_bytes <= 0:
            raise InvalidInput(f"max_bytes {max_bytes} must be positive.", "Use up to 1048576.")
        rx = None
        if grep:
            try:
                rx = re.compile(grep)
            except re.error as e:
                raise InvalidInput(
                    f"grep {grep!r} is not a valid regular expression ({e}).",
                    "Escape special characters or use a plain word.",
                ) from e
        return await read_log(
            self.transport(rec.host),
            f"{rec.job_dir}/{LOG}",
            offset=offset,
            max_bytes=max_bytes,
            tail_lines=tail_lines,
            redact=await self._redactor(rec),
            grep=rx,
        )

    # -- wait / cancel ------------------------------------------------------------------
    async def wait(
        self, job_id: str, until: WaitUntil = "finished", timeout_s: float = 60.0, progress: ProgressFn | None = None
    ) -> tuple[JobView, bool]:
        """Wait until the job reaches ``until`` or ``timeout_s`` passes; returns (view, reached)."""
        rec = self._record(job_id)
        if until == "ready" and rec.kind != "serve":
            raise InvalidInput(
                f"until='ready' applies to serve jobs; {job_id} is a {rec.kind} job.",
                "Use until='running' or until='finished'.",
            )
        start = time.monotonic()
        deadline = start + timeout_s
        delay = 0.1
        while True:
            view = await self.status(job_id, with_details=False)
            if self._reached(view.state, until) or view.terminal:
                break
            now = time.monotonic()
            if now >= deadline:
                return await self.status(job_id), False
            if progress is not None:
                m = await self._progress_point(view, now - start, timeout_s)
                await progress(*m)
            await self._pause(view, until, min(delay, max(0.0, deadline - now)))
            delay = min(delay * 1.5, 2.0)
        view = await self.status(job_id)
        if progress is not None:
            await progress(*(await self._progress_point(view, time.monotonic() - start, timeout_s)))
        return view, self._reached(view.state, until)

    async def _pause(self, view: JobView, until: WaitUntil, seconds: float) -> None:
        """Sleep ``seconds`` between two status polls; waiting for ``ready``, look for the serve payload's
        ready marker every READY_POLL_S meanwhile and end the pause as soon as it is there.

        Why: status polls back off to 2 s (each one is a launcher round trip, squeue on SLURM), so a
        server that became ready was seen up to 2 s late, most of the time to ready that
        start_vllm_server added to a bare ``vllm serve`` (bench/workflow_gpu.py ready-time). The
        marker is one small file read, the same on every transport.
        """
        if until != "ready":
            await asyncio.sleep(seconds)
            return
        t = self.transport(view.host)
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            await asyncio.sleep(min(READY_POLL_S, left))
            try:
                if await t.read_range(f"{view.job_dir}/{READY_MARK}", 0, 64):
                    return
            except HostError:
                return  # the next status poll reports the host's trouble

    @staticmethod
    def _reached(state: JobState, until: WaitUntil) -> bool:
        if until == "finished":
            return state.terminal
        if until == "running":
            return state in (JobState.RUNNING, JobState.READY)
        return state is JobState.READY

    async def _progress_point(self, view: JobView, elapsed: float, timeout_s: float) -> tuple[float, float | None, str]:
        try:
            last = await read_last_metrics(self.transport(view.host), f"{view.job_dir}/{METRICS}")
        except HostError:
            last = []
        m = last[-1] if last else {}
        step, total = m.get("step"), m.get("total_steps", m.get("max_steps"))
        msg = f"{view.job_id}: {view.state.value}"
        if isinstance(step, int | float) and isinstance(total, int | float) and total > 0:
            loss = f", loss {m['loss']:.4g}" if isinstance(m.get("loss"), int | float) else ""
            return float(step), float(total), f"{msg}, step {step}/{total}{loss}"
        return round(elapsed, 2), float(timeout_s), f"{msg}, waited {elapsed:.0f} s"

    async def cancel(self, job_id: str, grace_s: float | None = None) -> JobView:
        """SIGTERM to the job's whole process group, SIGKILL after ``grace_s``; returns the new status."""
        rec = self._record(job_id)
        (rec,), _ = await self.refresh([rec])
        if rec.state.terminal and rec.state is not JobState.LOST:
            view = await self.status(job_id)
            view.summary = f"Job {job_id} had already finished ({rec.state.value}); nothing to cancel."
            view.next_action = None
            return view
        self.catalog.update(job_id, cancel_requested=True)
        if rec.phase == "launched" or rec.native_id is not None:
            grace = self.cancel_grace_s if grace_s is None else grace_s
            launcher = self.launcher(rec.host, self._override(rec))
            what = await launcher.cancel(self.transport(rec.host), self._ref(rec), grace)
            log.info("cancel %s: %s", job_id, what)
        else:  # the submit has not written the directory yet; it will see cancel_requested
            self.catalog.update(
                job_id,
                expect_state=JobState.QUEUED,
                state=JobState.CANCELLED,
                reason="cancelled before it started",
                ended_at=self._clock(),
            )
        return await self.status(job_id)

    async def aclose(self) -> None:
        for t in self._transports.values():
            await t.aclose()
        self._transports.clear()
        self.catalog.close()
