"""The ``llm-ops-mcp`` command: ``serve`` (stdio or HTTP), ``call`` and ``tools``.

``call`` and ``tools`` are a scripted MCP client: they start ``llm-ops-mcp serve``
over stdio with the official client, so scripts, CI jobs, benchmarks and the docs
drive exactly what an agent drives. ``call`` prints the tool's structuredContent
as JSON on stdout and exits 0, or prints the error on stderr and exits 1.
Heavy imports (the MCP client, uvicorn) happen inside the subcommand that needs them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

__all__ = ["main"]


def _server_argv(config: str | None) -> list[str]:
    argv = [sys.executable, "-m", "server.cli", "serve"]
    if config:
        argv += ["--config", config]
    return argv


def _cmd_serve(args: argparse.Namespace) -> int:
    from runners.config import load_config
    from runners.errors import OpsError
    from server.app import build_server

    try:
        config = load_config(args.config)
    except OpsError as e:
        print(f"llm-ops-mcp: {e}", file=sys.stderr)
        return 2
    app = build_server(config)
    if not args.http:
        app.run("stdio")
        return 0
    import anyio
    import uvicorn

    from server.http import announce_token, build_http_app, resolve_token

    try:
        token, generated = resolve_token(args.host)
    except OpsError as e:
        print(f"llm-ops-mcp: {e}", file=sys.stderr)
        return 2
    if generated:
        announce_token(token)
    asgi = build_http_app(app, args.host, args.port, token)
    server = uvicorn.Server(uvicorn.Config(asgi, host=args.host, port=args.port, log_level="warning"))
    print(f"llm-ops-mcp: serving MCP at http://{args.host}:{args.port}/mcp", file=sys.stderr)
    anyio.run(server.serve)
    return 0


async def _session(config: str | None, fn: Any) -> Any:
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    argv = _server_argv(config)
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))
    async with Client(params, mode="auto") as client:
        return await fn(client)


def _cmd_call(args: argparse.Namespace) -> int:
    import anyio

    try:
        arguments = json.loads(args.json) if args.json else {}
    except json.JSONDecodeError as e:
        print(f"llm-ops-mcp: --json is not valid JSON: {e}", file=sys.stderr)
        return 2
    if not isinstance(arguments, dict):
        print("llm-ops-mcp: --json must be a JSON object", file=sys.stderr)
        return 2

    async def go(client: Any) -> Any:
        return await client.call_tool(args.tool, arguments)

    result = anyio.run(_session, args.config, go)
    if result.is_error:
        text = " ".join(getattr(c, "text", "") for c in result.content).strip()
        print(text or "tool error", file=sys.stderr)
        return 1
    if result.structured_content is not None:
        print(json.dumps(result.structured_content, indent=2))
    else:
        print(json.dumps([c.model_dump(mode="json", exclude_none=True) for c in result.content], indent=2))
    return 0


def _cmd_tools(args: argparse.Namespace) -> int:
    import anyio

    async def go(client: Any) -> Any:
        return await client.list_tools()

    result = anyio.run(_session, args.config, go)
    width = max((len(t.name) for t in result.tools), default=0)
    for t in result.tools:
        print(f"{t.name:<{width}}  {(t.description or '').splitlines()[0] if t.description else ''}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-ops-mcp", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the MCP server (stdio by default)")
    s.add_argument("--config", help="TOML config (default: $LLM_OPS_MCP_CONFIG or the user config dir)")
    s.add_argument("--http", action="store_true", help="streamable HTTP at /mcp instead of stdio")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.set_defaults(fn=_cmd_serve)

    c = sub.add_parser("call", help="call one tool through a real MCP client and print its result")
    c.add_argument("tool")
    c.add_argument("--json", help="the tool's arguments as a JSON object")
    c.add_argument("--config")
    c.set_defaults(fn=_cmd_call)

    t = sub.add_parser("tools", help="list the tools, one line each")
    t.add_argument("--config")
    t.set_defaults(fn=_cmd_tools)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    sys.exit(main())
