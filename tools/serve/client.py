"""query_model: one completion from a server job through the OpenAI client library.

Why the ``openai`` library and not hand-rolled HTTP: vLLM's server *is* the OpenAI
API, the library handles streaming (server-sent events), retries and error types
the way every other client of that server does. The server is found by its job id
(tools/serve/connection.py). The benchmark (token-exact prompts, per-token timing as
vLLM's ``bench serve``) is tools/serve/bench.py.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, Field, model_validator

from runners.errors import Conflict, HostError, InvalidInput, OpsError
from tools.serve.connection import JOB_ID_PATTERN, served_model, server_connection

if TYPE_CHECKING:
    from tools.context import ToolContext

__all__ = ["ChatMessage", "QueryInput", "QueryOutput", "query_model"]


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"] = "user"
    content: str = Field(max_length=200_000)


class QueryInput(BaseModel):
    server_job_id: str = Field(description="The server's job_id (from start_vllm_server).", pattern=JOB_ID_PATTERN)
    messages: list[ChatMessage] | None = Field(None, description="Chat messages (uses the chat template).")
    prompt: str | None = Field(None, max_length=200_000, description="Plain completion prompt (no template).")
    model: str | None = Field(None, description="Served name (an adapter's name); default: the base model.")
    max_tokens: int = Field(256, ge=1, le=32_768)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: list[str] | None = Field(None, max_length=8)
    seed: int | None = None
    timeout_s: float = Field(100.0, gt=0, le=110.0)

    @model_validator(mode="after")
    def _one(self) -> QueryInput:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        if self.messages is not None and not self.messages:
            raise ValueError("messages must not be empty")
        return self


class QueryOutput(BaseModel):
    text: str = Field(description="The generated text.")
    model: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_s: float
    summary: str


def _client(url: str, key: str | None, timeout: float) -> Any:
    from openai import AsyncOpenAI  # imported on use: keeps the server's start-up light

    return AsyncOpenAI(base_url=f"{url}/v1", api_key=key or "EMPTY", timeout=timeout, max_retries=0)


def _translate(e: Exception, url: str) -> OpsError:
    import openai

    if isinstance(e, openai.NotFoundError):
        return InvalidInput(
            f"The server does not serve that model: {getattr(e, 'message', e)}",
            "Use one of the served_models of start_vllm_server.",
        )
    if isinstance(e, openai.AuthenticationError):
        return Conflict("The server refused the API key.", "Restart the server; its env file holds the key.")
    if isinstance(e, openai.BadRequestError):
        return InvalidInput(
            f"The server refused the request: {getattr(e, 'message', e)}",
            "Shorten the prompt or max_tokens (max_model_len bounds both).",
        )
    if isinstance(e, openai.APITimeoutError):
        return HostError("The server did not answer in time.", "Lower max_tokens or raise timeout_s (<= 110).")
    if isinstance(e, openai.APIConnectionError):
        return HostError(f"Cannot reach the server at {url}.", "get_job_status shows whether it is still ready.")
    if isinstance(e, openai.APIStatusError):
        return HostError(
            f"The server answered HTTP {e.status_code}: {getattr(e, 'message', e)}",
            "Read the server's log with get_job_logs.",
        )
    return HostError(f"Request failed: {type(e).__name__}: {e}", "Read the server's log with get_job_logs.")


async def query_model(ctx: ToolContext, p: QueryInput) -> QueryOutput:
    """One completion (chat or plain) from a ready server job."""
    import openai

    url, key, names = await server_connection(await ctx.engine(), await ctx.serve_runtime(), p.server_job_id)
    model = served_model(names, p.model, p.server_job_id)
    client = _client(url, key, p.timeout_s)
    t0 = time.perf_counter()
    try:
        common: dict[str, Any] = {
            "model": model,
            "max_tokens": p.max_tokens,
            "temperature": p.temperature,
            "top_p": p.top_p,
        }
        if p.stop:
            common["stop"] = p.stop
        if p.seed is not None:
            common["seed"] = p.seed
        if p.messages is not None:
            r = await client.chat.completions.create(messages=[m.model_dump() for m in p.messages], **common)  # type: ignore[arg-type]
            text = r.choices[0].message.content or "" if r.choices else ""
        else:
            r = await client.completions.create(prompt=p.prompt, **common)
            text = r.choices[0].text if r.choices else ""
    except openai.OpenAIError as e:
        raise _translate(e, url) from e
    finally:
        await client.close()
    dt = time.perf_counter() - t0
    finish = r.choices[0].finish_reason if r.choices else None
    usage = r.usage
    toks = f", {usage.completion_tokens} tokens" if usage else ""
    return QueryOutput(
        text=text,
        model=model,
        finish_reason=finish,
        prompt_tokens=usage.prompt_tokens if usage else None,
        completion_tokens=usage.completion_tokens if usage else None,
        latency_s=round(dt, 3),
        summary=f"{model} answered in {dt:.2f} s{toks} (finish: {finish}).",
    )
