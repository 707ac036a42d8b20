"""Hypothesis strategies drawn from a tool's JSON input schema, plus hostile values.

``arguments(schema)`` yields argument objects that are mostly *valid-ish* (each field
drawn from its own schema, bounds and enums included) with a share of deliberate
violations: wrong types, out-of-range numbers, unknown keys, missing required fields,
and hostile strings (shell metacharacters, flag injection, path traversal, NUL,
control characters, very long values) in any string position. The generator is
ours rather than hypothesis-jsonschema's so the hostile values land where a shell
or an argv would see them.
"""

from __future__ import annotations

import re
from typing import Any

from hypothesis import strategies as st

__all__ = ["HOSTILE_STRINGS", "arguments", "hostile_strings"]

HOSTILE_STRINGS = [
    "$(touch /tmp/llmops-fuzz-canary)",
    "`touch /tmp/llmops-fuzz-canary`",
    "; touch /tmp/llmops-fuzz-canary",
    "&& touch /tmp/llmops-fuzz-canary",
    "| touch /tmp/llmops-fuzz-canary",
    "a\ntouch /tmp/llmops-fuzz-canary",
    "a\rb",
    "${IFS}x",
    "-rf",
    "--help",
    "--output=/etc/passwd",
    "-oProxyCommand=touch /tmp/llmops-fuzz-canary",
    "../../../../etc/passwd",
    "/etc/passwd",
    "~root/.ssh/id_rsa",
    "ext::sh -c touch% /tmp/llmops-fuzz-canary",
    "a\x00b",
    "\x1b[31mred",
    "'",
    '"',
    "\\",
    "%s%s%n",
    "{0}{1}",
    "*",
    "",
    " ",
    "\u202eevil",
    "ÿ\ud7ff漢字🙂",
    "x" * 5000,
    "A" * 200_001,
    "org/model",
    "meta-llama/Llama-3.1-8B-Instruct",
    "Qwen/Qwen2.5-0.5B",
    "auto",
    "none",
    "env:HOME",
    "1",
    "-1",
    "00:00:01",
    "99999-00:00:00",
]


def hostile_strings() -> st.SearchStrategy[str]:
    return st.sampled_from(HOSTILE_STRINGS)


_JUNK = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def _resolve(root: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref and ref.startswith("#/$defs/"):
        return root.get("$defs", {}).get(ref.rsplit("/", 1)[-1], {})
    return node


def _string(node: dict[str, Any], hostile: bool) -> st.SearchStrategy[str]:
    lo, hi = node.get("minLength", 0), node.get("maxLength")
    parts: list[st.SearchStrategy[str]] = []
    pattern = node.get("pattern")
    if pattern:
        try:
            re.compile(pattern)
            rx = st.from_regex(pattern, fullmatch=True)
            parts.append(rx.filter(lambda s: len(s) >= lo and (hi is None or len(s) <= hi)))
        except re.error:
            pass
    parts.append(st.text(min_size=lo, max_size=min(hi if hi is not None else 40, 40)))
    if hostile:
        parts.append(hostile_strings())
    return st.one_of(*parts)


def _number(node: dict[str, Any], integer: bool, hostile: bool = True) -> st.SearchStrategy[Any]:
    lo = node.get("minimum", node.get("exclusiveMinimum"))
    hi = node.get("maximum", node.get("exclusiveMaximum"))
    edges = [v for v in (lo, hi) if v is not None]
    if integer:
        lo_i = int(lo) if lo is not None else -(10**6)
        hi_i = int(hi) if hi is not None else 10**7
        base: st.SearchStrategy[Any] = st.integers(min_value=min(lo_i, hi_i), max_value=max(lo_i, hi_i))
        edge_vals = [int(e) for e in edges] + [int(e) - 1 for e in edges] + [int(e) + 1 for e in edges]
    else:
        base = st.floats(min_value=lo, max_value=hi, allow_nan=False, allow_infinity=False)
        edge_vals = [*edges, *(e - 1e-9 for e in edges), *(e + 1e-9 for e in edges)]
    if not hostile:  # in range only: the bounds themselves where inclusive
        inside = [v for v in (node.get("minimum"), node.get("maximum")) if v is not None]
        return st.one_of(base, st.sampled_from(inside)) if inside else base
    extra = [0, -1, 2**31, 2**63, -(2**63)] if integer else [0.0, -1.0, 1e308, -1e308, 5e-324]
    return st.one_of(base, st.sampled_from(edge_vals + extra))


def value(root: dict[str, Any], node: dict[str, Any], depth: int = 0, hostile: bool = True) -> st.SearchStrategy[Any]:
    """A value for ``node``: mostly within the schema, sometimes not (hostile)."""
    node = _resolve(root, node)
    if depth > 4:
        return st.none()
    if "const" in node:
        return st.just(node["const"])
    if "enum" in node:
        alts: list[st.SearchStrategy[Any]] = [st.sampled_from(node["enum"])]
        if hostile:
            alts.append(hostile_strings())
        return st.one_of(*alts)
    variants = node.get("anyOf") or node.get("oneOf")
    if variants:
        return st.one_of(*(value(root, v, depth + 1, hostile) for v in variants))
    t = node.get("type")
    if isinstance(t, list):
        return st.one_of(*(value(root, {**node, "type": x}, depth, hostile) for x in t))
    if t == "string":
        return _string(node, hostile)
    if t == "integer":
        return _number(node, True, hostile)
    if t == "number":
        return _number(node, False, hostile)
    if t == "boolean":
        return st.booleans()
    if t == "null":
        return st.none()
    if t == "array":
        items = node.get("items", {})
        max_items = min(node.get("maxItems", 4), 4)
        return st.lists(value(root, items, depth + 1, hostile), min_size=node.get("minItems", 0), max_size=max_items)
    if t == "object" or "properties" in node:
        return _object(root, node, depth + 1, hostile)
    return _JUNK


def _object(root: dict[str, Any], node: dict[str, Any], depth: int, hostile: bool) -> st.SearchStrategy[dict]:
    props = node.get("properties", {})
    required = set(node.get("required", []))
    if not props:
        extra = node.get("additionalProperties")
        vals = value(root, extra, depth, hostile) if isinstance(extra, dict) else _JUNK
        keys = st.one_of(st.from_regex(r"[A-Z_][A-Z0-9_]{0,12}", fullmatch=True), hostile_strings())
        return st.dictionaries(keys, vals, max_size=3)

    @st.composite
    def build(draw: st.DrawFn) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or draw(st.booleans()):
                out[name] = draw(value(root, sub, depth, hostile))
        return out

    return build()


def _string_fields(root: dict[str, Any], props: dict[str, Any]) -> list[str]:
    """Top-level fields that can hold a string (directly, in a union, or as list items)."""
    out = []
    for name, node in props.items():
        text = repr(_resolve(root, node))
        if "'string'" in text:
            out.append(name)
    return out


def arguments(
    schema: dict[str, Any],
    forced: dict[str, st.SearchStrategy[Any]] | None = None,
    plausible: dict[str, st.SearchStrategy[Any]] | None = None,
) -> st.SearchStrategy[dict]:
    """Arguments for a tool, in four shapes:

    * plausible (40 %): each field from ``plausible`` (known-good values by field name) or its schema;
    * one hostile (30 %): plausible, then one string field replaced by a hostile value;
    * random (15 %): every field from its schema, hostile strings anywhere;
    * broken (15 %): a required field dropped, an unknown key, a wrong type, or junk.

    ``forced`` fields are always set (``dry_run=True``: the fuzzer never starts real work).
    """
    forced = forced or {}
    plausible = plausible or {}
    props = schema.get("properties", {})
    required = set(schema.get("required", []))
    strings = _string_fields(schema, props)

    def finish(draw: st.DrawFn, args: dict[str, Any]) -> dict[str, Any]:
        for name, strat in forced.items():
            if name in props:
                args[name] = draw(strat)
        return args

    @st.composite
    def plausible_args(draw: st.DrawFn) -> dict[str, Any]:
        args: dict[str, Any] = {}
        for name, sub in props.items():
            if name in required or draw(st.integers(0, 3)) == 0:
                if name in plausible and draw(st.integers(0, 4)) > 0:
                    args[name] = draw(plausible[name])
                else:
                    args[name] = draw(value(schema, sub, 0, hostile=False))
        return finish(draw, args)

    @st.composite
    def one_hostile(draw: st.DrawFn) -> dict[str, Any]:
        args = draw(plausible_args())
        if strings:
            name = draw(st.sampled_from(strings))
            bad = draw(hostile_strings())
            node = repr(_resolve(schema, props[name]))
            args[name] = [bad] if ("'array'" in node and draw(st.booleans())) else bad
        return finish(draw, args)

    @st.composite
    def random_args(draw: st.DrawFn) -> dict[str, Any]:
        return finish(draw, draw(_object(schema, schema, 0, True)))

    @st.composite
    def broken(draw: st.DrawFn) -> dict[str, Any]:
        args = draw(plausible_args())
        how = draw(st.sampled_from(["drop_required", "extra_key", "wrong_type", "junk"]))
        if how == "drop_required" and required:
            args.pop(draw(st.sampled_from(sorted(required))), None)
        elif how == "extra_key":
            args[draw(st.sampled_from(["__proto__", "extra", "x" * 300, "constructor"]))] = draw(_JUNK)
        elif how == "wrong_type" and props:
            args[draw(st.sampled_from(sorted(props)))] = draw(_JUNK)
        else:
            args = draw(st.dictionaries(st.sampled_from(sorted(props) or ["a"]), _JUNK, max_size=4))
        return finish(draw, args)

    return st.one_of(
        plausible_args(),
        plausible_args(),
        plausible_args(),
        plausible_args(),
        one_hostile(),
        one_hostile(),
        one_hostile(),
        random_args(),
        random_args() if props else plausible_args(),
        broken(),
    )
