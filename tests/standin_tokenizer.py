"""The STAND-IN vLLM server's tokenizer: a real byte-level BPE, so words are not tokens.

Why: the benchmark must count tokens as the server does, and a stand-in that made one
token per word would let a benchmark that counts words pass. This is what real
tokenizers do that matters to a client:

* a word is one token or several (``" tok12"`` → ``" t" "ok" "1" "2"``), numbers split
  into digits, text outside the training corpus falls back to single bytes;
* a character of several UTF-8 bytes that BPE never merged (``"✓"``, three bytes) is
  several tokens, and the first ones decode to nothing: vLLM's incremental detokenizer
  (vllm/v1/engine/detokenizer.py, ``FastIncrementalDetokenizer``, which steps a
  ``tokenizers.decoders.DecodeStream``) holds them back, so a streamed chunk can carry a
  token and no text;
* ``add_special_tokens`` adds what the tokenizer's post-processor says (``<s>`` for a
  Llama-like tokenizer, nothing for Qwen2.5).

The tokenizer is the model directory's own ``tokenizer.json`` when ``vllm serve`` is given
a directory that has one (what vLLM would load), else a BPE trained here on a small fixed
corpus (deterministic, ~0.1 s). ``STANDIN_VLLM_ADD_BOS=1`` makes the built-in one add
``<s>`` like Llama's. Only the HF ``tokenizers`` package is used (tests and their hosts have it).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["StandinTokenizer", "generation_text"]

_SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]
# Small on purpose: the trained vocabulary holds these words and some pieces, nothing else.
_CORPUS = [
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "Say hi. Hello there, how are you today? I am fine, thank you.",
    "The model answers questions about the weather and the news.",
    "tok tok tok ok to",
] * 8
_CHAT = "<|im_start|>{role}\n{content}<|im_end|>\n"


def generation_text(n_words: int) -> str:
    """What the stand-in "generates": `` tok0 tok1 tok2 ✓ tok3 …`` (a ✓ after every third word:
    three byte tokens, the first two of which decode to nothing)."""
    parts = []
    for i in range(n_words):
        parts.append(f" tok{i}")
        if i % 3 == 2:
            parts.append(" ✓")
    return "".join(parts)


def _builtin(add_bos: bool) -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=_SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", tok.token_to_id("<s>"))]
        )
    return tok


class StandinTokenizer:
    """Encode, decode and stream-decode like the server's tokenizer would."""

    def __init__(self, model: str = "", add_bos: bool = False) -> None:
        from tokenizers import Tokenizer

        path = Path(model) / "tokenizer.json" if model else None
        self.source = "builtin"
        if path is not None and path.is_file():
            self.tok = Tokenizer.from_file(str(path))
            self.source = str(path)
        else:
            self.tok = _builtin(add_bos)
        self.vocab_size: int = self.tok.get_vocab_size(with_added_tokens=True)
        self.eos_id: int | None = next(
            (
                i
                for t in ("</s>", "<|endoftext|>", "<|im_end|>", "<|eot_id|>")
                if (i := self.tok.token_to_id(t)) is not None
            ),
            None,
        )
        self._gen: list[int] = []

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens).ids)

    def decode(self, ids: list[int]) -> str:
        return str(self.tok.decode(ids, skip_special_tokens=True))

    def token_strs(self, ids: list[int]) -> list[str]:
        return [str(self.tok.id_to_token(i)) for i in ids]

    def out_of_vocab(self, ids: list[int]) -> int | None:
        """The largest id if it is not in the vocabulary (vLLM's input_processor check), else None."""
        top = max(ids, default=0)
        return top if top >= self.vocab_size or min(ids, default=0) < 0 else None

    def chat_text(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True) -> str:
        """A ChatML rendering (Qwen2.5's template, as text): what the server tokenizes for a chat."""
        text = "".join(_CHAT.format(role=m.get("role", "user"), content=_content(m.get("content"))) for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")

    def generated(self, n: int) -> list[int]:
        """The first ``n`` token ids of :func:`generation_text` (no special tokens)."""
        words = max(8, n)
        while len(self._gen) < n:
            self._gen = self.encode(generation_text(words), add_special_tokens=False)
            words *= 2
        return self._gen[:n]

    def stream(self) -> Any:
        """A fresh incremental detokenizer: ``step(id)`` returns the new text ('' while held back)."""
        from tokenizers.decoders import DecodeStream

        ds = DecodeStream(skip_special_tokens=True)
        tok = self.tok

        class _Step:
            def step(self, token_id: int) -> str:
                return ds.step(tok, token_id) or ""

        return _Step()


def _content(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list):  # OpenAI content parts
        return "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
    return ""
