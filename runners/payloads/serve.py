#!/usr/bin/env python
"""Serve payload: runs ``vllm serve`` on the GPU host and decides, *on the host*, when it is ready.

Why a wrapper at all: ``/health`` answers before the model can serve a request, the
controller may be gone (or behind SSH / a login node) while the server starts, and a
start-up failure must show as a failed job with its cause, not as a time-out. So
this script, run by the job engine like any payload (``python serve.py job.json``),

1. picks the port (``auto``) or refuses a busy one at once, writes ``endpoint.json``
   (host name, port) so the controller can build its tunnel to this node;
2. puts the API key into the environment of vLLM only: ``auto`` makes one and
   appends it to the job's 0600 ``env`` file (the controller reads it from there),
   ``env:NAME`` takes it from a secret the engine passed; it is never printed;
3. starts vLLM with its output piped through, scanning each line for the known
   start-up failures (CUDA OOM, KV cache too small, unsupported architecture, port
   in use, model not found...);
4. probes ``/health``, then ``/v1/models`` (every served name listed), then a
   one-token completion; only then it creates the ``ready`` marker the launcher
   reports (the job becomes ``ready``). Afterwards ``/health`` is checked now and
   then; the marker goes away while it fails and comes back when it answers;
5. exits with vLLM's exit code, or with its own code after a diagnosed failure,
   writing the failure record ``{"event": "error", "kind", "message", "hint"}`` to
   metrics.jsonl (job_io, shipped beside this file).

Several nodes (``payload_config["tasks"]`` > 1): ``srun`` runs this script once per SLURM
task. Every task adds ``--node-rank $SLURM_PROCID --master-addr <first node of the
allocation> --master-port <from the job id>`` to vLLM's command; task 0 is the server
described above, every other task adds ``--headless`` (vLLM's workers for its share of
the GPUs, no API), prefixes its output with ``[node N]``, writes no endpoint or marker,
and exits with vLLM's code (srun's ``--kill-on-bad-exit`` then stops the rest).

Stdlib only: it runs in the host's Python, next to vllm.
Exit codes (job_io's table): vLLM's own when it exits by itself with no known cause; 2 bad
settings (a missing API-key secret, a multi-node task outside srun); 3 CUDA out of memory;
4 vLLM is not installed; 7 a flag this vLLM lacks; 8 port in use; 9 start-up time-out;
10 a known start-up failure while vLLM did not exit by itself; 143 stopped (SIGTERM).

Flags (``payload_config["check_flags"]``): on a host whose vLLM the controller has not
seen yet, it cannot check the command's flags without ``vllm serve --help=all``, which
takes 23-33 s on a GPU host — longer than a tool call may block. So this script runs it
here before starting vLLM (:func:`check_flags`), fails the job with kind
``unknown_flag`` (the closest real flags named) when the command uses one this vLLM
lacks or a value outside a flag's choices, and saves the help as ``vllm-help.json`` in
the job directory, where the controller's next call reads and caches it.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:  # beside this file in the job directory; runners.payloads.job_io in the repository
    from . import job_io as jio
except ImportError:
    import job_io as jio  # type: ignore[no-redef]

__all__ = ["FAILURES", "check_flags", "classify_line", "help_flags", "main"]

HELP_FILE = "vllm-help.json"  # the controller reads it to learn this host's flags (tools/serve/host.py)
HELP_TIMEOUT_S = 300.0
FATAL_GRACE_S = 20.0  # after a fatal line, how long vLLM may take to exit by itself ($LLM_OPS_SERVE_FATAL_GRACE_S)
UNHEALTHY_AFTER = 3  # failed health checks in a row before the ready marker goes
READY_PROBE_S = 0.2  # seconds between readiness probes until the server is ready

# (kind, pattern, hint). Order matters: the first match of a line wins, and the most
# specific causes come first. Hints name the start_vllm_server parameter to change.
FAILURES: list[tuple[str, re.Pattern[str], str]] = [
    (
        "kv_cache_too_small",
        re.compile(
            r"larger than the available KV cache memory|No available memory for the cache blocks|"
            r"is larger than the maximum number of tokens that can be stored in KV cache"
        ),
        "The weights fit but too little memory is left for the KV cache: lower max_model_len (the log gives "
        "an estimated maximum), raise gpu_memory_utilization, use kv_cache_dtype='fp8', or more GPUs "
        "(tensor_parallel_size).",
    ),
    (
        "cuda_oom",
        re.compile(
            r"CUDA out of memory|torch\.OutOfMemoryError|OutOfMemoryError: CUDA|CUDA error: out of memory|"
            r"CUBLAS_STATUS_ALLOC_FAILED"
        ),
        "The GPU ran out of memory while loading or profiling: use more GPUs (tensor_parallel_size), a "
        "quantization (fp8 on Hopper/Ada, else bitsandbytes), a smaller max_model_len or max_num_seqs, or check "
        "that no other process holds the GPU (nvidia-smi).",
    ),
    (
        "port_in_use",
        re.compile(r"^(?!.*Retrying).*(?:Address already in use|\[Errno 98\])"),
        "The port is taken on the host: use port='auto', or stop what listens there.",
    ),
    (
        "unsupported_architecture",
        re.compile(
            r"Model architectures? .* (?:are|is) not supported|are failed to be inspected|"
            r"is not supported in-tree anymore"
        ),
        "This vLLM does not support the model's architecture: upgrade vLLM on the host, or serve a supported "
        "model (vLLM's docs list them).",
    ),
    (
        "trust_remote_code",
        re.compile(r"trust_remote_code=True|requires you to execute the configuration file"),
        "The model ships its own code: pass extra_args={'trust_remote_code': true} if you trust it.",
    ),
    (
        "model_not_found",
        re.compile(
            r"Repository Not Found|is not a local folder and is not a valid model identifier|"
            r"401 Client Error|GatedRepoError|Cannot access gated repo|We couldn't connect to|"
            r"LocalEntryNotFoundError|offline mode is enabled"
        ),
        "The model could not be found or downloaded on the host: check the id or path, set HF_TOKEN (host "
        "secrets) for gated models, or download it first (HF_HUB_OFFLINE hosts need it in HF_HOME).",
    ),
    (
        "max_model_len_too_long",
        re.compile(
            r"max_model_len.* is greater than the derived max_model_len|"
            r"User-specified max_model_len .* is greater than"
        ),
        "max_model_len exceeds the model's context: lower it, or leave max_model_len='auto'.",
    ),
    (
        "quantization_unsupported",
        re.compile(
            r"quantization method .* is not supported for the current GPU|"
            r"Unknown quantization method|bitsandbytes.* (?:not installed|is required)"
        ),
        "This quantization can't run on this GPU or install: choose another (fp8 needs compute capability "
        ">= 8.9) or install its package on the host.",
    ),
    (
        "dtype_unsupported",
        re.compile(r"Bfloat16 is only supported on GPUs with compute capability"),
        "The GPU has no bfloat16: pass dtype='float16'.",
    ),
    (
        "no_gpu",
        re.compile(
            r"No CUDA GPUs are available|Failed to infer device type|CUDA driver initialization failed|"
            r"Found no NVIDIA driver"
        ),
        "vLLM found no usable GPU: check nvidia-smi on the host and CUDA_VISIBLE_DEVICES (gpus parameter).",
    ),
    (
        "nccl",
        re.compile(r"NCCL error|ncclSystemError|ncclInternalError|ncclUnhandledCudaError"),
        "Multi-GPU start failed in NCCL: check that every GPU is visible and healthy; try NCCL_P2P_DISABLE=1 "
        "in the host's env on PCIe machines.",
    ),
    (
        "missing_vllm",
        re.compile(r"No module named '?vllm'?(?:\.|\s|$)|vllm: command not found"),
        "vLLM is not installed in the host's interpreter: install it there (pip install vllm), or set the "
        "host's `python` to an environment that has it.",
    ),
]
_FATAL_KINDS = {"kv_cache_too_small", "cuda_oom", "port_in_use", "unsupported_architecture", "missing_vllm"}


def classify_line(line: str) -> tuple[str, str] | None:
    """(kind, hint) of a known start-up failure shown by this log line, or None."""
    for kind, rx, hint in FAILURES:
        if rx.search(line):
            return kind, hint
    return None


def _split_invocation(inv: str) -> list[str]:
    """``--a A, -b B`` -> ['--a A', '-b B'], keeping commas inside ``{...}`` and ``[...]`` choices."""
    parts, depth, cur = [], 0, ""
    for ch in inv:
        depth += 1 if ch in "{[" else -1 if ch in "}]" else 0
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    return [*parts, cur.strip()] if cur.strip() else parts


def help_flags(text: str) -> dict[str, list[str] | None]:
    """Every long option of an argparse ``--help`` text: name -> its choices (None: free value or switch).

    A stdlib twin of tools/serve/flags.py ``parse_help`` (this script runs in the host's Python).
    """
    flags: dict[str, list[str] | None] = {}
    for raw in text.splitlines():
        if not raw.startswith("  -"):
            continue
        inv = re.split(r"\s{2,}", raw.strip(), maxsplit=1)[0]
        for part in _split_invocation(inv):
            m = re.match(r"^--([A-Za-z0-9][A-Za-z0-9_.-]*)(?:[ =](.+))?$", part)
            if not m:
                continue
            meta, choices = m.group(2), None
            if meta and meta.startswith("{") and "}" in meta:
                choices = [c.strip() for c in meta[1 : meta.index("}")].split(",") if c.strip()]
            elif meta and meta.startswith("['") and meta.endswith("]"):
                choices = [c.strip().strip("'") for c in meta[1:-1].split(",") if c.strip()]
            flags[m.group(1)] = choices
    return flags


def check_flags(cmd: list[str], job_dir: Path, version: str | None) -> tuple[str, str] | None:
    """Run ``<vllm> serve --help=all`` here, save it to HELP_FILE, and check every ``--flag`` of ``cmd``.

    Returns (message, hint) for the first flag this vLLM lacks (or a value outside its
    choices, or a help that fails), None when all are known.
    """
    help_cmd = [cmd[0], "serve", "--help=all"]
    print(f"[llm-ops] checking the command's flags against {shlex.join(help_cmd)}", flush=True)
    try:
        res = subprocess.run(
            help_cmd, capture_output=True, text=True, timeout=HELP_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False
        )
        rc, out, err = res.returncode, res.stdout, res.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        rc, out, err = -1, "", str(e)
    _touch_atomic(
        job_dir / HELP_FILE, json.dumps({"version": version, "command": help_cmd, "rc": rc, "text": out}) + "\n"
    )
    known = help_flags(out) if rc == 0 else {}
    if rc != 0 or len(known) < 20:
        tail = " | ".join(err.strip().splitlines()[-2:]) or "no error output"
        return (
            f"`{shlex.join(help_cmd)}` failed (exit {rc}): {tail}",
            "vLLM is installed but does not start: run that command on the host to see why.",
        )
    start = cmd.index("serve") + 1 if "serve" in cmd else 1
    for i in range(start, len(cmd)):
        tok = cmd[i]
        if not tok.startswith("--"):
            continue
        name = tok[2:].split("=", 1)[0].split(".", 1)[0]
        base = name[3:] if name.startswith("no-") and name[3:] in known and name not in known else name
        if base not in known:
            import difflib

            close = difflib.get_close_matches(base, list(known), n=3, cutoff=0.6)
            return (
                f"vLLM {version or '(version unknown)'} on this host has no flag --{base}",
                (f"Did you mean {', '.join('--' + c for c in close)}? " if close else "")
                + "Fix extra_args (or the typed setting) and start the server again.",
            )
        choices = known[base]
        value = tok.split("=", 1)[1] if "=" in tok else (cmd[i + 1] if i + 1 < len(cmd) else None)
        if choices and base == name and value is not None and not value.startswith("--") and value not in choices:
            return (
                f"--{base} {value!r} is not accepted by vLLM {version or '(version unknown)'} on this host",
                f"Use one of: {', '.join(choices)}.",
            )
    return None


def _touch_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _free_port(bind: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((bind, 0))
        return int(s.getsockname()[1])


def _port_busy(bind: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError:
            return True
    return False


def _append_secret(env_file: Path, name: str, value: str) -> None:
    """Add ``export NAME=value`` to the job's 0600 env file (atomically, keeping its mode)."""
    old = env_file.read_text(encoding="utf-8") if env_file.exists() else ""
    lines = [ln for ln in old.splitlines() if not ln.startswith(f"export {name}=")]
    lines.append(f"export {name}={shlex.quote(value)}")
    tmp = env_file.with_name(env_file.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, env_file)


def _http(url: str, key: str | None, body: dict[str, Any] | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if body is not None else "GET")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            try:
                return r.status, json.loads(raw) if raw else None
            except ValueError:
                return r.status, None
    except urllib.error.HTTPError as e:
        return e.code, None
    except (urllib.error.URLError, OSError, TimeoutError):
        return 0, None


def probe(base: str, key: str | None, names: list[str], probe_model: str) -> tuple[bool, str]:
    """(ready, what is missing): /health, then /v1/models lists ``names``, then a one-token completion."""
    code, _ = _http(f"{base}/health", None)
    if code != 200:
        return False, "health"
    code, doc = _http(f"{base}/v1/models", key)
    if code != 200 or not isinstance(doc, dict):
        return False, f"models (HTTP {code})"
    listed = {m.get("id") for m in doc.get("data", []) if isinstance(m, dict)}
    missing = [n for n in names if n not in listed]
    if missing:
        return False, f"models (not yet listed: {', '.join(missing)})"
    body = {"model": probe_model, "prompt": "Hello", "max_tokens": 1, "temperature": 0.0}
    code, doc = _http(f"{base}/v1/completions", key, body, timeout=120.0)
    if code != 200 or not isinstance(doc, dict) or not doc.get("choices"):
        return False, f"completion (HTTP {code})"
    return True, ""


def _resolve_program(argv: list[str]) -> list[str]:
    """``vllm`` next to this interpreter beats the one on PATH (the host's venv may not be on PATH)."""
    if argv and argv[0] == "vllm":
        here = Path(sys.executable).parent / "vllm"
        if here.exists():
            return [str(here), *argv[1:]]
    return argv


MASTER_PORT_BASE, MASTER_PORT_SPAN = 40000, 20000  # vLLM's --master-port = base + SLURM_JOB_ID % span


def _first_node(nodelist: str) -> str:
    """The allocation's first host (``scontrol show hostnames`` expands ``gpu[01-04]``)."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, timeout=30, check=False
        ).stdout.split()
    except (OSError, subprocess.TimeoutExpired):
        out = []
    return out[0] if out else ""


def multinode_args(tasks: int, env: dict[str, str]) -> tuple[int, list[str]]:
    """(this task's node rank, the flags it adds to ``vllm serve``) for a server over ``tasks`` processes.

    Raises RuntimeError (the job fails with it) when not run under srun inside an allocation.
    """
    rank = env.get("SLURM_PROCID", "")
    if not rank.isdigit():
        raise RuntimeError("a multi-node server must run under srun (SLURM_PROCID is not set)")
    head = _first_node(env.get("SLURM_JOB_NODELIST", ""))
    if not head:
        raise RuntimeError(f"cannot read the allocation's first node from {env.get('SLURM_JOB_NODELIST')!r}")
    port = MASTER_PORT_BASE + int(env.get("SLURM_JOB_ID", "0") or 0) % MASTER_PORT_SPAN
    flags = ["--node-rank", rank, "--master-addr", head, "--master-port", str(port)]
    if int(rank) > 0:
        flags.append("--headless")
    if int(rank) >= tasks:
        raise RuntimeError(f"SLURM task {rank} but the server has {tasks} processes")
    return int(rank), flags


def run_headless(cmd: list[str], env: dict[str, str], job_dir: Path, rank: int, metrics: jio.Metrics) -> int:
    """A non-head task: vLLM's workers for this node's GPUs, output prefixed, vLLM's exit code returned."""
    print(f"[node {rank}] [llm-ops] starting headless on {socket.gethostname()}: {shlex.join(cmd)}", flush=True)
    try:
        child = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(job_dir)
        )
    except OSError as e:
        message = f"node {rank}: cannot start {cmd[0]}: {e.strerror}"
        metrics.write(jio.error_row("missing_vllm", message, hint=FAILURES[-1][2]))
        return jio.EXIT_MISSING_DEPENDENCY

    def on_term(signum: int, _frame: Any) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    assert child.stdout is not None
    reported = False
    for raw in iter(child.stdout.readline, b""):
        line = raw.decode("utf-8", errors="replace")
        sys.stdout.write(f"[node {rank}] {line}")
        sys.stdout.flush()
        hit = None if reported else classify_line(line)
        if hit and hit[0] in _FATAL_KINDS:
            reported = True
            metrics.write(jio.error_row(hit[0], f"node {rank}: {line.strip()[:480]}", hint=hit[1]))
    rc = child.wait()
    if rc not in (0, -signal.SIGTERM, 143):
        print(f"[node {rank}] [llm-ops] vLLM exited with code {rc}", flush=True)
    return rc if rc >= 0 else 128 - rc


@dataclass
class ServeJob:
    """What every part of a serve run reports through: the job directory, its metrics, the ready
    marker, and the clock the start-up time-out counts from (the payload's start)."""

    job_dir: Path
    metrics: jio.Metrics
    t0: float = field(default_factory=time.monotonic)

    @property
    def ready_mark(self) -> Path:
        return self.job_dir / "ready"

    def fail(self, kind: str, message: str, hint: str, code: int) -> int:
        """Drop the ready marker, write the failure record and say why in the log; returns ``code``."""
        self.ready_mark.unlink(missing_ok=True)
        self.metrics.write(jio.error_row(kind, message[:500], hint=hint))
        print(f"[llm-ops] serve failed ({kind}): {message[:300]}\n[llm-ops] hint: {hint}", flush=True)
        return code

    def fail_with(self, exc: jio.Failure) -> int:
        return self.fail(exc.kind, str(exc), exc.hint or "", exc.code)


@dataclass(frozen=True)
class Target:
    """Where the server answers and what readiness asks of it."""

    base: str
    port: int
    key: str | None
    names: list[str]
    probe_model: str


def main(argv: list[str]) -> int:
    """Read job.json, then run this task's part: the server (task 0, or the only one) or a headless node."""
    files = jio.job_files(Path(argv[1] if len(argv) > 1 else "job.json"))
    cfg: dict[str, Any] = jio.read_json(files.settings)["payload_config"]
    job = ServeJob(files.job_dir, jio.Metrics(files.metrics, epoch=True))
    tasks = int(cfg.get("tasks") or 1)
    extra: list[str] = []
    if tasks > 1:
        try:
            rank, extra = multinode_args(tasks, dict(os.environ))
        except RuntimeError as e:
            hint = "Start the server through start_vllm_server on a SLURM host."
            return job.fail("multinode", str(e), hint, jio.EXIT_BAD_INPUT)
        if rank > 0:
            return serve_headless(cfg, job, rank, extra)
    return serve_head(cfg, job, extra)


def serve_headless(cfg: dict[str, Any], job: ServeJob, rank: int, extra: list[str]) -> int:
    """A non-head task: no API, no port, no key, no marker; vLLM's workers for this node's GPUs."""
    env = dict(os.environ)
    if str(cfg.get("api_key", "auto")) == "auto":
        env.pop("VLLM_API_KEY", None)  # the API (and its key) live on the head only
    raw = [str(a) for a in cfg["argv"]]
    if "--port" in raw:  # a headless node serves no API: drop the port pair
        i = raw.index("--port")
        del raw[i : i + 2]
    headless = [*_resolve_program(raw), *extra]
    if cfg.get("check_flags"):
        bad = check_flags(headless, job.job_dir, cfg.get("vllm_version"))
        if bad:
            return job.fail("unknown_flag", f"node {rank}: {bad[0]}", bad[1], jio.EXIT_UNKNOWN_FLAG)
    return run_headless(headless, env, job.job_dir, rank, job.metrics)


def serve_head(cfg: dict[str, Any], job: ServeJob, extra: list[str]) -> int:
    """The server: port, flags, API key and endpoint.json, then vLLM started and watched until it exits."""
    job.ready_mark.unlink(missing_ok=True)  # the head's: a headless node never touches it
    bind = str(cfg.get("bind_host") or "127.0.0.1")
    env = dict(os.environ)
    try:
        port = pick_port(bind, cfg.get("port", "auto"))
        cmd = _resolve_program([str(port) if a == "{port}" else str(a) for a in cfg["argv"]]) + extra
        if cfg.get("check_flags"):
            bad = check_flags(cmd, job.job_dir, cfg.get("vllm_version"))
            if bad:
                raise jio.Failure(bad[0], kind="unknown_flag", code=jio.EXIT_UNKNOWN_FLAG, hint=bad[1])
        key = set_api_key(str(cfg.get("api_key", "auto")), env, job.job_dir)
    except jio.Failure as exc:
        return job.fail_with(exc)
    names = [str(n) for n in cfg.get("served_names") or []]
    probe_host = "127.0.0.1" if bind in ("0.0.0.0", "::", "") else bind
    probe_model = str(cfg.get("probe_model") or (names[0] if names else ""))
    target = Target(f"http://{probe_host}:{port}", port, key, names, probe_model)
    endpoint = {"host": socket.gethostname(), "bind": bind, "port": port, "pid": os.getpid()}
    _touch_atomic(
        job.job_dir / "endpoint.json",
        json.dumps({**endpoint, "api_key": key is not None, "served_names": names}) + "\n",
    )
    job.metrics.write({"event": "starting", "port": port, "host": socket.gethostname()})
    print(f"[llm-ops] starting on {socket.gethostname()}:{port}: {shlex.join(cmd)}", flush=True)
    try:
        child = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            cwd=str(job.job_dir),
        )
    except OSError as e:
        message = f"cannot start {cmd[0]}: {e.strerror}"
        if isinstance(e, FileNotFoundError):
            return job.fail("missing_vllm", message, FAILURES[-1][2], jio.EXIT_MISSING_DEPENDENCY)
        return job.fail("start", message, str(e), jio.EXIT_FAILED)
    return Watch(child, job, cfg, target).run()


def pick_port(bind: str, port_cfg: Any) -> int:
    """A free port for ``auto``; else the one asked for, refused at once when it is taken."""
    if port_cfg == "auto":
        return _free_port(bind)
    port = int(port_cfg)
    if _port_busy(bind, port):
        raise jio.Failure(
            f"port {port} on {bind} is already in use on {socket.gethostname()}",
            kind="port_in_use",
            code=jio.EXIT_PORT_IN_USE,
            hint="Use port='auto', or stop what listens there.",
        )
    return port


def set_api_key(mode: str, env: dict[str, str], job_dir: Path) -> str | None:
    """Put the API key into vLLM's environment ``env`` only; returns it (None: no key).

    ``auto`` makes one and appends it to the job's 0600 env file (where the controller reads it),
    ``env:NAME`` takes the secret the engine passed; any other mode serves without a key.
    """
    if mode == "auto":
        key = env.get("VLLM_API_KEY") or secrets.token_urlsafe(32)
        if env.get("VLLM_API_KEY") != key:
            _append_secret(job_dir / "env", "VLLM_API_KEY", key)
        env["VLLM_API_KEY"] = key
        return key
    if mode.startswith("env:"):
        found = env.get(mode[4:])
        if not found:
            raise jio.BadInput(
                f"the secret {mode[4:]} is not in the job's environment",
                kind="api_key_missing",
                hint="Set it where the MCP server runs, or use api_key='auto'.",
            )
        env["VLLM_API_KEY"] = found
        return found
    env.pop("VLLM_API_KEY", None)
    return None


class Watch:
    """A started vLLM until it exits: its output piped through and scanned for fatal lines,
    readiness probed, then health checked now and then, SIGTERM / SIGINT passed on."""

    def __init__(self, child: subprocess.Popen[bytes], job: ServeJob, cfg: dict[str, Any], target: Target) -> None:
        self.child, self.job, self.target = child, job, target
        self.timeout_s = float(cfg.get("startup_timeout_s") or 3600)
        self.fatal_grace = float(os.environ.get("LLM_OPS_SERVE_FATAL_GRACE_S") or FATAL_GRACE_S)
        self.interval = float(cfg.get("health_interval_s") or 5.0)
        self.fatal: list[tuple[str, str, str, float]] = []  # (kind, line, hint, when)
        self.stopping = threading.Event()
        self.ready, self.fails, self.last_probe, self.why = False, 0, 0.0, ""
        self.reader = threading.Thread(target=self.pump, daemon=True)

    def run(self) -> int:
        """Watch until vLLM exits (or the payload stops it); the payload's exit code."""
        self.reader.start()
        signal.signal(signal.SIGTERM, self.on_term)
        signal.signal(signal.SIGINT, self.on_term)
        while self.child.poll() is None:
            code = self.tick(time.monotonic())
            if code is not None:
                return code
            time.sleep(0.1)
        return self.exited()

    def pump(self) -> None:
        """The reader thread: vLLM's output to ours, remembering the first fatal line."""
        assert self.child.stdout is not None
        for raw in iter(self.child.stdout.readline, b""):
            line = raw.decode("utf-8", errors="replace")
            sys.stdout.write(line)
            sys.stdout.flush()
            if not self.fatal:
                hit = classify_line(line)
                if hit and hit[0] in _FATAL_KINDS:
                    self.fatal.append((hit[0], line.strip(), hit[1], time.monotonic()))

    def on_term(self, signum: int, _frame: Any) -> None:
        self.stopping.set()
        if self.child.poll() is None:
            self.child.send_signal(signum)

    def tick(self, now: float) -> int | None:
        """One look while vLLM runs; an exit code when the payload stops it."""
        if self.stopping.is_set():
            time.sleep(0.1)  # with run's 0.1 s: wait for vLLM to exit after the signal
            return None
        if self.fatal and now - self.fatal[0][3] > self.fatal_grace:
            kind, line, hint, _ = self.fatal[0]
            self.stop_child()
            self.reader.join(5)
            return self.job.fail(kind, line, hint, jio.EXIT_OOM if kind == "cuda_oom" else jio.EXIT_DIAGNOSED)
        if not self.ready and now - self.job.t0 > self.timeout_s:
            self.stop_child()
            return self.job.fail(
                "startup_timeout",
                f"not ready after {self.timeout_s:.0f} s (waiting for {self.why or 'health'})",
                "Read the log (get_job_logs); large models take long to download and load.",
                jio.EXIT_STARTUP_TIMEOUT,
            )
        # before ready, probe every READY_PROBE_S: a refused connection costs nothing, and each
        # interval is added to the time to ready (bench/workflow_gpu.py ready-time measures it)
        if now - self.last_probe >= (READY_PROBE_S if not self.ready else self.interval):
            self.last_probe = now
            if not self.ready:
                self.probe_ready()
            else:
                self.check_health()
        return None

    def stop_child(self) -> None:
        self.child.terminate()
        try:
            self.child.wait(15)
        except subprocess.TimeoutExpired:
            self.child.kill()

    def probe_ready(self) -> None:
        t = self.target
        ok, self.why = probe(t.base, t.key, t.names, t.probe_model)
        if ok:
            self.ready = True
            _touch_atomic(self.job.ready_mark, f"{time.time():.3f}\n")
            took = round(time.monotonic() - self.job.t0, 2)
            self.job.metrics.write({"event": "ready", "time_to_ready_s": took, "port": t.port})
            print(f"[llm-ops] ready after {took} s: {', '.join(t.names)} on port {t.port}", flush=True)

    def check_health(self) -> None:
        """The marker goes after UNHEALTHY_AFTER failed checks in a row and comes back at the next answer."""
        code, _ = _http(f"{self.target.base}/health", None)
        if code == 200:
            if self.fails >= UNHEALTHY_AFTER:
                _touch_atomic(self.job.ready_mark, f"{time.time():.3f}\n")
                self.job.metrics.write({"event": "healthy"})
            self.fails = 0
        else:
            self.fails += 1
            if self.fails == UNHEALTHY_AFTER:
                self.job.ready_mark.unlink(missing_ok=True)
                self.job.metrics.write({"event": "unhealthy", "http_status": code})

    def exited(self) -> int:
        """vLLM is gone: stopped, a diagnosed failure, its own error, or a clean stop."""
        self.reader.join(10)
        self.job.ready_mark.unlink(missing_ok=True)
        rc = self.child.returncode
        if self.stopping.is_set():
            self.job.metrics.write({"event": "stopped", "exit_code": rc})
            return jio.EXIT_TERMINATED
        if self.fatal:
            kind, line, hint, _ = self.fatal[0]
            return self.job.fail(kind, line, hint, jio.EXIT_OOM if kind == "cuda_oom" else (rc or jio.EXIT_DIAGNOSED))
        if rc != 0:
            hint = "Read the end of the log (get_job_logs) for the cause."
            self.job.metrics.write(jio.error_row("exit_code", f"vLLM exited with code {rc}", hint=hint))
            return rc if rc > 0 else 128 - rc
        self.job.metrics.write({"event": "stopped", "exit_code": 0})
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
