"""Secrets never leave the engine: which values a job's text may contain, and the redactor over them.

A job's log and its failure record can print any secret the job could see, so before
the engine returns text it replaces every such value with ``[REDACTED:NAME]`` (and the
shapes of well-known tokens, ``hf_...``, ``sk-...``, whatever their name). The values
come from three places, gathered by :class:`JobSecrets`:

* the secrets the host and the job declare, read from the controller's environment now;
* for a local job, what it inherits from the server's own environment: every host's
  declared secrets and every variable whose name says it is one (``*TOKEN*``, ``*KEY*``);
* the job's own 0600 env file on the host, which also holds secrets a payload made
  there (a serve job's generated ``VLLM_API_KEY``) that the controller never saw.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Mapping

from runners.config import Config, HostConfig
from runners.errors import HostError
from runners.jobdir import ENV_FILE, parse_env
from runners.store import JobRecord
from runners.transports.base import Transport

__all__ = ["HOST_MADE_SECRETS", "JobSecrets", "make_redactor"]

# Secrets a payload may create on the host and append to the job's env file (never seen by the controller).
HOST_MADE_SECRETS = frozenset({"VLLM_API_KEY"})

_SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|CREDENTIAL|APIKEY|(?:^|_)KEY(?:$|_)", re.IGNORECASE)
_TOKEN_SHAPES = [("hf_", re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")), ("sk-", re.compile(r"\bsk-[A-Za-z0-9_-]{20,}\b"))]


def make_redactor(secrets: Mapping[str, str]) -> Callable[[str], str]:
    """A function that replaces each secret value with ``[REDACTED:NAME]`` (and token shapes)."""
    pairs = sorted(((v, k) for k, v in secrets.items() if v and len(v) >= 4), key=lambda p: -len(p[0]))

    def redact(text: str) -> str:
        for value, name in pairs:
            if value in text:
                text = text.replace(value, f"[REDACTED:{name}]")
        for prefix, rx in _TOKEN_SHAPES:
            if prefix in text:  # a substring test is far cheaper than the regex on 64 KiB
                text = rx.sub("[REDACTED]", text)
        return text

    return redact


class JobSecrets:
    """The secret values of the controller's environment and of each job's env file (cached per job).

    One per engine. The config is passed on each call because the server may swap the
    engine's config (an overlay refresh) while the engine lives.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = environ
        self._env_files: dict[str, dict[str, str]] = {}

    def env(self) -> Mapping[str, str]:
        """The controller environment secrets are read from (injectable for tests)."""
        return self._environ if self._environ is not None else os.environ

    def values(self, host: HostConfig, names: Iterable[str]) -> dict[str, str]:
        """The host's declared secrets and ``names``, as the controller's environment holds them now."""
        values = host.secret_values(dict(self._environ) if self._environ is not None else None)
        src = self.env()
        for n in names:
            if n in src:
                values[n] = src[n]
        return values

    async def redactor(
        self, config: Config, rec: JobRecord, transport: Callable[[str], Transport]
    ) -> Callable[[str], str]:
        """The redactor for ``rec``'s text; ``transport`` gives the host's transport by name."""
        host = config.hosts.get(rec.host)
        try:
            names = json.loads(rec.spec_json).get("secrets", [])
        except ValueError:
            names = []
        values = self.values(host, names) if host else {}
        if host is None or host.transport == "local":
            values.update(self._inherited(config))
        values.update(await self._env_file(transport, rec, {*names, *(host.secrets if host else ())}))
        return make_redactor(values)

    async def _env_file(self, transport: Callable[[str], Transport], rec: JobRecord, names: set[str]) -> dict[str, str]:
        """Secrets as the job's own 0600 env file holds them, including ones made on the host
        (a serve payload's generated VLLM_API_KEY), which the controller never saw."""
        cached = self._env_files.get(rec.job_id)
        if cached is not None:
            return cached
        wanted = names | HOST_MADE_SECRETS
        try:
            data = await transport(rec.host).read_range(f"{rec.job_dir}/{ENV_FILE}", 0, 1 << 20)
        except HostError:
            return {}
        found = {k: v for k, v in parse_env(data.decode("utf-8", errors="replace")).items() if k in wanted and v}
        if rec.state.terminal or set(found) >= HOST_MADE_SECRETS or rec.kind != "serve":
            self._env_files[rec.job_id] = found  # nothing more will be appended
        return found

    def _inherited(self, config: Config) -> dict[str, str]:
        """What a local job inherits from the server's own environment and may print: the secrets any host
        declares, and every variable whose name says it is one (``*TOKEN*``, ``*KEY*``...)."""
        env = self.env()
        names = {n for h in config.hosts.values() for n in h.secrets}
        out = {n: env[n] for n in names if env.get(n)}
        out.update({k: v for k, v in env.items() if _SECRET_NAME.search(k) and len(v) >= 8})
        return out
