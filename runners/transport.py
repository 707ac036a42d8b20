"""How we touch a host: run an argv, write a file, read a byte range, list a directory.

:class:`Transport` is the protocol every host access goes through; the engine and
the launchers never call ``subprocess`` or ``open`` on a job's files themselves, so
the SSH transport (``runners/ssh.py``, class ``SSHTransport(host)``) plugs in
without touching them; ``runners/factories.py`` picks a host's transport, so this
protocol module imports no transport of its own beyond the local one. Commands are argv lists; nothing from input is ever pasted
into a shell string. A launcher that needs a shell runs a *constant* script with
``bash -c SCRIPT NAME ARG...`` and reads the values from its positional
parameters, so an SSH transport only has to ``shlex.join`` the argv.

Paths are host paths (strings, POSIX). ``expand_path`` resolves ``~`` on the host
it belongs to.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import stat as stat_mod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from runners.config import HostConfig
from runners.errors import CommandFailed, HostError

__all__ = ["CommandResult", "FileStat", "LocalTransport", "Transport"]


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


class LocalTransport:
    """This machine: asyncio subprocesses and plain file calls (local files are fast enough inline)."""

    def __init__(self, host: HostConfig) -> None:
        self.host = host

    async def run(self, argv: Sequence[str], *, input: bytes | None = None, timeout: float = 60.0) -> CommandResult:
        args = [str(a) for a in argv]
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except OSError as e:
            raise CommandFailed(f"Cannot start {args[0]!r}: {e.strerror}.", "Is it installed on the host?") from e
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        except TimeoutError as e:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise CommandFailed(f"{args[0]} did not finish within {timeout:g} s.", "The host may be overloaded.") from e
        return CommandResult(tuple(args), proc.returncode if proc.returncode is not None else -1, out, err)

    async def write_file(self, path: str, data: bytes, mode: int = 0o644) -> None:
        tmp = f"{path}.tmp-{os.getpid()}-{id(data):x}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
            try:
                os.fchmod(fd, mode)  # the umask must not widen or narrow what we asked for
                view = memoryview(data)
                while view:
                    n = os.write(fd, view)
                    view = view[n:]
            finally:
                os.close(fd)
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise HostError(
                f"Cannot write {path}: {e.strerror}.", "Check the workdir's permissions and free space."
            ) from e

    async def read_range(self, path: str, offset: int, max_bytes: int) -> bytes:
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                return f.read(max_bytes)
        except FileNotFoundError:
            return b""
        except OSError as e:
            raise HostError(f"Cannot read {path}: {e.strerror}.", "Check the file's permissions.") from e

    async def stat(self, path: str) -> FileStat | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise HostError(f"Cannot stat {path}: {e.strerror}.", "Check the path's permissions.") from e
        return FileStat(st.st_size, st.st_mtime, stat_mod.S_ISDIR(st.st_mode), stat_mod.S_IMODE(st.st_mode))

    async def file_size(self, path: str) -> int | None:
        st = await self.stat(path)
        return None if st is None else st.size

    async def list_dir(self, path: str) -> list[str]:
        try:
            return sorted(os.listdir(path))
        except OSError as e:
            raise HostError(f"Cannot list {path}: {e.strerror}.", "Check that the directory exists.") from e

    async def exists(self, path: str) -> bool:
        return os.path.exists(path)

    async def expand_path(self, path: str) -> str:
        return str(Path(path).expanduser().resolve())

    async def mkdir(self, path: str, mode: int = 0o755, parents: bool = True) -> None:
        try:
            if parents:
                os.makedirs(path, mode=mode, exist_ok=True)
            else:
                os.mkdir(path, mode)
        except OSError as e:
            raise HostError(f"Cannot create {path}: {e.strerror}.", "Check the workdir's permissions.") from e

    async def remove(self, path: str, recursive: bool = False) -> None:
        import shutil

        try:
            if recursive and os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise HostError(f"Cannot remove {path}: {e.strerror}.", "Check its permissions.") from e

    async def aclose(self) -> None:
        return None
