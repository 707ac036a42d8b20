"""Model architecture resolution: what the memory model needs to know about a model.

Order (first hit wins): a local directory with ``config.json`` (plus safetensors
headers for exact parameter counts and stored dtypes) → the local Hugging Face
cache (offline, no network) → the built-in catalog in ``tools/data/model_catalog.json``
(architecture fields copied from each model's config.json, with sources) → the Hub
via ``huggingface_hub`` (config.json and safetensors metadata only, never weights),
unless ``HF_HUB_OFFLINE`` is set. Pre-quantized checkpoints (AWQ, GPTQ, FP8,
bitsandbytes) are recognised from ``quantization_config``.

Nothing here imports torch or transformers: config.json is read as JSON and
safetensors headers are parsed by hand (8-byte length + JSON), which is cheap.
"""

from __future__ import annotations

import json
import os
import re
import struct
from functools import cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr

from runners.errors import InvalidInput, NotFound
from tools.model_ref import is_hub_id

__all__ = [
    "ModelArch",
    "arch_from_config",
    "catalog",
    "catalog_lookup",
    "read_safetensors_dir",
    "resolve_model",
]

_CATALOG_PATH = Path(__file__).parent / "data" / "model_catalog.json"
_DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "F8_E8M0": 1,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F4": 0.5,
    "U32": 4,
    "U16": 2,
}
StoredQuant = Literal["none", "awq", "gptq", "fp8", "bnb-4bit", "bnb-8bit", "other"]


class ModelArch(BaseModel):
    """The architecture facts that decide memory. Per-GPU sharding is the estimator's job."""

    name: str
    source: str = Field(description="Where these facts came from: local dir, HF cache, catalog, or hub.")
    model_type: str = "llama"
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    tie_embeddings: bool = False
    qkv_bias: bool = False
    num_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    shared_experts: int = 0
    shared_expert_intermediate_size: int = 0
    first_dense_layers: int = 0
    sliding_window: int | None = None
    sliding_fraction: float = Field(0.0, description="Share of layers that use the sliding window.")
    kv_lora_rank: int | None = Field(None, description="MLA (DeepSeek): the latent that is cached instead of K/V.")
    q_lora_rank: int | None = None
    qk_nope_head_dim: int | None = None
    qk_rope_head_dim: int | None = None
    v_head_dim: int | None = None
    max_position: int | None = None
    extra_params: int = Field(0, description="Parameters outside the language model (vision tower...).")
    stored_dtype: str = "bfloat16"
    stored_quantization: StoredQuant = "none"
    quant_bits: int | None = None
    checkpoint_params: int | None = Field(None, description="Exact element count from safetensors, if read.")
    checkpoint_bytes: int | None = Field(None, description="Exact tensor bytes from safetensors, if read.")
    notes: str = ""
    _counts: tuple[int, int, int] | None = PrivateAttr(None)

    # --- derived, cheap ---------------------------------------------------------------
    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_kv_heads * self.head_dim

    def attn_params(self) -> int:
        """Attention weights of one layer (q, k, v, o; MLA's low-rank projections)."""
        h = self.hidden_size
        if self.is_mla:
            nope, rope = self.qk_nope_head_dim or 128, self.qk_rope_head_dim or 64
            v = self.v_head_dim or 128
            qk = self.num_heads * (nope + rope)
            q = (h * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * qk) if self.q_lora_rank else h * qk
            kv_a = h * ((self.kv_lora_rank or 0) + rope) + (self.kv_lora_rank or 0)
            kv_b = (self.kv_lora_rank or 0) * self.num_heads * (nope + v)
            return q + kv_a + kv_b + self.num_heads * v * h
        p = 2 * h * self.q_dim + 2 * h * self.kv_dim
        if self.qkv_bias:
            p += self.q_dim + 2 * self.kv_dim
        return p

    def mlp_params(self, layer: int) -> tuple[int, int]:
        """(total, active per token) MLP weights of one layer; MoE counts experts_per_token as active."""
        h = self.hidden_size
        if not self.is_moe or layer < self.first_dense_layers:
            p = 3 * h * self.intermediate_size
            return p, p
        im = self.moe_intermediate_size or self.intermediate_size
        expert = 3 * h * im
        shared = self.shared_experts * expert + 3 * h * self.shared_expert_intermediate_size
        router = h * self.num_experts
        return self.num_experts * expert + shared + router, self.experts_per_token * expert + shared + router

    def param_counts(self) -> tuple[int, int, int]:
        """(total, active per token, linear-layer) parameter counts from the architecture (cached)."""
        if self._counts is None:
            self._counts = self._param_counts()
        return self._counts

    def _param_counts(self) -> tuple[int, int, int]:
        emb = self.vocab_size * self.hidden_size
        head = 0 if self.tie_embeddings else emb
        attn = self.attn_params()
        total = active = linear = 0
        for layer in range(self.num_layers):
            mt, ma = self.mlp_params(layer)
            total += attn + mt + 2 * self.hidden_size
            active += attn + ma + 2 * self.hidden_size
            linear += attn + mt
        total += emb + head + self.hidden_size + self.extra_params
        active += emb + head + self.hidden_size + self.extra_params
        return total, active, linear


# --------------------------------------------------------------------------------- catalog
@cache
def catalog() -> dict[str, ModelArch]:
    """The built-in catalog, keyed by Hub id (read once)."""
    data = json.loads(_CATALOG_PATH.read_text())
    out: dict[str, ModelArch] = {}
    for row in data["models"]:
        row = dict(row)
        row.pop("aliases", None)
        src, mid = row.pop("source"), row.pop("id")
        out[mid] = ModelArch(name=mid, source=f"catalog ({src})", **row)
    return out


@cache
def _alias_index() -> dict[str, str]:
    data = json.loads(_CATALOG_PATH.read_text())
    idx: dict[str, str] = {}
    for row in data["models"]:
        for name in [row["id"], row["id"].split("/", 1)[-1], *row.get("aliases", [])]:
            idx[_norm(name)] = row["id"]
            idx[_norm(name.split("/", 1)[-1])] = row["id"]
    return idx


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-.]", "", name.lower())


def catalog_lookup(name: str) -> ModelArch | None:
    """Catalog entry by Hub id, short name or alias (case, dots and dashes ignored)."""
    key = _alias_index().get(_norm(name)) or _alias_index().get(_norm(name.split("/", 1)[-1]))
    return catalog()[key] if key else None


# ------------------------------------------------------------------------ config parsing
def _get(cfg: dict[str, Any], *keys: str, default: Any = None) -> Any:
    for k in keys:
        if cfg.get(k) is not None:
            return cfg[k]
    return default


def _quant_from_config(cfg: dict[str, Any]) -> tuple[StoredQuant, int | None]:
    q = cfg.get("quantization_config") or cfg.get("compression_config")
    if not isinstance(q, dict):
        return "none", None
    method = str(q.get("quant_method", "")).lower()
    bits = q.get("bits") or q.get("w_bit")
    if method == "awq":
        return "awq", int(bits or 4)
    if method == "gptq":
        return "gptq", int(bits or 4)
    if method in ("fp8", "fbgemm_fp8"):
        return "fp8", 8
    if method == "bitsandbytes":
        return ("bnb-4bit", 4) if q.get("load_in_4bit") else ("bnb-8bit", 8)
    if method == "compressed-tensors":
        text = json.dumps(q).lower()
        if '"num_bits": 8' in text and '"type": "float"' in text:
            return "fp8", 8
        if '"num_bits": 4' in text:
            return "gptq", 4
    return "other", int(bits) if bits else None


def arch_from_config(cfg: dict[str, Any], name: str, source: str) -> ModelArch:
    """Build a :class:`ModelArch` from a Hugging Face ``config.json`` dict (text_config for multimodal)."""
    text = cfg.get("text_config") if isinstance(cfg.get("text_config"), dict) else cfg
    model_type = str(text.get("model_type") or cfg.get("model_type") or "llama")
    try:
        h = int(_get(text, "hidden_size", "n_embd", "d_model"))
        layers = int(_get(text, "num_hidden_layers", "n_layer", "num_layers"))
        heads = int(_get(text, "num_attention_heads", "n_head"))
        vocab = int(_get(text, "vocab_size", default=_get(cfg, "vocab_size")))
    except (TypeError, ValueError) as e:
        raise InvalidInput(
            f"config.json of {name!r} lacks hidden_size / num_hidden_layers / num_attention_heads / vocab_size.",
            "Point `model` at a decoder-only LLM checkpoint (or a catalog name).",
        ) from e
    inter = int(_get(text, "intermediate_size", "ffn_dim", "n_inner", default=4 * h))
    kv = int(_get(text, "num_key_value_heads", "num_kv_heads", default=heads))
    head_dim = int(_get(text, "head_dim", default=h // heads))
    tie_default = model_type.startswith("gemma")
    tied = bool(_get(text, "tie_word_embeddings", default=_get(cfg, "tie_word_embeddings", default=tie_default)))
    experts = int(_get(text, "num_local_experts", "num_experts", "n_routed_experts", default=0) or 0)
    top_k = int(_get(text, "num_experts_per_tok", "moe_topk", default=2 if experts else 0) or 0)
    sliding = _get(text, "sliding_window")
    frac = 0.0
    if sliding and text.get("use_sliding_window", True) is not False:
        types = text.get("layer_types")
        if isinstance(types, list) and types:
            frac = sum(1 for t in types if "sliding" in str(t)) / len(types)
        elif text.get("sliding_window_pattern"):
            p = int(text["sliding_window_pattern"])
            frac = (p - 1) / p if p > 1 else 1.0
        elif model_type.startswith("gemma2"):
            frac = 0.5
        else:
            frac = 1.0
    if frac == 0.0:
        sliding = None
    quant, bits = _quant_from_config(cfg)
    dtype = str(_get(cfg, "torch_dtype", "dtype", default=_get(text, "torch_dtype", "dtype", default="bfloat16")))
    kv_lora = text.get("kv_lora_rank")
    if kv_lora:
        head_dim = int(text.get("qk_nope_head_dim", 128)) + int(text.get("qk_rope_head_dim", 64))
    return ModelArch(
        name=name,
        source=source,
        model_type=model_type,
        hidden_size=h,
        intermediate_size=inter,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=kv,
        head_dim=head_dim,
        vocab_size=vocab,
        tie_embeddings=tied,
        qkv_bias=bool(text.get("attention_bias") or model_type.startswith("qwen2")),
        num_experts=experts,
        experts_per_token=top_k if experts else 0,
        moe_intermediate_size=int(_get(text, "moe_intermediate_size", default=inter if experts else 0) or 0),
        shared_experts=int(_get(text, "n_shared_experts", default=0) or 0),
        shared_expert_intermediate_size=int(_get(text, "shared_expert_intermediate_size", default=0) or 0),
        first_dense_layers=int(_get(text, "first_k_dense_replace", default=0) or 0),
        sliding_window=int(sliding) if sliding else None,
        sliding_fraction=frac,
        kv_lora_rank=int(kv_lora) if kv_lora else None,
        q_lora_rank=int(text["q_lora_rank"]) if text.get("q_lora_rank") else None,
        qk_nope_head_dim=text.get("qk_nope_head_dim"),
        qk_rope_head_dim=text.get("qk_rope_head_dim"),
        v_head_dim=text.get("v_head_dim"),
        max_position=_get(text, "max_position_embeddings", "n_positions"),
        stored_dtype=dtype.removeprefix("torch."),
        stored_quantization=quant,
        quant_bits=bits,
    )


# ---------------------------------------------------------------------------- safetensors
def _read_header(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > 100_000_000:
            raise InvalidInput(f"{path} does not look like a safetensors file.", "Remove or fix the file.")
        return json.loads(f.read(n))


def read_safetensors_dir(d: Path) -> tuple[int, int, dict[str, int]] | None:
    """(elements, bytes, elements per dtype) over every ``*.safetensors`` header in ``d``; None if none."""
    files = sorted(d.glob("*.safetensors"))
    if not files:
        return None
    elems = total = 0
    by_dtype: dict[str, int] = {}
    for f in files:
        for key, t in _read_header(f).items():
            if key == "__metadata__":
                continue
            n = 1
            for s in t["shape"]:
                n *= int(s)
            elems += n
            start, end = t["data_offsets"]
            total += int(end) - int(start)
            by_dtype[t["dtype"]] = by_dtype.get(t["dtype"], 0) + n
    return elems, total, by_dtype


def _with_counts(arch: ModelArch, counts: tuple[int, int, dict[str, int]] | None) -> ModelArch:
    if counts is None:
        return arch
    elems, nbytes, by_dtype = counts
    upd: dict[str, Any] = {"checkpoint_bytes": nbytes}
    if arch.stored_quantization == "none":
        upd["checkpoint_params"] = elems
        main = max(by_dtype, key=by_dtype.__getitem__)
        upd["stored_dtype"] = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}.get(main, arch.stored_dtype)
        if main.startswith("F8"):
            upd["stored_quantization"] = "fp8"
    return arch.model_copy(update=upd)


def _from_dir(d: Path, name: str, source: str) -> ModelArch:
    try:
        cfg = json.loads((d / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise InvalidInput(f"{d / 'config.json'} is not readable JSON: {e}.", "Fix or replace config.json.") from e
    arch = arch_from_config(cfg, name, source)
    return _with_counts(arch, read_safetensors_dir(d))


# ----------------------------------------------------------------------------- HF cache / Hub
def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def _from_cache(repo_id: str) -> ModelArch | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a hard dependency
        return None
    path = try_to_load_from_cache(repo_id, "config.json")
    if not isinstance(path, str):
        return None
    return _from_dir(Path(path).parent, repo_id, f"HF cache ({Path(path).parent})")


def _from_hub(repo_id: str) -> ModelArch | None:
    """config.json and safetensors metadata from the Hub; None when unreachable or unknown."""
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download
        from huggingface_hub.utils import HfHubHTTPError
    except ImportError:  # pragma: no cover
        return None
    try:
        cfg_path = hf_hub_download(repo_id, "config.json", etag_timeout=5)
        arch = arch_from_config(json.loads(Path(cfg_path).read_text()), repo_id, "Hugging Face Hub")
    except (HfHubHTTPError, OSError, ValueError):
        return None
    try:
        meta = get_safetensors_metadata(repo_id)
        by_dtype = dict(meta.parameter_count)
        elems = sum(by_dtype.values())
        nbytes = int(sum(n * _DTYPE_BYTES.get(dt, 2) for dt, n in by_dtype.items()))
        arch = _with_counts(arch, (elems, nbytes, by_dtype))
    except (HfHubHTTPError, OSError, ValueError, KeyError):
        pass  # config alone is enough: counts then come from the architecture
    return arch


def _is_dir(p: Path) -> bool:
    """Like ``Path.is_dir`` but False for what cannot be a path at all (too long, a NUL byte...)."""
    try:
        return p.is_dir()
    except (OSError, ValueError):
        return False


def resolve_model(model: str) -> ModelArch:
    """Find ``model`` (local dir → HF cache → catalog → Hub) or raise :class:`NotFound`."""
    if not isinstance(model, str) or not model.strip():
        raise InvalidInput("`model` is empty.", "Give a Hub id, a local directory with config.json, or a catalog name.")
    model = model.strip()
    p = Path(model).expanduser()
    if _is_dir(p):
        if not (p / "config.json").is_file():
            raise InvalidInput(f"{p} has no config.json.", "Point `model` at the checkpoint directory itself.")
        return _from_dir(p, str(p), f"local directory {p}")
    is_repo = "/" in model and is_hub_id(model)  # org/name: worth a cache or Hub lookup (tools/model_ref.py)
    if is_repo:
        hit = _from_cache(model)
        if hit is not None:
            return hit
    hit = catalog_lookup(model)
    if hit is not None:
        return hit
    if is_repo and not _offline():
        hit = _from_hub(model)
        if hit is not None:
            return hit
    raise NotFound(
        f"Unknown model {model!r}: not a local directory, not in the Hugging Face cache, not in the built-in "
        f"catalog{', and the Hub is off (HF_HUB_OFFLINE)' if _offline() else ', and not found on the Hub'}.",
        "Pass a local directory that holds config.json, download the model into the HF cache "
        "(huggingface-cli download <id> config.json), or use a catalog name such as 'meta-llama/Llama-3.1-8B'.",
    )
