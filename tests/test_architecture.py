"""The controller's import graph: no circles, dependencies point down, nothing heavy.

A static walk (``ast``) of every import statement in ``server/``, ``tools/`` and
``runners/`` without ``runners/payloads/`` — function-level imports and literal
``importlib.import_module("...")`` calls included, because a lazy import is still a
dependency and still closes a circle the first time it runs. Importing ``a.b.c`` also
runs the packages ``a`` and ``a.b``, so it counts as an import of those too. Imports
under ``if TYPE_CHECKING:`` never run: they count for the layer and heavy-package rules,
not for circles.

The rules (docs/architecture.md):

(a) no import cycle among controller modules;
(b) dependencies point down, ``server → tools → runners``: runners imports neither tools
    nor server, tools does not import server;
(c) no controller module imports torch, transformers, vllm, unsloth, trl, peft,
    bitsandbytes, datasets or lm_eval — nor does a payload module the controller
    imports (``runners/payloads/dataset_formats.py`` is shared with the fine-tune
    payload), at any level.

The walker itself is tested on a synthetic package, so these tests can fail.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONTROLLER = ("server", "tools", "runners")
NOT_CONTROLLER = ("runners.payloads",)  # runs on the GPU host, may import the heavy stack
LAYER = {"runners": 0, "tools": 1, "server": 2}  # an import may only go to the same or a lower number
HEAVY = frozenset({"torch", "transformers", "vllm", "unsloth", "trl", "peft", "bitsandbytes", "datasets", "lm_eval"})

# Known edges that other, open work still holds; each is removed here when its file is fixed.
# Every entry must exist (test_allow_list_is_not_stale), so the list can only shrink.
ALLOWED_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()  # none left (issue 19)


@dataclass(frozen=True)
class Edge:
    src: str
    dst: str
    line: int
    type_only: bool  # under ``if TYPE_CHECKING:``


# -- the walker ---------------------------------------------------------------------------
def module_files(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    """Dotted module name → file, for every .py under the given top-level packages."""
    out: dict[str, Path] = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve_relative(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def raw_imports(module: str, path: Path) -> list[tuple[str, list[str], int, bool]]:
    """(imported module, names taken from it, line, type_only) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found: list[tuple[str, list[str], int, bool]] = []

    def visit(node: ast.AST, type_only: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_only)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, [], node.lineno, type_only))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve_relative(module, is_pkg, node.level, node.module) if node.level else (node.module or "")
            found.append((target, [a.name for a in node.names], node.lineno, type_only))
        elif isinstance(node, ast.Call):
            fn = node.func
            name = fn.id if isinstance(fn, ast.Name) else fn.attr if isinstance(fn, ast.Attribute) else ""
            args = node.args
            if (
                name in ("import_module", "__import__")
                and args
                and isinstance(args[0], ast.Constant)
                and isinstance(args[0].value, str)
            ):
                found.append((args[0].value, [], node.lineno, type_only))
        for child in ast.iter_child_nodes(node):
            visit(child, type_only)

    visit(tree, False)
    return found


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts) + 1)]


def build_graph(root: Path, packages: Iterable[str]) -> tuple[dict[str, Path], list[Edge], list[tuple[str, str, int]]]:
    """Local modules, the edges among them, and every (module, external top-level package, line)."""
    files = module_files(root, packages)
    edges: list[Edge] = []
    external: list[tuple[str, str, int]] = []
    for mod, path in files.items():
        for target, names, line, type_only in raw_imports(mod, path):
            if not target:
                continue
            top = target.split(".")[0]
            if top not in packages:
                external.append((mod, top, line))
                continue
            dsts = [p for p in _with_parents(target) if p in files]
            # ``from pkg import sub`` imports the module pkg.sub when there is one.
            dsts += [f"{target}.{n}" for n in names if f"{target}.{n}" in files]
            for dst in dict.fromkeys(dsts):
                if dst != mod and not mod.startswith(dst + "."):  # a package's own parents ran already
                    edges.append(Edge(mod, dst, line, type_only))
    return files, edges, external


def find_cycles(nodes: Iterable[str], edges: Iterable[tuple[str, str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {n: set() for n in nodes}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return out


def is_controller(mod: str) -> bool:
    return not any(mod == p or mod.startswith(p + ".") for p in NOT_CONTROLLER)


def layer_violations(edges: Iterable[Edge]) -> list[str]:
    """One line per upward import statement, naming the deepest module it reaches."""
    worst: dict[tuple[str, int], str] = {}
    for e in edges:
        if not (is_controller(e.src) and is_controller(e.dst)):
            continue
        if LAYER[e.dst.split(".")[0]] > LAYER[e.src.split(".")[0]]:
            key = (e.src, e.line)
            if len(e.dst) > len(worst.get(key, "")):
                worst[key] = e.dst
    return [
        f"{src} (line {line}) imports {dst}: {src.split('.')[0]}/ must not import {dst.split('.')[0]}/"
        for (src, line), dst in sorted(worst.items())
    ]


def heavy_violations(
    files: dict[str, Path], edges: Iterable[Edge], external: Iterable[tuple[str, str, int]]
) -> list[str]:
    """Heavy imports in controller modules and in the payload modules the controller imports."""
    edges = list(edges)
    checked = {m for m in files if is_controller(m)}
    checked |= {e.dst for e in edges if is_controller(e.src) and not is_controller(e.dst)}
    return [f"{mod} (line {line}) imports {top}" for mod, top, line in external if mod in checked and top in HEAVY]


@functools.cache
def controller_graph() -> tuple[dict[str, Path], list[Edge], list[tuple[str, str, int]]]:
    return build_graph(ROOT, CONTROLLER)


def runtime_edges(edges: Iterable[Edge], allowed: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (e.src, e.dst)
        for e in edges
        if not e.type_only and is_controller(e.src) and is_controller(e.dst) and (e.src, e.dst) not in allowed
    ]


# -- the rules, on the real tree ----------------------------------------------------------
def test_no_import_cycle_among_controller_modules() -> None:
    files, edges, _ = controller_graph()
    nodes = [m for m in files if is_controller(m)]
    cycles = find_cycles(nodes, runtime_edges(edges, ALLOWED_CYCLE_EDGES))
    assert not cycles, "import cycles (move the shared part into its own lower module): " + "; ".join(
        " <-> ".join(c) for c in cycles
    )


def test_allow_list_is_not_stale() -> None:
    _, edges, _ = controller_graph()
    present = {(e.src, e.dst) for e in edges}
    stale = sorted(ALLOWED_CYCLE_EDGES - present)
    assert not stale, f"allow-listed edges no longer exist, remove them from ALLOWED_CYCLE_EDGES: {stale}"
    # and each one still closes a cycle (else it is not needed either)
    files, _, _ = controller_graph()
    nodes = [m for m in files if is_controller(m)]
    for edge in ALLOWED_CYCLE_EDGES:
        cycles = find_cycles(nodes, runtime_edges(edges, ALLOWED_CYCLE_EDGES - {edge}))
        assert any(edge[0] in c and edge[1] in c for c in cycles), f"{edge} closes no cycle any more: remove it"


def test_dependencies_point_down() -> None:
    _, edges, _ = controller_graph()
    bad = layer_violations(edges)
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_controller_imports_no_heavy_package() -> None:
    files, edges, external = controller_graph()
    bad = heavy_violations(files, edges, external)
    assert not bad, "the controller must stay light:\n" + "\n".join(bad)


def test_the_walk_sees_the_controller() -> None:
    """Guards the walker against silently finding nothing (a wrong root, a renamed package)."""
    files, edges, _ = controller_graph()
    pairs = {(e.src, e.dst) for e in edges}
    assert {"server.app", "tools.finetune", "runners.engine"} <= set(files)
    assert ("runners.engine", "runners.store") in pairs
    assert ("runners.factories", "runners.launchers.slurm") in pairs  # a function-level import is seen
    assert ("tools.memory", "tools.plan") in pairs  # a function-level import is seen
    assert not any(m.startswith("runners.payloads.") and is_controller(m) for m in files)


# -- the walker, on a synthetic package ----------------------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_walker_finds_a_cycle_through_a_lazy_import_and_a_package(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "runners/__init__.py": "",
            "runners/launchers/__init__.py": "def make():\n    from runners.launchers import slurm\n",
            "runners/launchers/slurm.py": "from runners import reconcile\n",
            # importing runners.launchers.base runs runners/launchers/__init__.py first
            "runners/reconcile.py": "from runners.launchers.base import Observation\n",
            "runners/launchers/base.py": "class Observation: ...\n",
            "runners/ok.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from runners import reconcile\n",
        },
    )
    files, edges, _ = build_graph(tmp_path, ["runners"])
    cycles = find_cycles(files, [(e.src, e.dst) for e in edges if not e.type_only])
    assert cycles == [["runners.launchers", "runners.launchers.slurm", "runners.reconcile"]]
    assert ("runners.ok", "runners.reconcile") in {(e.src, e.dst) for e in edges if e.type_only}


def test_walker_finds_import_module_and_relative_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "runners/__init__.py": "",
            "runners/transport.py": "import importlib\ndef f():\n    return importlib.import_module('runners.ssh')\n",
            "runners/ssh.py": "from .transport import f\n",
        },
    )
    files, edges, _ = build_graph(tmp_path, ["runners"])
    assert find_cycles(files, [(e.src, e.dst) for e in edges]) == [["runners.ssh", "runners.transport"]]


def test_walker_flags_upward_and_heavy_imports(tmp_path: Path) -> None:
    _write(
        tmp_path,
        {
            "server/__init__.py": "",
            "server/app.py": "from tools import gpus\n",
            "tools/__init__.py": "",
            "tools/gpus.py": "def f():\n    import torch\n",
            "runners/__init__.py": "",
            "runners/config.py": "from tools.gpus import f\nfrom runners.payloads import shared\n",
            "runners/payloads/__init__.py": "",
            "runners/payloads/shared.py": "import datasets\n",
            "runners/payloads/train.py": "import trl\n",  # not imported by the controller: allowed
        },
    )
    files, edges, external = build_graph(tmp_path, ["server", "tools", "runners"])
    assert layer_violations(edges) == ["runners.config (line 1) imports tools.gpus: runners/ must not import tools/"]
    assert sorted(heavy_violations(files, edges, external)) == [
        "runners.payloads.shared (line 1) imports datasets",
        "tools.gpus (line 2) imports torch",
    ]


# -- sizes --------------------------------------------------------------------------------
MAX_MODULE_LINES = 600
MAX_FUNCTION_LINES = 80
LONG_REASON = "Long because"  # a docstring line that starts so gives the one-line reason


def size_violations(root: Path, packages: Iterable[str], exclude: Iterable[str] = ()) -> list[str]:
    """Controller modules over MAX_MODULE_LINES; functions over MAX_FUNCTION_LINES without a reason.

    A function's length is its span from ``def`` to its last line (decorators, docstring and
    comments included: they are what a reader scrolls through). The reason is a docstring
    line starting with ``Long because``.
    """
    out: list[str] = []
    skip = tuple(exclude)
    for mod, path in module_files(root, packages).items():
        if mod.startswith(skip):
            continue
        text = path.read_text()
        n = len(text.splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{path.relative_to(root)}: {n} lines (> {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            span = (node.end_lineno or node.lineno) - node.lineno + 1
            doc = ast.get_docstring(node) or ""
            if span > MAX_FUNCTION_LINES and not any(ln.strip().startswith(LONG_REASON) for ln in doc.splitlines()):
                out.append(f"{path.relative_to(root)}:{node.lineno} {node.name}: {span} lines (> {MAX_FUNCTION_LINES})")
    return sorted(out)


def test_controller_modules_and_functions_are_small() -> None:
    found = size_violations(ROOT, CONTROLLER, exclude=NOT_CONTROLLER)
    assert not found, "split these (or give a function a docstring line 'Long because ...'):\n" + "\n".join(found)


def test_size_rule_can_fail(tmp_path: Path) -> None:
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    _write(
        tmp_path,
        {
            "tools/__init__.py": "",
            "tools/big.py": "def long_one():\n" + body,
            "tools/ok.py": 'def long_ok():\n    """Why.\n\n    Long because: a table.\n    """\n' + body,
            "tools/huge.py": "x = 1\n" * (MAX_MODULE_LINES + 1),
        },
    )
    assert size_violations(tmp_path, ["tools"]) == [
        f"tools/big.py:1 long_one: {MAX_FUNCTION_LINES + 1} lines (> {MAX_FUNCTION_LINES})",
        f"tools/huge.py: {MAX_MODULE_LINES + 1} lines (> {MAX_MODULE_LINES})",
    ]
