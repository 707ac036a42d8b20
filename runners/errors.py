"""The project's one error hierarchy.

Every failure an agent can see is an :class:`OpsError` with a stable ``code``, a
one-sentence ``message`` saying what went wrong and a ``fix`` saying what to do
next. Lower layers (subprocess, asyncssh, SLURM, pydantic) are translated into
these in one place each; ``server/registry.py`` is the single bridge to the MCP
tool error. Tracebacks go to the server log (stderr), never to the agent.

Tree::

    OpsError
    ├── InvalidInput          bad arguments the schema could not catch (cross-field rules)
    ├── NotFound              unknown job id, host, model, GPU tier
    ├── ConfigError           the TOML configuration is wrong (names file and key)
    ├── Conflict              the request clashes with current state (port in use, job finished)
    ├── HostError             a host could not be reached or refused us
    │   ├── HostUnreachable
    │   ├── HostKeyError      unknown or changed SSH host key (never bypassed)
    │   ├── AuthError
    │   └── CommandFailed     a remote command exited non-zero
    ├── SchedulerError        SLURM rejected or lost a job
    └── DoesNotFit            the workload cannot fit the memory it was given
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "CommandFailed",
    "ConfigError",
    "Conflict",
    "DoesNotFit",
    "HostError",
    "HostKeyError",
    "HostUnreachable",
    "InvalidInput",
    "NotFound",
    "OpsError",
    "SchedulerError",
]


class OpsError(Exception):
    """Base of every error we show an agent: what happened, and what to do next."""

    code: str = "error"

    def __init__(self, message: str, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message} Fix: {self.fix}"
        return self.message

    def to_dict(self) -> dict[str, str | None]:
        return {"code": self.code, "message": self.message, "fix": self.fix}


class InvalidInput(OpsError):
    code = "invalid_input"


class NotFound(OpsError):
    code = "not_found"


class ConfigError(OpsError):
    code = "config_error"


class Conflict(OpsError):
    code = "conflict"


class HostError(OpsError):
    code = "host_error"


class HostUnreachable(HostError):
    code = "host_unreachable"


class HostKeyError(HostError):
    code = "host_key"


class AuthError(HostError):
    code = "auth_failed"


class CommandFailed(HostError):
    code = "command_failed"


class SchedulerError(OpsError):
    code = "scheduler_error"


class DoesNotFit(OpsError):
    code = "does_not_fit"
