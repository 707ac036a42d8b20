"""How we touch a host: run an argv, write a file, read a byte range, list a directory.

:class:`Transport` is the protocol every host access goes through; the engine and
the launchers never call ``subprocess`` or ``open`` on a job's files themselves, so
the local transport (``runners/transports/local.py``) and the SSH transport
(``runners/transports/ssh.py``) plug in without touching them. This module holds the
protocol and the values it returns and imports no transport: ``runners/factories.py``
picks a host's transport. Commands are argv lists; nothing from input is ever pasted
into a shell string. A launcher that needs a shell runs a *constant* script with
``bash -c SCRIPT NAME ARG...`` and reads the values from its positional
parameters, so an SSH transport only has to ``shlex.join`` the argv.

Paths are host paths (strings, POSIX). ``expand_path`` resolves ``~`` on the host
it belongs to.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from runners.config import HostConfig
from runners.errors import CommandFailed

__all__ = ["CommandResult", "FileStat", "Transport"]


_TRACEBACK_HEAD = "Traceback (most recent call last):"
_FRAME = re.compile(r'^\s+File ".*", line \d+')


def _without_traceback_frames(lines: list[str]) -> list[str]:
    """Drop a Python traceback's header, frames and their source lines; keep the exception line."""
    out: list[str] = []
    in_frame = False
    for ln in lines:
        if ln.strip() == _TRACEBACK_HEAD or _FRAME.match(ln):
            in_frame = _FRAME.match(ln) is not None
            continue
        if in_frame and ln.startswith("    "):
            continue
        in_frame = False
        out.append(ln)
    return out


@dataclass(frozen=True)
class CommandResult:
    """What a command left behind: exit status and both output streams (bytes)."""

    argv: tuple[str, ...]
    rc: int
    stdout: bytes
    stderr: bytes

    @property
    def out(self) -> str:
        return self.stdout.decode("utf-8", errors="replace")

    @property
    def err(self) -> str:
        return self.stderr.decode("utf-8", errors="replace")

    def check(self, what: str) -> CommandResult:
        """Raise :class:`CommandFailed` naming ``what`` unless rc == 0."""
        if self.rc != 0:
            # The last lines of stderr, without a Python traceback's frames (the exception line says it).
            tail = _without_traceback_frames(self.err.strip().splitlines())[-3:]
            raise CommandFailed(
                f"{what} failed (exit {self.rc}): {' | '.join(tail) or 'no error output'}.",
                "Check the host (disk space, permissions of the workdir) and retry.",
            )
        return self


@dataclass(frozen=True)
class FileStat:
    size: int
    mtime: float
    is_dir: bool
    mode: int


@runtime_checkable
class Transport(Protocol):
    """Access to one host. All methods are async; implementations are safe to share between tasks."""

    host: HostConfig

    async def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 60.0) -> CommandResult:
        """Run ``argv`` (no shell) and return its result; a time-out raises :class:`CommandFailed`."""
        ...

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` atomically; the file is created with ``mode`` (never readable by others first)."""
        ...

    async def read_range(self, path: str, offset: int, max_bytes: int) -> bytes:
        """Up to ``max_bytes`` from ``offset``; cost is O(bytes returned), whatever the file size."""
        ...

    async def stat(self, path: str) -> FileStat | None:
        """The file's size and kind, or None when it does not exist."""
        ...

    async def file_size(self, path: str) -> int | None:
        """Size in bytes, or None when the file does not exist."""
        ...

    async def list_dir(self, path: str) -> list[str]:
        """Entry names (not paths); a missing directory raises :class:`HostError`."""
        ...

    async def exists(self, path: str) -> bool: ...

    async def expand_path(self, path: str) -> str:
        """Absolute host path with ``~`` resolved on that host."""
        ...

    async def mkdir(self, path: str, mode: int = 0o755, parents: bool = True) -> None: ...

    async def remove(self, path: str, recursive: bool = False) -> None: ...

    async def aclose(self) -> None: ...
