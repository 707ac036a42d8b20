"""Streamable HTTP transport with a bearer token.

The SDK serves MCP at ``/mcp``; we wrap its Starlette app in a small ASGI guard
that compares the ``Authorization: Bearer`` token in constant time
(``hmac.compare_digest``) and answers 401 otherwise. The SDK's DNS-rebinding
protection (Host/Origin checks) stays on: on loopback it is the SDK's own
default, elsewhere we pass the bind address as the one allowed Host.
Binding to a non-loopback address without a token is refused.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import secrets
import sys
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
from starlette.types import ASGIApp, Receive, Scope, Send

from runners.errors import ConfigError

__all__ = ["BearerAuth", "build_http_app", "is_loopback", "resolve_token"]

log = logging.getLogger("llm_ops_mcp")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_token(host: str, environ: dict[str, str] | None = None) -> tuple[str, bool]:
    """The token to require, and whether we generated it.

    ``LLM_OPS_MCP_TOKEN`` wins. On loopback an unset token is generated (and printed
    once to stderr by the caller); on any other address it is an error: an open MCP
    server that can start jobs must never listen on a network without a token.
    """
    env = os.environ if environ is None else environ
    token = env.get("LLM_OPS_MCP_TOKEN", "")
    if token:
        if len(token) < 16:
            raise ConfigError("LLM_OPS_MCP_TOKEN is shorter than 16 characters.", "Use a long random token.")
        return token, False
    if not is_loopback(host):
        raise ConfigError(
            f"Refusing to bind {host} without a token: anyone on that network could run jobs.",
            "Set LLM_OPS_MCP_TOKEN to a long random value, or bind 127.0.0.1.",
        )
    return secrets.token_urlsafe(32), True


class BearerAuth:
    """ASGI guard: every HTTP request must carry ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self._token = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            auth = b""
            for k, v in scope.get("headers", []):
                if k == b"authorization":
                    auth = v
                    break
            scheme, _, given = auth.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self._token):
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [(b"content-type", b"application/json"), (b"www-authenticate", b"Bearer")],
                    }
                )
                await send({"type": "http.response.body", "body": b'{"error":"missing or wrong bearer token"}'})
                return
        await self.app(scope, receive, send)


def build_http_app(app: MCPServer, host: str, port: int, token: str) -> Any:
    security = None
    if not is_loopback(host):
        security = TransportSecuritySettings(
            enable_dns_rebinding_protection=True,
            allowed_hosts=[f"{host}:{port}", host],
            allowed_origins=[f"http://{host}:{port}", f"https://{host}:{port}"],
        )
    starlette_app = app.streamable_http_app(streamable_http_path="/mcp", transport_security=security, host=host)
    # Starlette's lifespan (which runs the session manager) must reach the inner app.
    return _LifespanPassthrough(starlette_app, BearerAuth(starlette_app, token))


class _LifespanPassthrough:
    def __init__(self, inner: Any, guarded: BearerAuth) -> None:
        self.inner, self.guarded = inner, guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self.inner(scope, receive, send)
        else:
            await self.guarded(scope, receive, send)


def announce_token(token: str) -> None:
    print(f"llm-ops-mcp: generated bearer token (set LLM_OPS_MCP_TOKEN to choose one): {token}", file=sys.stderr)
