"""A real MCP client session held open on an event loop in a background thread.

Hypothesis drives sync test functions; this lets each generated example make one
call through the same in-memory (or stdio) session, with a hard per-call time-out
(a hung server fails the example instead of the whole run).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from mcp import Client

__all__ = ["ClientThread"]


class ClientThread:
    """``with ClientThread(lambda: Client(...)) as ct: ct.call(name, args, timeout)``."""

    def __init__(self, make_client: Callable[[], Client]) -> None:
        self._make = make_client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="mcp-client", daemon=True)
        self._client: Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.calls = 0
        self.seconds: dict[str, float] = {}

    def __enter__(self) -> ClientThread:
        self._thread.start()
        self.run(self._open(), 120)
        return self

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(Exception):
            self.run(self._close(), 60)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _open(self) -> None:
        self._stack = contextlib.AsyncExitStack()
        self._client = await self._stack.enter_async_context(self._make())

    async def _close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    def run(self, coro: Any, timeout: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    @property
    def client(self) -> Client:
        assert self._client is not None
        return self._client

    def list_tools(self) -> list[Any]:
        return self.run(self.client.list_tools(), 60).tools  # type: ignore[no-any-return]

    def call(self, name: str, args: dict[str, Any], timeout: float = 30.0) -> Any:
        """One tools/call; a call still running after ``timeout`` raises TimeoutError."""
        fut = asyncio.run_coroutine_threadsafe(self.client.call_tool(name, args), self._loop)
        self.calls += 1
        t0 = time.perf_counter()
        try:
            return fut.result(timeout)
        except TimeoutError:
            fut.cancel()
            raise
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
