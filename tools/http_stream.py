"""A minimal HTTP/1.1 client on asyncio streams, for benchmark_server's streamed requests.

Why not httpx (which the ``openai`` client uses): its pure-Python HTTP parser (h11) and
anyio layers cost enough client CPU per streamed chunk that, measured against the stand-in
server on this project's 2-core CI box with vLLM 0.26.0's own request function
(vllm/benchmarks/lib/endpoint_request_func.py, aiohttp with its C parser) on the same
prompts and concurrency, httpx gave ~15 % less throughput and 4x the TTFT: the client, not
the server, was measured. A benchmark must cost the client as little as vLLM's does. The
endpoints here are our own server jobs (a loopback port, an SSH forward or a tunnel), so
what is needed is small: one POST per connection (``Connection: close``), a JSON body, and
a response framed by ``Transfer-Encoding: chunked`` (uvicorn's streaming responses),
``Content-Length``, or the connection's end. https works through asyncio's TLS.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

__all__ = ["HttpEndpoint", "HttpResponse"]

_LIMIT = 1 << 22  # longest line the reader buffers (a /tokenize answer is one line of JSON)


class HttpResponse:
    """Status, headers and the body of one response, read as chunks, lines or whole."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, status: int, headers: dict[str, str]
    ) -> None:
        self.status, self.headers = status, headers
        self._reader, self._writer = reader, writer

    async def chunks(self) -> AsyncIterator[bytes]:
        r = self._reader
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                size_line = await r.readline()
                if not size_line:
                    raise ConnectionError("the server closed the connection inside a chunked body")
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while (await r.readline()) not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                data = await r.readexactly(size)
                await r.readexactly(2)
                yield data
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = await r.read(min(left, 65536))
                if not data:
                    raise ConnectionError("the server closed the connection before the end of the body")
                left -= len(data)
                yield data
        else:
            while data := await r.read(65536):
                yield data

    async def lines(self) -> AsyncIterator[bytes]:
        """The body split at newlines (CR stripped), as server-sent events are read."""
        buf = b""
        async for data in self.chunks():
            buf += data
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.rstrip(b"\r")
        if buf:
            yield buf

    async def read(self) -> bytes:
        return b"".join([c async for c in self.chunks()])

    def close(self) -> None:
        self._writer.close()


class HttpEndpoint:
    """``POST`` JSON to one server (``http(s)://host:port``), with an optional bearer key."""

    def __init__(self, base_url: str, api_key: str | None = None, connect_timeout_s: float = 10.0) -> None:
        u = urlsplit(base_url)
        if u.scheme not in ("http", "https") or not u.hostname or u.path.strip("/") or u.query:
            raise ValueError(f"base_url must be http(s)://host:port, not {base_url!r}")
        if api_key is not None and any(c in api_key for c in "\r\n\0"):
            raise ValueError("the API key has a line break in it")
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.tls = ssl.create_default_context() if u.scheme == "https" else None
        self.netloc = u.netloc
        self.connect_timeout_s = connect_timeout_s
        self._auth = f"Authorization: Bearer {api_key}\r\n" if api_key else ""

    async def post(self, path: str, doc: Any) -> HttpResponse:
        """Send the request; the caller reads the response and then closes it."""
        body = json.dumps(doc, separators=(",", ":")).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.netloc}\r\nUser-Agent: llm-ops-mcp-benchmark\r\n"
            f"Accept: */*\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"Connection: close\r\n{self._auth}\r\n"
        ).encode()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(self.host, self.port, ssl=self.tls, limit=_LIMIT), self.connect_timeout_s
        )
        try:
            writer.write(head + body)
            await writer.drain()
            status_line = await reader.readline()
            parts = status_line.split(None, 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
                raise ConnectionError(f"not an HTTP response: {status_line[:80]!r}")
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers[name.strip().lower()] = value.strip()
            return HttpResponse(reader, writer, int(parts[1]), headers)
        except BaseException:
            writer.close()
            raise

    async def post_json(self, path: str, doc: Any, timeout_s: float = 60.0) -> tuple[int, Any, bytes]:
        """(status, parsed JSON or None, raw body) of a short request."""

        async def go() -> tuple[int, Any, bytes]:
            r = await self.post(path, doc)
            try:
                raw = await r.read()
            finally:
                r.close()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = None
            return r.status, parsed, raw

        return await asyncio.wait_for(go(), timeout_s)
