"""Finding a server job from the controller: its URL, its API key, the names it serves.

One home for what query_model (tools/serve/client.py) and benchmark_server
(tools/serve/bench.py) both need before they send a request: the job must be a ready
server; :class:`~tools.serve.runtime.ServeRuntime` gives a URL reachable from here (an SSH
forward or the login node's tunnel for remote hosts) and the API key from the job's env
file; neither the key nor the tunnel is part of any result.
"""

from __future__ import annotations

import contextlib
import json

from runners.engine import JobEngine
from runners.errors import Conflict, HostError, InvalidInput
from runners.spec import JOB_ID_RE
from runners.states import JobState
from tools.serve.runtime import ServeRuntime

__all__ = ["JOB_ID_PATTERN", "served_model", "server_connection"]

JOB_ID_PATTERN = JOB_ID_RE.pattern  # the engine's own job-id rule, as a field pattern


async def server_connection(engine: JobEngine, runtime: ServeRuntime, job_id: str) -> tuple[str, str | None, list[str]]:
    """(base URL reachable from here, API key or None, served names) of a ready or running server job."""
    view = await engine.status(job_id, with_details=True)
    if view.kind != "serve":
        raise InvalidInput(f"Job {job_id} is a {view.kind} job, not a server.", "Give a start_vllm_server job_id.")
    if view.terminal:
        err = view.error.line if view.error else view.reason
        m = view.metrics or {}
        if m.get("event") == "error" and m.get("hint"):
            raise Conflict(f"Server job {job_id} is {view.state.value}: {m.get('message') or err}.", str(m["hint"]))
        raise Conflict(
            f"Server job {job_id} is {view.state.value}" + (f": {err}." if err else "."),
            "Start it again with start_vllm_server (get_job_logs shows vLLM's output).",
        )
    if view.state is not JobState.READY:
        raise Conflict(
            f"Server job {job_id} is {view.state.value}, not ready yet.",
            f"wait_for_job(job_id='{job_id}', until='ready') first.",
        )
    host = engine.config.host(view.host)
    doc = await runtime.endpoint_doc(view.host, view.job_dir)
    if doc is None or not isinstance(doc.get("port"), int):
        raise HostError(f"Server job {job_id} has no endpoint.json yet.", "Wait a moment and retry.")
    bind = str(doc.get("bind") or "127.0.0.1")
    node = str(doc.get("host")) if host.launcher == "slurm" else ("127.0.0.1" if bind in ("0.0.0.0", "::") else bind)
    url = await runtime.url_for(host, node, int(doc["port"]))
    rec = engine.catalog.get(job_id)
    mode = "auto"
    if rec is not None:
        with contextlib.suppress(ValueError):
            mode = str(json.loads(rec.spec_json).get("payload_config", {}).get("api_key", "auto"))
    key = None
    if mode == "auto":
        key = await runtime.api_key(view.host, job_id, view.job_dir)
    elif mode.startswith("env:"):
        key = await runtime.api_key(view.host, job_id, view.job_dir, name=mode[4:])
    names = [str(n) for n in doc.get("served_names") or []]
    return url, key, names


def served_model(names: list[str], requested: str | None, server_job_id: str) -> str:
    """The model name to send: the one asked for if the server serves it, else the server's first."""
    model = requested or (names[0] if names else None)
    if model is None:
        raise InvalidInput("The server lists no model names.", "Pass model=... explicitly.")
    if names and model not in names:
        raise InvalidInput(f"{model!r} is not served by {server_job_id}.", f"Use one of: {', '.join(names)}.")
    return model
