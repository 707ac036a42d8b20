"""The single bridge between our plain tool functions and the MCP surface.

Each tool is a plain function ``fn(params: InputModel[, ctx]) -> OutputModel`` in
``tools/`` (testable without MCP). :func:`add_tool` exposes it with *flat*
arguments derived from the input model's fields (an agent calls
``estimate_memory(model=..., task=...)``, not ``estimate_memory(params={...})``),
re-validates the whole model so cross-field rules apply, and turns every
:class:`~runners.errors.OpsError` into a tool error whose text says what to do next.
Unexpected exceptions are logged with their traceback to stderr; the agent gets one
sentence.

:class:`OpsServer` is the SDK's ``MCPServer`` with two checks in front of every call
(through its public ``call_tool``): an argument name the tool does not have is an error
naming the closest valid ones (the SDK drops unknown names silently, so a typo such as
``epochs=3`` would train with the default), and the SDK's own type errors are reworded
one line per field, without pydantic's URLs.
"""

from __future__ import annotations

import difflib
import inspect
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from mcp.server.mcpserver import Context, MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import Tool as MCPTool
from mcp_types import ToolAnnotations
from pydantic import BaseModel, ValidationError

from runners.errors import OpsError

__all__ = ["OpsServer", "ToolSpec", "add_tool", "format_validation_error", "own_fields_first", "unknown_arguments"]

log = logging.getLogger("llm_ops_mcp")

InT = TypeVar("InT", bound=BaseModel)
OutT = TypeVar("OutT", bound=BaseModel)


def format_validation_error(e: ValidationError) -> str:
    """One line per problem, field first, no pydantic URLs (the agent only needs what to change)."""
    parts = []
    for err in e.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "arguments"
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "Invalid arguments: " + "; ".join(parts) + "."


def unknown_arguments(tool: str, model: type[BaseModel], arguments: dict[str, Any]) -> str | None:
    """The error text for argument names ``model`` lacks (None: all known), with the closest valid names."""
    valid = list(model.model_fields)
    unknown = [k for k in arguments if k not in model.model_fields]
    if not unknown:
        return None
    hints = []
    for k in unknown:
        close = difflib.get_close_matches(k, valid, n=2, cutoff=0.6)
        hints.append(f"{k!r}" + (f" (did you mean {' or '.join(repr(c) for c in close)}?)" if close else ""))
    return f"{tool} has no argument {', '.join(hints)}. Fix: use only its arguments: {', '.join(valid)}."


class OpsServer(MCPServer):
    """``MCPServer`` that refuses unknown argument names and words type errors for agents (module docstring).

    It can also start from a stored tool listing (``server/tool_cache.py``): :meth:`defer_registration`
    keeps the function that builds the tools and the listing to answer ``tools/list`` with until then;
    every other request builds them first (:meth:`ensure_registered`, synchronous, so no request can
    see half of them). Without a stored listing, :attr:`on_listed` receives the first listing answered.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_models: dict[str, type[BaseModel]] = {}
        self._pending_registration: Callable[[], None] | None = None
        self._stored_listing: list[MCPTool] | None = None
        self.on_listed: Callable[[list[MCPTool]], None] | None = None

    def defer_registration(self, register: Callable[[], None], listing: list[MCPTool]) -> None:
        """Answer tools/list with ``listing`` and run ``register`` when anything else is asked."""
        self._pending_registration = register
        self._stored_listing = listing

    def ensure_registered(self) -> None:
        """Build the deferred tools, resources and prompts now (idempotent)."""
        register, self._pending_registration = self._pending_registration, None
        if register is not None:
            self._stored_listing = None
            register()

    async def list_tools(self) -> list[MCPTool]:
        if self._stored_listing is not None:
            return list(self._stored_listing)
        tools = await super().list_tools()
        if self.on_listed is not None:
            on_listed, self.on_listed = self.on_listed, None
            on_listed(tools)
        return tools

    def _tool_input_schema(self, name: str) -> dict[str, Any] | None:
        # The SDK's hook for HTTP header checks, called before call_tool: answer from the listing too.
        if self._stored_listing is not None:
            return next((t.input_schema for t in self._stored_listing if t.name == name), None)
        return super()._tool_input_schema(name)

    async def list_resources(self) -> Any:
        self.ensure_registered()
        return await super().list_resources()

    async def list_resource_templates(self) -> Any:
        self.ensure_registered()
        return await super().list_resource_templates()

    async def read_resource(self, *args: Any, **kwargs: Any) -> Any:
        self.ensure_registered()
        return await super().read_resource(*args, **kwargs)

    async def list_prompts(self) -> Any:
        self.ensure_registered()
        return await super().list_prompts()

    async def get_prompt(self, *args: Any, **kwargs: Any) -> Any:
        self.ensure_registered()
        return await super().get_prompt(*args, **kwargs)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        self.ensure_registered()
        model = self.input_models.get(name)
        if model is not None:
            why = unknown_arguments(name, model, arguments)
            if why:
                raise ToolError(why)
        try:
            return await super().call_tool(name, arguments, context)
        except ToolError as e:
            if isinstance(e.__cause__, ValidationError) and model is not None:
                raise ToolError(format_validation_error(e.__cause__)) from e.__cause__
            raise


class ToolSpec:
    """What the server needs to know about one tool besides its function."""

    def __init__(
        self,
        name: str,
        description: str,
        *,
        read_only: bool = False,
        destructive: bool = False,
        idempotent: bool = False,
        open_world: bool = False,
        title: str | None = None,
    ) -> None:
        self.name = name
        self.description = description
        self.annotations = ToolAnnotations(
            title=title,
            read_only_hint=read_only,
            destructive_hint=destructive,
            idempotent_hint=idempotent,
            open_world_hint=open_world,
        )


def own_fields_first(model: type[BaseModel]) -> list[tuple[str, Any]]:
    """The model's fields, those it declares itself before those it inherits (e.g. ``tools/submit.py``'s
    host / idempotency_key / dry_run), each group in declaration order: an agent reads ``model`` first."""
    depth = {
        name: sum(
            1 for k in model.__mro__ if isinstance(k, type) and issubclass(k, BaseModel) and name in k.model_fields
        )
        for name in model.model_fields
    }
    return sorted(model.model_fields.items(), key=lambda item: depth[item[0]])


def add_tool(
    app: MCPServer,
    spec: ToolSpec,
    input_model: type[InT],
    fn: Callable[[InT, Context], Awaitable[Any]] | Callable[[InT], Awaitable[Any]],
    output: type[OutT] | Any,
) -> None:
    """Expose ``fn`` as MCP tool ``spec.name`` with flat arguments taken from ``input_model``.

    ``fn`` is async and takes the validated model (and the MCP ``Context`` when it
    declares a second parameter, for progress notifications).
    """
    wants_ctx = len(inspect.signature(fn).parameters) >= 2

    async def wrapper(ctx: Context, **kwargs: Any) -> Any:
        try:
            params = input_model.model_validate(kwargs)
        except ValidationError as e:
            raise ToolError(format_validation_error(e)) from e
        try:
            if wants_ctx:
                return await fn(params, ctx)  # type: ignore[call-arg]
            return await fn(params)  # type: ignore[call-arg]
        except OpsError as e:
            raise ToolError(str(e)) from e
        except ToolError:
            raise
        except ValidationError as e:  # a model built inside the tool from host data
            log.exception("tool %s: validation failed inside the tool", spec.name)
            raise ToolError(format_validation_error(e)) from e
        except Exception as e:
            log.exception("tool %s failed unexpectedly", spec.name)
            raise ToolError(
                f"Internal error in {spec.name}: {type(e).__name__}: {e}. "
                "The full traceback is in the server log (stderr); report it if it repeats."
            ) from e

    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context)]
    for fname, finfo in own_fields_first(input_model):
        # A default_factory stays inside the FieldInfo (pydantic applies it); a plain default is
        # also the signature's, so the schema shows it.
        plain_default = not finfo.is_required() and finfo.default_factory is None
        default = finfo.default if plain_default else inspect.Parameter.empty
        params.append(
            inspect.Parameter(
                fname,
                inspect.Parameter.KEYWORD_ONLY,
                default=default,
                annotation=Annotated[finfo.annotation, finfo],
            )
        )
    wrapper.__signature__ = inspect.Signature(params, return_annotation=output)  # type: ignore[attr-defined]
    wrapper.__name__ = spec.name
    wrapper.__doc__ = spec.description
    app.add_tool(wrapper, name=spec.name, description=spec.description, annotations=spec.annotations)
    if isinstance(app, OpsServer):
        app.input_models[spec.name] = input_model
