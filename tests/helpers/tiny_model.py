"""Builders for a tiny random-init Llama, its tokenizer and small datasets in every format.

Why: the tests, the demo and the CPU benchmarks need a *real* causal LM that trains in
seconds on two CPU cores and needs no network. A ~125k-parameter Llama with a byte-level
BPE tokenizer trained on the spot is exactly the architecture the GPU hosts fine-tune,
only smaller, so the same payload code paths run (PEFT, TRL, chat templates, saving).

Its widths are the smallest a real model could have for 4-bit quantization: every
projection's input a multiple of 64 (bitsandbytes quantizes 64 inputs to a block) and its
output a multiple of 32 (the rows its AVX512-BF16 CPU kernel packs together; see
runners/payloads/quantize.py ``CPU_REPACK_ROWS``). At hidden 32 the blocks straddled rows and
that kernel's repack failed, on exactly the CPUs that have it.

Run ``python -m tests.helpers.tiny_model OUTDIR`` to write ``OUTDIR/model`` (model and
tokenizer) and ``OUTDIR/data/<format>.jsonl`` for every dataset format.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "FORMATS",
    "build_tiny_model",
    "build_tiny_tokenizer",
    "finetune_args",
    "make_dataset",
    "make_rows",
    "write_all",
    "write_jsonl",
]

FORMATS = ("alpaca", "sharegpt", "messages", "text", "prompt_completion")

# A small closed world: "colour of X is Y" facts. The model can learn it in a few dozen
# steps, so "the loss goes down" is a strong signal and not noise.
_THINGS = ["sky", "grass", "sun", "snow", "coal", "blood", "sea", "lemon", "rose", "cloud", "leaf", "milk"]
_COLOURS = [
    "blue",
    "green",
    "yellow",
    "white",
    "black",
    "red",
    "blue",
    "yellow",
    "red",
    "grey",
    "green",
    "white",
]


def _facts(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    pairs = list(zip(_THINGS, _COLOURS, strict=True))
    return [pairs[rng.randrange(len(pairs))] for _ in range(n)]


def _corpus() -> list[str]:
    """Text the tokenizer is trained on: the dataset vocabulary plus chat-template markup."""
    lines = [f"What colour is the {t}? The {t} is {c}." for t, c in zip(_THINGS, _COLOURS, strict=True)]
    lines += [
        "<|user|>\n",
        "<|assistant|>\n",
        "<|system|>\n",
        "### Instruction:",
        "### Response:",
        "You are a helpful assistant. Answer in one sentence.",
    ]
    return lines * 4


def build_tiny_tokenizer(out_dir: str | Path, vocab_size: int = 512) -> Any:
    """Train a byte-level BPE tokenizer and save it as a ``PreTrainedTokenizerFast``.

    Byte-level, so any text (chat markup included) encodes without unknown tokens.
    No chat template is set on purpose: the payload must supply its default one.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    fast.save_pretrained(str(out_dir))
    return fast


def build_tiny_model(out_dir: str | Path, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random-init Llama (~125k parameters at hidden 64) plus its tokenizer into ``out_dir``.

    Four heads and two KV heads: the k/v projections have ``hidden / 2`` outputs, which is why
    ``hidden`` must be a multiple of 64 for every layer to fit 4-bit blocks.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tiny_tokenizer(out)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(str(out))
    return out


def make_rows(fmt: str, n: int = 64, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` rows of the colour facts in dataset format ``fmt`` (one of ``FORMATS``)."""
    rows: list[dict[str, Any]] = []
    for thing, colour in _facts(n, seed):
        question = f"What colour is the {thing}?"
        answer = f"The {thing} is {colour}."
        if fmt == "alpaca":
            rows.append({"instruction": question, "input": "", "output": answer})
        elif fmt == "sharegpt":
            rows.append({"conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]})
        elif fmt == "messages":
            rows.append(
                {
                    "messages": [
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer},
                    ]
                }
            )
        elif fmt == "text":
            rows.append({"text": f"{question} {answer}"})
        elif fmt == "prompt_completion":
            rows.append({"prompt": question, "completion": " " + answer})
        else:
            raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    return rows


def write_jsonl(path: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as JSON lines (the upload format the controller accepts)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def make_dataset(path: str | Path, fmt: str, n: int = 64, seed: int = 0) -> Path:
    """Write an ``n``-row JSONL dataset in format ``fmt``."""
    return write_jsonl(path, make_rows(fmt, n, seed))


def write_all(out_dir: str | Path) -> dict[str, Path]:
    """Model + tokenizer in ``out_dir/model`` and one dataset per format in ``out_dir/data``."""
    out = Path(out_dir)
    paths = {"model": build_tiny_model(out / "model")}
    for fmt in FORMATS:
        paths[fmt] = make_dataset(out / "data" / f"{fmt}.jsonl", fmt)
    return paths


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tests.helpers.tiny_model OUTDIR")
    for name, path in write_all(sys.argv[1]).items():
        print(f"{name}: {path}")


def finetune_args(model: str | Path, dataset: str | Path, /, **overrides: Any) -> dict[str, Any]:
    """Fine-tune settings the CPU tests share (tiny model, 64-token rows, a high learning rate so
    the loss visibly falls in a few steps), with each test's own values on top."""
    return {"model": str(model), "dataset": str(dataset), "max_seq_length": 64, "learning_rate": 5e-3, **overrides}
