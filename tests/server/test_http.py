"""Streamable HTTP with a bearer token: right token works, none or wrong gets 401,
a non-loopback bind without a token is refused, DNS-rebinding protection is on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio
TOKEN = "test-token-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def http_server(tmp_path):
    port = _free_port()
    env = {
        **os.environ,
        "LLM_OPS_MCP_TOKEN": TOKEN,
        "LLM_OPS_MCP_STATE_DIR": str(tmp_path / "state"),
        "LLM_OPS_MCP_CONFIG": "",
    }
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[hosts.local]\nworkdir = "{tmp_path / "w"}"\n')
    err = tmp_path / "server.stderr"  # a file, not an undrained pipe: the server logs every request
    with err.open("wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--http", "--port", str(port), "--config", str(cfg)],
            env=env,
            stderr=fh,
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(err.read_text(errors="replace")) from None
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    proc.terminate()
    proc.wait(10)


async def test_right_token_works(http_server):
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {TOKEN}"}) as http,
        Client(streamable_http_client(http_server, http_client=http)) as c,
    ):
        r = await c.call_tool("list_gpu_tiers", {})
        assert not r.is_error and r.structured_content["tiers"]


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Bearer wrong-token-xxxxxxxxxxxx"}, {"Authorization": f"Basic {TOKEN}"}]
)
async def test_missing_or_wrong_token_is_401(http_server, headers):
    async with httpx2.AsyncClient() as http:
        r = await http.post(
            http_server,
            headers={**headers, "content-type": "application/json", "accept": "application/json, text/event-stream"},
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        )
        assert r.status_code == 401


async def test_foreign_host_header_is_refused(http_server):
    async with httpx2.AsyncClient() as http:
        r = await http.post(
            http_server,
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Host": "evil.example:80",
                "content-type": "application/json",
                "accept": "application/json, text/event-stream",
            },
            content=b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}',
        )
        assert r.status_code in (400, 403, 421)


def test_non_loopback_bind_without_token_is_refused(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLM_OPS_MCP_TOKEN"}
    p = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--http", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2
    assert "Refusing to bind 0.0.0.0 without a token" in p.stderr


def _post(url: str, headers: dict[str, str]) -> int:
    r = httpx2.post(
        url,
        headers={"content-type": "application/json", "accept": "application/json, text/event-stream", **headers},
        content=b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
        b'"capabilities":{},"clientInfo":{"name":"t","version":"0"}}}',
        timeout=10,
    )
    return r.status_code


NEAR_MISSES = [
    {"Authorization": f"Bearer {TOKEN}x"},  # a longer token with the right prefix
    {"Authorization": f"Bearer {TOKEN[:-1]}"},  # a prefix of the token
    {"Authorization": "Bearer"},
    {"Authorization": TOKEN},  # no scheme
    {"X-Api-Key": TOKEN},  # the token elsewhere than Authorization
]


def test_near_miss_tokens_are_401(http_server):
    for headers in NEAR_MISSES:
        assert _post(http_server, headers) == 401, headers
    assert _post(http_server + f"?token={TOKEN}", {}) == 401  # never from the query string


def test_disallowed_origin_is_refused_even_with_the_token(http_server):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert _post(http_server, auth) == 200
    assert _post(http_server, {**auth, "Origin": "https://evil.example"}) in (400, 403)
    assert _post(http_server, {**auth, "Host": "localhost.evil.example:80"}) in (400, 403, 421)


def test_every_route_needs_the_token(http_server):
    base = http_server.rsplit("/mcp", 1)[0]
    for path in ("/mcp", "/mcp/", "/", "/docs", "/sse", "/messages/"):
        assert httpx2.get(base + path, timeout=10).status_code == 401, path


def test_non_loopback_bind_with_a_short_token_is_refused(tmp_path):
    env = {**os.environ, "LLM_OPS_MCP_TOKEN": "short"}
    p = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--http", "--host", "0.0.0.0", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2 and "shorter than 16" in p.stderr


@pytest.mark.parametrize("host", ["::", "192.168.1.10", "example.com"])
def test_no_token_anywhere_but_loopback(host):
    from runners.errors import ConfigError
    from server.http import resolve_token

    with pytest.raises(ConfigError, match="without a token"):
        resolve_token(host, {})
    assert resolve_token("127.0.0.1", {})[1] is True and resolve_token("::1", {})[1] is True
