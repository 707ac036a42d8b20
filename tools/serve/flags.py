"""The ``vllm serve`` command line, built from a typed spec by reflection.

Why reflection: vLLM itself derives its argparse flags from its ``EngineArgs``
dataclass (``snake_case`` → ``--kebab-case``, ``bool`` → ``--x/--no-x``). We
mirror that on our side: :class:`VllmServeArgs` holds the options we set, with
vLLM's own defaults as field defaults, and :func:`to_argv` emits a flag only where
a value differs from vLLM's default. So the command stays short, and a field we
add can never be rendered inconsistently with the others.

Why the host's own flag list: vLLM renames and removes flags between releases.
The flags a host accepts are parsed once from its ``vllm serve --help=all``
(:func:`parse_help`), cached per host and version in the state directory
(:class:`FlagCache`), and every emitted flag — ours and the agent's ``extra_args``
— is checked against them before anything is started. On a host whose version is
not known yet, the server job runs that help itself before vLLM starts and fails on
a wrong flag (the help takes ~30 s, too long for a tool call to wait):
:func:`build_extra_argv_unchecked` then checks everything but the flags' existence. ``extra_args`` values are
validated (no leading ``-``, no control characters, the flag's choices); they go
into an argv list, never through a shell.

The API key is not here on purpose: it reaches vLLM as ``VLLM_API_KEY`` through the
job's 0600 env file, never on the command line (``ps`` would show it).
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from runners.errors import InvalidInput
from tools.model_ref import check_arg

__all__ = [
    "MANAGED_FLAGS",
    "MULTINODE_TASK_FLAGS",
    "SERVED_NAME_RE",
    "FlagCache",
    "FlagInfo",
    "KnownFlags",
    "LoraModule",
    "MaxLoraRank",
    "VllmServeArgs",
    "build_extra_argv",
    "build_extra_argv_unchecked",
    "check_multinode_flags",
    "flag_name",
    "parse_help",
    "to_argv",
]

MaxLoraRank = Literal[1, 8, 16, 32, 64, 128, 256, 320, 512]
MAX_LORA_RANKS: tuple[int, ...] = (1, 8, 16, 32, 64, 128, 256, 320, 512)
SERVED_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}$")  # a name clients pass as `model`


def check_served_name(v: str) -> str:
    """The one rule for a served name (an adapter's, a server's): what clients pass as `model`."""
    if not SERVED_NAME_RE.match(v):
        raise ValueError(f"{v!r} is not a valid served name (letters, digits, _.:/@+-, not starting with '-')")
    return v


ServedName = Annotated[str, AfterValidator(check_served_name)]
_FLAG_RE = re.compile(r"^[a-z0-9][a-z0-9-]*(?:\.[a-z0-9_-]+)*$")
_CTRL_RE = re.compile(r"[\x00-\x1f\x7f]")
# Flags that are ours to set (typed parameters) or must never appear on a command line.
MANAGED_FLAGS: dict[str, str] = {
    "api-key": "the API key reaches vLLM as VLLM_API_KEY through the job's 0600 env file (api_key parameter)",
    "host": "the server binds where the runner can reach it; it is chosen per host",
    "port": "use the port parameter",
    "model": "use the model parameter",
}


class LoraModule(BaseModel):
    """One adapter vLLM loads at start: requests name it as their ``model``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: ServedName = Field(description="Name clients use as `model` to get this adapter.")
    path: str = Field(description="Adapter directory on the host (adapter_config.json + weights).")
    base_model_name: str | None = Field(None, description="The base model's served name, if not the first.")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v or v.startswith("-") or _CTRL_RE.search(v):
            raise ValueError(f"{v!r} is not a usable adapter path")
        return v

    def cli_value(self) -> str:
        """``name=path`` (vLLM's short form), or its JSON form where the short one would be ambiguous."""
        if self.base_model_name is None and "=" not in self.path and "=" not in self.name:
            return f"{self.name}={self.path}"
        doc: dict[str, str] = {"name": self.name, "path": self.path}
        if self.base_model_name:
            doc["base_model_name"] = self.base_model_name
        return json.dumps(doc, separators=(",", ":"))


class VllmServeArgs(BaseModel):
    """The ``vllm serve`` options we set. Defaults are vLLM 0.26's own, so only changes are emitted.

    ``model`` is the positional argument; every other field becomes ``--field-name``.
    """

    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub id or directory on the host.", json_schema_extra={"cli": "positional"})
    served_model_name: list[str] | None = Field(None, description="Names clients use; default: the model string.")
    tensor_parallel_size: int = Field(1, ge=1, le=64)
    pipeline_parallel_size: int = Field(1, ge=1, le=64)
    max_model_len: int | None = Field(None, ge=16, le=10_485_760)
    gpu_memory_utilization: float = Field(0.92, gt=0.0, le=1.0)  # vllm/config/cache.py CacheConfig
    dtype: Literal["auto", "bfloat16", "float16", "float32", "half", "float"] = "auto"
    kv_cache_dtype: str = Field("auto", description="auto, bfloat16, fp8, fp8_e4m3, fp8_e5m2 (host's choices).")
    quantization: str | None = Field(None, description="vLLM method name: fp8, bitsandbytes, awq, gptq, ...")
    enable_prefix_caching: bool | None = None
    max_num_seqs: int | None = Field(None, ge=1, le=65_536)
    enable_lora: bool = False
    max_loras: int = Field(1, ge=1, le=256)
    max_lora_rank: MaxLoraRank = 16
    lora_modules: list[LoraModule] | None = None
    # Several nodes (vLLM's multiprocessing backend): the same on every node; the per-node
    # --node-rank/--master-addr/--master-port/--headless are added on the node (serve payload).
    nnodes: int = Field(1, ge=1, le=64)
    distributed_executor_backend: Literal["mp", "ray", "uni", "external_launcher"] | None = None
    host: str | None = None
    port: int = Field(8000, ge=1, le=65535)

    @field_validator("model")
    @classmethod
    def _model(cls, v: str) -> str:
        return check_arg(v, "model")

    @field_validator("served_model_name")
    @classmethod
    def _served(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if not v:
                raise ValueError("served_model_name needs at least one name")
            for n in v:
                if not SERVED_NAME_RE.match(n):
                    raise ValueError(f"{n!r} is not a valid served name")
        return v

    @field_validator("kv_cache_dtype", "quantization")
    @classmethod
    def _word(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", v):
            raise ValueError(f"{v!r} is not a vLLM method name")
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if (v is not None and not re.fullmatch(r"[A-Za-z0-9.:-]{1,255}", v)) or (v or "").startswith("-"):
            raise ValueError(f"{v!r} is not a bind address")
        return v


def flag_name(field: str) -> str:
    """``max_model_len`` → ``max-model-len`` (vLLM's rule; it also accepts the underscore spelling)."""
    return field.replace("_", "-")


def _render(value: Any) -> str:
    if isinstance(value, LoraModule):
        return value.cli_value()
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def to_argv(args: VllmServeArgs, known: KnownFlags | None = None) -> list[str]:
    """The arguments after ``vllm serve``: the model, then each non-default field as a flag.

    With ``known`` (the host's flags), a flag that host's vLLM lacks is refused here,
    before anything starts, instead of in the job's log after minutes of loading.
    """
    out: list[str] = []
    flags: list[str] = []
    for name, info in type(args).model_fields.items():
        value = getattr(args, name)
        extra = info.json_schema_extra if isinstance(info.json_schema_extra, dict) else {}
        if extra.get("cli") == "positional":
            out.append(_render(value))
            continue
        if value == info.get_default(call_default_factory=True) or value is None:
            continue
        flag = flag_name(name)
        flags.append(flag)
        if isinstance(value, bool):
            out.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            out.append(f"--{flag}")
            out.extend(_render(v) for v in value)
        else:
            out += [f"--{flag}", _render(value)]
    if known is not None:
        for flag in flags:
            info = known.get(flag)
            if info is None:
                raise InvalidInput(
                    f"vLLM {known.version} on this host has no --{flag}, which this setting needs.",
                    "Upgrade vLLM on the host (0.26 or newer is tested), or leave that setting at its default.",
                )
            value = getattr(args, flag.replace("-", "_"))
            if info.choices and not isinstance(value, bool | list) and _render(value) not in info.choices:
                raise InvalidInput(
                    f"--{flag} {_render(value)} is not accepted by vLLM {known.version}.",
                    f"Use one of: {', '.join(info.choices)}.",
                )
    return out


# The flags each vLLM process of a server spanning nodes needs (the serve payload adds the per-node ones).
MULTINODE_TASK_FLAGS = ("nnodes", "node-rank", "master-addr", "master-port", "headless")


def check_multinode_flags(known: KnownFlags, host: str) -> None:
    """Refuse a server spanning nodes on a vLLM without its multiprocessing backend's flags."""
    lacking = [f for f in MULTINODE_TASK_FLAGS if known.get(f) is None]
    if lacking:
        raise InvalidInput(
            f"vLLM {known.version} on {host} has no --{', --'.join(lacking)}: it can't span "
            "nodes with its multiprocessing backend.",
            "Upgrade vLLM on the host (0.26 is tested), or serve on one node (nodes=1).",
        )


# --------------------------------------------------------------------- the host's flags
class FlagInfo(BaseModel):
    """One option of ``vllm serve`` as its --help=all shows it."""

    name: str = Field(description="Long name without dashes: max-model-len.")
    takes_value: bool = Field(description="False for switches (--x / --no-x).")
    negatable: bool = Field(False, description="A --no-NAME form exists.")
    choices: list[str] | None = Field(None, description="Allowed values, when the help lists them.")
    metavar: str | None = None


class KnownFlags(BaseModel):
    """All long options of one vLLM version's ``vllm serve``."""

    version: str
    flags: dict[str, FlagInfo]
    source: str = Field(description="Where the list came from (host and command, or a file).")

    def get(self, name: str) -> FlagInfo | None:
        name = name.removeprefix("--").replace("_", "-")
        if name in self.flags:
            return self.flags[name]
        if name.startswith("no-") and name[3:] in self.flags and self.flags[name[3:]].negatable:
            return self.flags[name[3:]]
        return None


# `  --dtype {auto,bfloat16}`  `  --port PORT`  `  --enable-x, --no-enable-x`  `  --tensor-parallel-size TP, -tp TP`
_OPT_LINE = re.compile(r"^  (-{1,2}[A-Za-z0-9][^ ].*)$")  # argparse indents options by exactly 2
_OPT = re.compile(r"^(--?[A-Za-z0-9][A-Za-z0-9_.-]*)(?:[ =](.+))?$")


def _split_opts(invocation: str) -> list[str]:
    """``--a A, -b B`` → ['--a A', '-b B'], keeping commas inside ``{...}`` and ``[...]`` choices."""
    parts, depth, cur = [], 0, ""
    for ch in invocation:
        if ch in "{[":
            depth += 1
        elif ch in "}]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
            continue
        cur += ch
    if cur.strip():
        parts.append(cur.strip())
    return parts


def parse_help(text: str, version: str, source: str) -> KnownFlags:
    """Every long option of an argparse ``--help`` text (a pure function; tested on a recorded one)."""
    flags: dict[str, FlagInfo] = {}
    for raw in text.splitlines():
        m = _OPT_LINE.match(raw.rstrip())
        if not m:
            continue
        # argparse puts the help text two or more spaces after the invocation.
        invocation = re.split(r"\s{2,}", m.group(1).strip(), maxsplit=1)[0]
        longs: list[tuple[str, str | None]] = []
        for part in _split_opts(invocation):
            om = _OPT.match(part)
            if not om or not om.group(1).startswith("--"):
                continue
            longs.append((om.group(1)[2:], om.group(2)))
        if not longs:
            continue
        names = [n for n, _ in longs]
        negs = {n[3:] for n in names if n.startswith("no-") and n[3:] in names}
        for name, meta in longs:
            if name.startswith("no-") and name[3:] in negs:
                continue
            if name == "help":
                continue
            choices = None
            if meta and meta.startswith("{") and "}" in meta:
                choices = [c.strip() for c in meta[1 : meta.index("}")].split(",") if c.strip()]
            elif meta and meta.startswith("['") and meta.endswith("]"):  # vLLM prints some choices as a list
                choices = [c.strip().strip("'") for c in meta[1:-1].split(",") if c.strip()]
            flags[name] = FlagInfo(
                name=name, takes_value=meta is not None, negatable=name in negs, choices=choices, metavar=meta
            )
    if len(flags) < 20:
        raise InvalidInput(
            f"`vllm serve --help=all` ({source}) listed only {len(flags)} options; it did not look like vLLM's help.",
            "Check the host's vLLM install (python -m vllm.entrypoints.cli.main serve --help=all).",
        )
    return KnownFlags(version=version, flags=flags, source=source)


class FlagCache:
    """``<state_dir>/vllm-flags/<host>--<version>.json``: one parse per host and vLLM version."""

    def __init__(self, state_dir: str | Path) -> None:
        self.dir = Path(state_dir) / "vllm-flags"

    def _path(self, host: str, version: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{host}--{version}")
        return self.dir / f"{safe}.json"

    def get(self, host: str, version: str) -> KnownFlags | None:
        p = self._path(host, version)
        try:
            return KnownFlags.model_validate_json(p.read_text(encoding="utf-8"))
        except (OSError, ValidationError, ValueError):
            return None  # absent or from an older layout: read the host again

    def put(self, host: str, flags: KnownFlags) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        p = self._path(host, flags.version)
        tmp = p.with_suffix(".tmp")
        tmp.write_text(flags.model_dump_json(), encoding="utf-8")
        tmp.replace(p)


# ----------------------------------------------------------------------- extra_args
ExtraValue = str | int | float | bool | list[str | int | float] | dict[str, Any]


def _check_value(flag: str, value: str, info: FlagInfo, version: str) -> str:
    if _CTRL_RE.search(value):
        raise InvalidInput(f"The value of --{flag} holds a control character.", "Give a plain one-line value.")
    if value.startswith("-") and not re.fullmatch(r"-\d+(\.\d+)?(e-?\d+)?", value):
        raise InvalidInput(
            f"The value {value!r} of --{flag} starts with '-'.",
            "Values may not look like flags; give the value itself.",
        )
    if info.choices and value not in info.choices:
        raise InvalidInput(
            f"--{flag} {value!r} is not accepted by vLLM {version}.", f"Use one of: {', '.join(info.choices)}."
        )
    return value


def _extra_flag(key: str) -> str:
    """An ``extra_args`` key as a flag name (``max_num_batched_tokens`` → ``max-num-batched-tokens``)."""
    flag = key.strip().removeprefix("--").replace("_", "-")
    if not _FLAG_RE.match(flag):
        raise InvalidInput(f"extra_args key {key!r} is not a flag name.", "Use names like 'max_num_batched_tokens'.")
    return flag


def _refuse_reserved(names: Iterable[str], typed: set[str]) -> None:
    """Flags we set ourselves, or that start_vllm_server takes as parameters, never come through extra_args."""
    for name in names:
        if name in MANAGED_FLAGS:
            raise InvalidInput(
                f"--{name} can't be passed in extra_args: {MANAGED_FLAGS[name]}.", "Remove it from extra_args."
            )
        if name in typed or name.replace("-", "_") in VllmServeArgs.model_fields:
            raise InvalidInput(
                f"--{name} is a parameter of start_vllm_server.",
                f"Pass {name.replace('-', '_')}=... instead of putting it in extra_args.",
            )


def build_extra_argv(extra: dict[str, ExtraValue], known: KnownFlags, typed: set[str]) -> list[str]:
    """Validated flags for ``extra_args``; ``typed`` are flag names our own parameters already set."""
    out: list[str] = []
    for key, value in extra.items():
        flag = _extra_flag(key)
        base = flag[3:] if flag.startswith("no-") and flag[3:] in known.flags else flag
        _refuse_reserved((base,), typed)
        info = known.get(flag)
        if info is None:
            close = difflib.get_close_matches(flag, list(known.flags), n=3, cutoff=0.6)
            hint = (
                f"Did you mean {', '.join('--' + c for c in close)}?"
                if close
                else f"Run `vllm serve --help=all` on the host for the {len(known.flags)} flags it knows."
            )
            raise InvalidInput(f"vLLM {known.version} on this host has no flag --{flag}.", hint)
        if flag != base:  # --no-x given as a key
            if value is not True:
                raise InvalidInput(f"--{flag} is a switch.", f"Use {{'{base}': false}} or {{'{flag}': true}}.")
            out.append(f"--{flag}")
            continue
        if isinstance(value, bool):
            if not info.takes_value:
                if value:
                    out.append(f"--{flag}")
                elif info.negatable:
                    out.append(f"--no-{flag}")
                else:
                    raise InvalidInput(f"--{flag} can only be switched on.", f"Drop {key!r} from extra_args.")
                continue
            out += [f"--{flag}", _check_value(flag, _render(value), info, known.version)]
            continue
        if not info.takes_value:
            raise InvalidInput(
                f"--{flag} is a switch and takes no value ({value!r} given).", f"Use {{'{key}': true}} (or false)."
            )
        if isinstance(value, list):
            if not value:
                raise InvalidInput(f"extra_args {key!r} is an empty list.", "Give at least one value.")
            out.append(f"--{flag}")
            out.extend(_check_value(flag, _render(v), info, known.version) for v in value)
            continue
        out += [f"--{flag}", _check_value(flag, _render(value), info, known.version)]
    return out


def build_extra_argv_unchecked(extra: dict[str, ExtraValue], typed: set[str]) -> list[str]:
    """``extra_args`` before the host's flags are known: names and values checked here, the
    flags' existence and choices by the server job on the host before vLLM starts
    (runners/payloads/serve.py ``check_flags``). ``True`` is ``--x``, ``False`` ``--no-x``."""
    out: list[str] = []
    for key, value in extra.items():
        flag = _extra_flag(key)
        base = flag[3:] if flag.startswith("no-") else flag
        _refuse_reserved(dict.fromkeys((flag, base)), typed)
        free = FlagInfo(name=flag, takes_value=True)
        if isinstance(value, bool):
            if flag != base and value is not True:
                raise InvalidInput(f"--{flag} is a switch.", f"Use {{'{base}': false}} or {{'{flag}': true}}.")
            out.append(f"--{flag}" if value else f"--no-{flag}")
        elif isinstance(value, list):
            if not value:
                raise InvalidInput(f"extra_args {key!r} is an empty list.", "Give at least one value.")
            out.append(f"--{flag}")
            out.extend(_check_value(flag, _render(v), free, "on this host") for v in value)
        else:
            out += [f"--{flag}", _check_value(flag, _render(value), free, "on this host")]
    return out
