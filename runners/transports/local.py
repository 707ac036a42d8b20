"""This machine as a :class:`~runners.transports.base.Transport`: asyncio subprocesses and plain file calls.

A host with ``transport = "local"`` (the default) runs its jobs here; the launchers
and the engine see the same protocol as over SSH, so a local host needs no code
path of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat as stat_mod
from collections.abc import Sequence
from pathlib import Path

from runners.config import HostConfig
from runners.errors import CommandFailed, HostError
from runners.transports.base import CommandResult, FileStat

__all__ = ["LocalTransport"]


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
