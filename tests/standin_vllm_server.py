#!/usr/bin/env python
"""A STAND-IN for ``vllm serve``: an OpenAI-compatible HTTP server with no model behind it.

Why it exists: CI has no GPU and real vLLM can't run there, yet the serving tools
must be tested end to end through the real job engine (locally and over SSH). This
script is started exactly where ``vllm serve`` would be (tests put a ``vllm``
program that execs it on the host's PATH), answers the same endpoints with the
same shapes, and can be told to misbehave the ways real vLLM does. It is never used
outside tests/, and the same flow runs against real vLLM on a GPU (gpu/README.md).

    standin_vllm_server.py serve MODEL [--port N] [--host H] [--served-model-name A B]
                                       [--lora-modules name=path ...] [any other vLLM flag]
    standin_vllm_server.py serve --help=all     # prints the recorded vLLM 0.26.0 help

Several nodes (``--nnodes N --node-rank R --master-addr A --master-port P [--headless]``), as
vLLM's multiprocessing backend: node 0 listens on A:P and starts its API only once the other
N-1 nodes have connected and said their rank (a wrong address, port or rank never gets
ready); a headless node connects (retrying for 60 s), then stays until the head goes away
(exit 1, as vLLM's workers die with their head) or it is told to stop.

:func:`install_standin` makes a directory look like a vLLM install (a `vllm` program and
a `vllm` distribution of a version), for a host config's env.

Endpoints: GET /health, GET /v1/models, POST /v1/completions, POST
/v1/chat/completions (both with ``stream: true`` as server-sent events,
``stream_options.include_usage`` and ``continuous_usage_stats``), POST /tokenize and POST
/detokenize (vLLM's schema: vllm/entrypoints/serve/tokenize/protocol.py). ``VLLM_API_KEY``
is enforced on /v1/* only, like vLLM (server_utils.py ``GUARDED_PREFIX``).

Log-likelihoods (what lm-eval's ``local-completions`` back-end asks for: ``echo: true``,
``max_tokens`` 0 or 1, ``logprobs: N``; lm_eval/models/openai_completions.py
``LocalCompletionsAPI._create_payload`` / ``parse_logprobs``): a non-streamed completion with
``echo`` or ``logprobs`` answers every prompt of a batch, one choice each, in vLLM 0.26.0's shape
(vllm/entrypoints/openai/completion/serving.py ``request_output_to_completion_response`` and
``_create_completion_logprobs``; protocol.py ``CompletionLogProbs``): ``echo`` puts the prompt's
tokens (and text) first, the first prompt token's logprob is None, each other step's
``top_logprobs`` holds the token itself and the ``logprobs`` most likely ones, ``text_offset`` is the
running length of the token strings, ``max_tokens: 0`` with ``echo`` returns the prompt alone.
There is no model, so the numbers come from a fixed rule (:func:`_step_logprob`): at each position
the vocabulary is ranked by an affine permutation seeded from a BLAKE2 hash of all preceding token
ids, and rank r has probability (1-q) q^r / (1-q^V) (q = 0.9, V the vocabulary size) — a proper
distribution, deterministic and prompt-dependent, exact top-k, nothing about language.

Tokens are real ones (tests/standin_tokenizer.py: a byte-level BPE, or the model directory's
``tokenizer.json``): a prompt is as long as that tokenizer counts it, a completion prompt may
be token ids (checked against the vocabulary), and the "model" generates the tokens of
`` tok0 tok1 tok2 ✓ …``, one streamed chunk per token as vLLM sends them, including the
chunks whose token decodes to no text yet (vLLM's completion_stream_generator yields a chunk
whenever a step produced token ids). Generation runs to ``max_tokens`` unless the stand-in
"model" emits EOS (``STANDIN_VLLM_EOS_AFTER``) and the request lets it stop there
(``ignore_eos`` false, ``min_tokens`` reached), as vLLM's sampler does.

Switches (environment variables, so the command line stays vLLM's):
  STANDIN_VLLM_START_DELAY_S   sleep this long before listening (slow start)
  STANDIN_VLLM_CRASH=oom       print vLLM 0.26's CUDA OOM traceback and exit 1
  STANDIN_VLLM_CRASH=arch      print the unsupported-architecture error and exit 1
  STANDIN_VLLM_HANG_AFTER_OOM  with CRASH=oom: print it but keep running (a hung engine)
  STANDIN_VLLM_READY_LAG_S     /health answers at once, /v1/models and completions only after this
  STANDIN_VLLM_TOKEN_DELAY_S   seconds between streamed tokens (default 0.002)
  STANDIN_VLLM_EOS_AFTER=N     the model emits EOS as its N+1-th token (default: never)
  STANDIN_VLLM_TOKENS_PER_CHUNK=K  after the first chunk, K tokens per chunk (a lagging API
                               server coalesces steps: vllm/v1/engine/output_processor.py
                               RequestOutputCollector); default 1
  STANDIN_VLLM_ADD_BOS=1       the built-in tokenizer adds <s> like Llama's (default: none, like Qwen2.5)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

try:  # imported as tests.standin_vllm_server, or run as a script from tests/
    from tests.standin_tokenizer import StandinTokenizer
except ImportError:  # pragma: no cover - script mode
    from standin_tokenizer import StandinTokenizer  # type: ignore[no-redef]

HELP_FILE = Path(__file__).parent / "data" / "vllm" / "serve-help-all-0.26.0.txt"

OOM_TRACEBACK = """\
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021] EngineCore failed to start.
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021] Traceback (most recent call last):
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021]   File "/opt/venv/lib/python3.12/site-packages/vllm/v1/engine/core.py", line 1012, in run_engine_core
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021]     engine_core = EngineCoreProc(*args, **kwargs)
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021]   File "/opt/venv/lib/python3.12/site-packages/vllm/model_executor/layers/linear.py", line 412, in create_weights
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021]     weight = Parameter(torch.empty(sum(output_partition_sizes), input_size_per_partition, dtype=params_dtype), requires_grad=False)
(EngineCore_DP0 pid=41187) ERROR 11-26 20:41:07 [core.py:1021] torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 448.00 MiB. GPU 0 has a total capacity of 79.19 GiB of which 301.06 MiB is free. Including non-PyTorch memory, this process has 78.88 GiB memory in use. Of the allocated memory 78.21 GiB is allocated by PyTorch, and 19.92 MiB is reserved by PyTorch but unallocated. If reserved but unallocated memory is large try setting PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True to avoid fragmentation.  See documentation for Memory Management  (https://pytorch.org/docs/stable/notes/cuda.html#environment-variables)
RuntimeError: Engine core initialization failed. See root cause above. Failed core proc(s): {'EngineCore_DP0': 1}
"""
ARCH_ERROR = """\
ValueError: Model architectures ['StandinForCausalLM'] are not supported for now. Supported architectures: dict_keys(['LlamaForCausalLM', 'Qwen2ForCausalLM'])
"""


class StandinState:
    def __init__(
        self,
        names: list[str],
        max_model_len: int,
        ready_at: float,
        api_key: str | None,
        token_delay: float,
        lora: dict[str, str],
        base: str,
        tokenizer: StandinTokenizer | None = None,
        eos_after: int | None = None,
        tokens_per_chunk: int = 1,
    ) -> None:
        self.names = names
        self.max_model_len = max_model_len
        self.ready_at = ready_at
        self.api_key = api_key
        self.token_delay = token_delay
        self.lora = lora
        self.base = base
        self.tokenizer = tokenizer or StandinTokenizer(base)
        self.eos_after = eos_after
        self.tokens_per_chunk = max(1, tokens_per_chunk)
        self.requests = 0
        self.lock = threading.Lock()


class _Refused(Exception):
    """A request vLLM would refuse: HTTP status and message (its ErrorResponse)."""

    def __init__(self, code: int, msg: str, typ: str = "BadRequestError") -> None:
        super().__init__(msg)
        self.code, self.msg, self.typ = code, msg, typ


def _prompt_ids(st: StandinState, req: dict[str, Any], chat: bool) -> list[int]:
    """The prompt's token ids as vLLM's renderer makes them (text tokenized with the request's
    ``add_special_tokens``; token ids taken as given after the vocabulary check)."""
    tk = st.tokenizer
    if chat:
        msgs = req.get("messages")
        if not isinstance(msgs, list) or not msgs:
            raise _Refused(400, "messages must be a non-empty list")
        return tk.encode(tk.chat_text(msgs), add_special_tokens=bool(req.get("add_special_tokens", False)))
    prompt = req.get("prompt")
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)):
        prompt = prompt[0]  # a batch: the stand-in answers its first prompt
    if isinstance(prompt, str):
        ids = tk.encode(prompt, add_special_tokens=bool(req.get("add_special_tokens", True)))
    elif isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
        ids = list(prompt)
    else:
        raise _Refused(400, "prompt must be a string, a list of strings or a list of token ids")
    bad = tk.out_of_vocab(ids)
    if bad is not None:  # vllm/v1/engine/input_processor.py
        raise _Refused(400, f"Token id {bad} is out of vocabulary")
    return ids


def _output_ids(st: StandinState, req: dict[str, Any], chat: bool) -> list[int]:
    """The generated token ids: ``max_tokens`` of them unless the "model" emits EOS and the
    request lets it stop (vLLM: ``ignore_eos`` false and at least ``min_tokens`` generated)."""
    n = int((req.get("max_completion_tokens") if chat else None) or req.get("max_tokens") or 16)
    out = st.tokenizer.generated(n)
    stop_at = st.eos_after
    if stop_at is not None and not req.get("ignore_eos") and st.tokenizer.eos_id is not None:
        stop_at = max(stop_at, int(req.get("min_tokens") or 0))
        if stop_at < n:
            out = [*out[:stop_at], st.tokenizer.eos_id]  # EOS is a generated token (counted, no text)
    return out


_Q = 0.9  # the stand-in "model"'s rank decay: rank r has probability (1-q) q^r / (1-q^V)


def _ranking(prefix: list[int], vocab: int) -> tuple[int, int]:
    """(a, b) of the permutation rank(x) = (a*x + b) mod V for the position after ``prefix``:
    both from a BLAKE2 hash of the token ids, a coprime with V so every token has one rank."""
    h = hashlib.blake2b(",".join(map(str, prefix)).encode(), digest_size=16).digest()
    a, b = int.from_bytes(h[:8], "big") % vocab or 1, int.from_bytes(h[8:], "big") % vocab
    while math.gcd(a, vocab) != 1:
        a = a % (vocab - 1) + 1
    return a, b


def _rank_logprob(r: int, vocab: int) -> float:
    """log of (1-q) q^r / (1-q^V), floored at -9999 as vLLM floors -inf (serving.py)."""
    return max(math.log1p(-_Q) + r * math.log(_Q) - math.log1p(-(_Q**vocab)), -9999.0)


def _step_logprob(prefix: list[int], token: int, k: int, vocab: int) -> tuple[float, list[int]]:
    """The logprob of ``token`` after ``prefix`` and the ``k`` most likely tokens there (ranks 0..k-1)."""
    a, b = _ranking(prefix, vocab)
    inv = pow(a, -1, vocab)
    return _rank_logprob((a * token + b) % vocab, vocab), [((r - b) * inv) % vocab for r in range(k)]


def _completion_logprobs(
    st: StandinState, ids: list[int], start: int, first_none: bool, k: int, offset: int = 0
) -> dict[str, Any]:
    """vLLM's ``CompletionLogProbs`` of ``ids[start:]`` (serving.py ``_create_completion_logprobs``):
    tokens, token_logprobs (None for a first prompt token), top_logprobs (the token itself, then
    the top ``k``: at most k+1 entries, keyed by decoded text), text_offset."""
    tok = st.tokenizer.tok
    vocab = st.tokenizer.vocab_size
    out: dict[str, list[Any]] = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    pos = offset
    for i in range(start, len(ids)):
        text = tok.decode([ids[i]], skip_special_tokens=False)
        if i == 0 and first_none:  # vLLM's prompt_logprobs[0] is None: nothing precedes it
            lp, top = None, None
        else:
            lp, best = _step_logprob(ids[:i], ids[i], k, vocab)
            top = {text: lp}
            for t in best:
                if len(top) > k:
                    break
                top.setdefault(tok.decode([t], skip_special_tokens=False), _step_logprob(ids[:i], t, 0, vocab)[0])
        out["tokens"].append(text)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append(top)
        out["text_offset"].append(pos)
        pos += len(text)
    return out


def _batch_prompts(st: StandinState, req: dict[str, Any]) -> list[list[int]]:
    """Every prompt of a completion request as token ids (a string, a list of strings, token ids,
    or a list of token-id lists), checked against the vocabulary."""
    prompt = req.get("prompt")
    items = prompt if isinstance(prompt, list) and prompt and isinstance(prompt[0], (list, str)) else [prompt]
    return [_prompt_ids(st, {**req, "prompt": p}, chat=False) for p in items]


def make_handler(st: StandinState) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # as uvicorn's asyncio transports do: no Nagle delay between a stream's small writes
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def log_message(self, fmt: str, *args: Any) -> None:
            sys.stdout.write("(APIServer) INFO: " + (fmt % args) + "\n")
            sys.stdout.flush()

        def _json(self, code: int, doc: Any) -> None:
            body = json.dumps(doc).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _error(self, code: int, msg: str, typ: str = "BadRequestError") -> None:
            self._json(code, {"error": {"message": msg, "type": typ, "param": None, "code": code}})

        def _authorized(self) -> bool:
            if st.api_key is None:
                return True
            if self.headers.get("Authorization") == f"Bearer {st.api_key}":
                return True
            self._json(401, {"error": "Unauthorized"})
            return False

        def _lagging(self) -> bool:
            if time.time() < st.ready_at:
                self._error(503, "The model is still loading.", "ServiceUnavailableError")
                return True
            return False

        def do_GET(self) -> None:
            if self.path == "/health":
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if self.path == "/v1/models":
                if not self._authorized():
                    return
                if time.time() < st.ready_at:
                    self._json(200, {"object": "list", "data": []})
                    return
                data = []
                for n in st.names:
                    data.append(
                        {
                            "id": n,
                            "object": "model",
                            "created": int(time.time()),
                            "owned_by": "vllm",
                            "root": st.lora.get(n, st.base),
                            "parent": st.names[0] if n in st.lora else None,
                            "max_model_len": st.max_model_len,
                        }
                    )
                self._json(200, {"object": "list", "data": data})
                return
            self._error(404, "Not Found", "NotFoundError")

        def _body(self) -> Any:
            length = int(self.headers.get("Content-Length") or 0)
            try:
                return json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return None

        def _check_model(self, req: dict[str, Any], required: bool) -> bool:
            model = req.get("model")
            if (model is None and not required) or model in st.names:
                return True
            self._error(404, f"The model `{model}` does not exist.", "NotFoundError")
            return False

        def do_POST(self) -> None:
            req = self._body()
            if not isinstance(req, dict):
                self._error(400, "Invalid JSON")
                return
            if self.path in ("/tokenize", "/detokenize"):
                self._tokenization(req)  # not under /v1: no API key, as in vLLM
                return
            if self.path not in ("/v1/completions", "/v1/chat/completions"):
                self._error(404, "Not Found", "NotFoundError")
                return
            if not self._authorized() or self._lagging():
                return
            if not self._check_model(req, required=True):
                return
            chat = self.path.endswith("chat/completions")
            if not chat and not req.get("stream") and (req.get("echo") or req.get("logprobs") is not None):
                self._scored(req)
                return
            try:
                prompt_ids = _prompt_ids(st, req, chat)
            except _Refused as e:
                self._error(e.code, e.msg, e.typ)
                return
            out_ids = _output_ids(st, req, chat)
            n_max = int((req.get("max_completion_tokens") if chat else None) or req.get("max_tokens") or 16)
            if len(prompt_ids) + n_max > st.max_model_len:  # vllm/renderers/params.py _token_len_check
                self._error(
                    400,
                    f"This model's maximum context length is {st.max_model_len} tokens. However, you requested "
                    f"{n_max} output tokens and your prompt contains {len(prompt_ids)} input tokens, for a total "
                    f"of {len(prompt_ids) + n_max} tokens. Please reduce the length of the input prompt or the "
                    "number of requested output tokens.",
                )
                return
            with st.lock:
                st.requests += 1
            self._generate(req, chat, prompt_ids, out_ids)

        def _scored(self, req: dict[str, Any]) -> None:
            """A completion with ``echo`` / ``logprobs``: one choice per prompt, vLLM's response shape."""
            k = req.get("logprobs")
            if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 0):
                self._error(400, "`logprobs` must be a positive value.")  # protocol.py check_logprobs
                return
            echo = bool(req.get("echo"))
            try:
                prompts = _batch_prompts(st, req)
            except _Refused as e:
                self._error(e.code, e.msg, e.typ)
                return
            n_max = int(req.get("max_tokens") if req.get("max_tokens") is not None else 16)
            tk = st.tokenizer
            choices, n_in, n_out = [], 0, 0
            for ids in prompts:
                if len(ids) + max(n_max, 1) > st.max_model_len:  # vllm/renderers/params.py _token_len_check
                    self._error(400, f"This model's maximum context length is {st.max_model_len} tokens.")
                    return
                out_ids = [] if n_max == 0 else _output_ids(st, {**req, "max_tokens": n_max}, chat=False)
                every = [*ids, *out_ids]
                start = 0 if echo else len(ids)
                text = (tk.decode(ids) if echo else "") + tk.decode(out_ids)
                lps = None if k is None else _completion_logprobs(st, every, start, True, int(k))
                finish = "stop" if tk.eos_id is not None and out_ids and out_ids[-1] == tk.eos_id else "length"
                choices.append({"index": len(choices), "text": text, "logprobs": lps, "finish_reason": finish})
                n_in, n_out = n_in + len(ids), n_out + len(out_ids)
            with st.lock:
                st.requests += 1
            rid = "cmpl-" + uuid.uuid4().hex
            print(f"(APIServer) INFO: {rid}: prompt_tokens={n_in} completion_tokens={n_out} "
                  f"prompts={len(prompts)} echo={echo} logprobs={k}", flush=True)  # fmt: skip
            self._json(
                200,
                {
                    "id": rid,
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": req.get("model"),
                    "choices": choices,
                    "usage": {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out},
                },
            )

        def _tokenization(self, req: dict[str, Any]) -> None:
            if self._lagging() or not self._check_model(req, required=False):
                return
            tk = st.tokenizer
            if self.path == "/detokenize":
                tokens = req.get("tokens")
                if not isinstance(tokens, list) or not all(isinstance(t, int) for t in tokens):
                    self._error(400, "tokens must be a list of integers")
                    return
                bad = tk.out_of_vocab(tokens)
                if bad is not None:
                    self._error(400, f"Token id {bad} is out of vocabulary")
                    return
                self._json(200, {"prompt": tk.decode(tokens)})
                return
            if "messages" in req:  # TokenizeChatRequest: add_special_tokens defaults to False
                ids = tk.encode(
                    tk.chat_text(req.get("messages") or [], bool(req.get("add_generation_prompt", True))),
                    add_special_tokens=bool(req.get("add_special_tokens", False)),
                )
            elif isinstance(req.get("prompt"), str):  # TokenizeCompletionRequest: defaults to True
                ids = tk.encode(req["prompt"], add_special_tokens=bool(req.get("add_special_tokens", True)))
            else:
                self._error(400, "prompt must be a string (or give messages)")
                return
            strs = tk.token_strs(ids) if req.get("return_token_strs") else None
            self._json(200, {"count": len(ids), "max_model_len": st.max_model_len, "tokens": ids, "token_strs": strs})

        def _generate(self, req: dict[str, Any], chat: bool, prompt_ids: list[int], out_ids: list[int]) -> None:
            tk = st.tokenizer
            model = req.get("model")
            n_out = len(out_ids)
            finish = "stop" if tk.eos_id is not None and out_ids and out_ids[-1] == tk.eos_id else "length"
            rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
            n_in = len(prompt_ids)
            usage = {"prompt_tokens": n_in, "completion_tokens": n_out, "total_tokens": n_in + n_out}
            print(f"(APIServer) INFO: {rid}: prompt_tokens={n_in} completion_tokens={n_out}", flush=True)
            want_ids = bool(req.get("return_token_ids"))
            if not req.get("stream"):
                text = tk.decode(out_ids)
                if chat:
                    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}
                else:
                    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
                    if want_ids:
                        choice.update(prompt_token_ids=prompt_ids, token_ids=out_ids)
                time.sleep(st.token_delay * n_out)
                self._json(
                    200,
                    {
                        "id": rid,
                        "object": "chat.completion" if chat else "text_completion",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [choice],
                        "usage": usage,
                    },
                )
                return
            self.send_response(200)  # framed like uvicorn's streaming responses: chunked, kept alive
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            opts = req.get("stream_options") or {}
            include_usage = bool(opts.get("include_usage"))
            continuous = include_usage and bool(opts.get("continuous_usage_stats"))  # api_utils.should_include_usage
            obj = "chat.completion.chunk" if chat else "text_completion"

            def chunk(data: bytes) -> None:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def send(doc: Any) -> None:
                chunk(b"data: " + json.dumps(doc).encode() + b"\n\n")

            detok = tk.stream()
            sent = 0
            while sent < n_out:  # the first chunk is the prefill step's one token, as in vLLM
                k = 1 if sent == 0 else min(st.tokens_per_chunk, n_out - sent)
                time.sleep(st.token_delay * k)
                step = out_ids[sent : sent + k]
                text = "".join(detok.step(t) for t in step)
                sent += k
                last = sent == n_out
                if chat:
                    delta: dict[str, Any] = {"content": text} if sent > k else {"role": "assistant", "content": text}
                    ch: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish if last else None}
                else:
                    ch = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish if last else None}
                    if want_ids:
                        ch["token_ids"] = step
                        if sent == k:
                            ch["prompt_token_ids"] = prompt_ids
                doc: dict[str, Any] = {"id": rid, "object": obj, "created": int(time.time()), "model": model}
                doc["choices"] = [ch]
                if continuous:
                    doc["usage"] = {"prompt_tokens": n_in, "completion_tokens": sent, "total_tokens": n_in + sent}
                send(doc)
            if include_usage:
                send(
                    {
                        "id": rid,
                        "object": obj,
                        "created": int(time.time()),
                        "model": model,
                        "choices": [],
                        "usage": usage,
                    }
                )
            chunk(b"data: [DONE]\n\n")
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()

    return Handler


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[1] != "serve":
        print("usage: standin_vllm_server.py serve MODEL [flags]", file=sys.stderr)
        return 2
    rest = argv[2:]
    if any(a in ("--help=all", "-h=all") for a in rest):
        sys.stdout.write(HELP_FILE.read_text(encoding="utf-8"))
        return 0
    p = argparse.ArgumentParser(prog="vllm serve (stand-in)")
    p.add_argument("model")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--host", default=None)
    p.add_argument("--served-model-name", nargs="+", default=None)
    p.add_argument("--lora-modules", nargs="+", default=[])
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--nnodes", type=int, default=1)
    p.add_argument("--node-rank", type=int, default=0)
    p.add_argument("--master-addr", default="127.0.0.1")
    p.add_argument("--master-port", type=int, default=29501)
    p.add_argument("--headless", action="store_true")
    args, unknown = p.parse_known_args(rest)
    if args.headless or args.node_rank > 0:
        return _headless_node(args)
    print(
        f"(APIServer) INFO: stand-in vLLM server (not vLLM) for {args.model}; ignoring {len(unknown)} "
        "other argument(s)",
        flush=True,
    )
    crash = os.environ.get("STANDIN_VLLM_CRASH", "")
    delay = float(os.environ.get("STANDIN_VLLM_START_DELAY_S") or 0)
    if delay:
        time.sleep(delay)
    if crash == "oom":
        sys.stdout.write(OOM_TRACEBACK)
        sys.stdout.flush()
        if os.environ.get("STANDIN_VLLM_HANG_AFTER_OOM"):
            time.sleep(3600)
        return 1
    if crash == "arch":
        sys.stdout.write(ARCH_ERROR)
        return 1
    if args.nnodes > 1 and not _gather_nodes(args):
        return 1
    names = args.served_model_name or [args.model]
    lora: dict[str, str] = {}
    for item in args.lora_modules:
        if item.startswith("{"):
            doc = json.loads(item)
            lora[doc["name"]] = doc["path"]
        else:
            n, _, path = item.partition("=")
            lora[n] = path
    lag = float(os.environ.get("STANDIN_VLLM_READY_LAG_S") or 0)
    st = StandinState(
        names + list(lora),
        args.max_model_len,
        time.time() + lag,
        os.environ.get("VLLM_API_KEY") or None,
        float(os.environ.get("STANDIN_VLLM_TOKEN_DELAY_S") or 0.002),
        lora,
        args.model,
        StandinTokenizer(args.model, add_bos=os.environ.get("STANDIN_VLLM_ADD_BOS") == "1"),
        int(os.environ["STANDIN_VLLM_EOS_AFTER"]) if os.environ.get("STANDIN_VLLM_EOS_AFTER") else None,
        int(os.environ.get("STANDIN_VLLM_TOKENS_PER_CHUNK") or 1),
    )
    try:
        srv = ThreadingHTTPServer((args.host or "0.0.0.0", args.port), make_handler(st))
    except OSError as e:
        print(f"OSError: [Errno {e.errno}] {e.strerror}", flush=True)
        return 1
    srv.daemon_threads = True
    print(f"(APIServer) INFO: Starting vLLM API server 0 on http://{args.host or '0.0.0.0'}:{args.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        srv.serve_forever(poll_interval=0.1)
    return 0


def _gather_nodes(args: argparse.Namespace) -> bool:
    """The head: wait (up to 120 s) until nodes 1..N-1 connect to the master address and say their rank."""

    try:
        srv = socket.create_server((args.master_addr, args.master_port), reuse_port=False)
    except OSError as e:
        print(f"OSError: [Errno {e.errno}] {e.strerror} (master {args.master_addr}:{args.master_port})", flush=True)
        return False
    srv.settimeout(120)
    want, seen = set(range(1, args.nnodes)), set()
    conns = []
    while seen != want:
        try:
            conn, _ = srv.accept()
        except TimeoutError:
            print(f"RuntimeError: only nodes {sorted(seen)} of {sorted(want)} joined in 120 s", flush=True)
            return False
        rank = int(conn.recv(64).decode().strip() or -1)
        if rank not in want:
            print(f"RuntimeError: a node said rank {rank}, expected one of {sorted(want)}", flush=True)
            return False
        seen.add(rank)
        conns.append(conn)  # kept open: the headless nodes watch it to know the head is alive
        print(f"(EngineCore) INFO: node {rank} joined ({len(seen) + 1}/{args.nnodes})", flush=True)
    _HEAD_CONNS.extend(conns)
    return True


_HEAD_CONNS: list[Any] = []


def _headless_node(args: argparse.Namespace) -> int:
    """A headless node: join the head at the master address, then live as long as it does."""

    deadline = time.time() + 60
    while True:
        try:
            conn = socket.create_connection((args.master_addr, args.master_port), timeout=5)
            break
        except OSError as e:
            if time.time() > deadline:
                print(f"RuntimeError: cannot reach master {args.master_addr}:{args.master_port}: {e}", flush=True)
                return 1
            time.sleep(0.2)
    conn.sendall(f"{args.node_rank}\n".encode())
    print(
        f"(Worker) INFO: headless node {args.node_rank} of {args.nnodes} joined {args.master_addr}:{args.master_port}",
        flush=True,
    )
    conn.settimeout(None)
    try:
        gone = conn.recv(1) == b""
    except KeyboardInterrupt:
        return 0
    except OSError:
        gone = True
    if gone:
        print("RuntimeError: the head node went away", flush=True)
        return 1
    return 0


def _on_term(*_: Any) -> None:
    raise KeyboardInterrupt  # like vLLM: SIGTERM is a graceful shutdown


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, _on_term)
    sys.exit(main(sys.argv))


def install_standin(root: Path, version: str = "0.26.0") -> dict[str, str]:
    """Make ``root`` look like a vLLM install to a host: ``bin/vllm`` runs this stand-in, and
    ``site/`` holds a ``vllm`` distribution of ``version`` (so version detection finds it).

    Returns the host ``env`` to put in a HostConfig (PATH and PYTHONPATH).
    """
    bin_dir, site = root / "bin", root / "site"
    (site / "vllm").mkdir(parents=True, exist_ok=True)
    bin_dir.mkdir(parents=True, exist_ok=True)
    (site / "vllm" / "__init__.py").write_text(f'"""Stand-in: not vLLM."""\n__version__ = "{version}"\n')
    dist = site / f"vllm-{version}.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n")
    prog = bin_dir / "vllm"
    prog.write_text(f'#!/bin/sh\nexec {sys.executable} {Path(__file__).resolve()} "$@"\n')
    prog.chmod(0o755)
    return {"PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}", "PYTHONPATH": str(site)}
