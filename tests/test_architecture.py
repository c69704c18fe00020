"""The house rules of the source tree (docs/design-notes.md), checked so that they hold.

* no import cycle between modules (imports at module level, outside ``if TYPE_CHECKING:``;
  imports inside functions are deliberate late imports and do not count);
* no name with a leading underscore imported from another module;
* no source file over 500 lines;
* ``train()`` readable in one sitting (its body at most 50 lines);
* building the command line imports no torch (``neuroflood --help`` answers at once).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"


def _modules() -> dict[str, Path]:
    mods = {}
    for f in (SRC / "neuroflood").rglob("*.py"):
        parts = list(f.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        mods[".".join(parts)] = f
    return mods


def _absolute(module: str, is_package: bool, node: ast.ImportFrom) -> str | None:
    if not node.level:
        return node.module
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _module_level_imports(body: list[ast.stmt]) -> list[ast.stmt]:
    """Import statements that run when the module is imported (not under TYPE_CHECKING)."""
    out: list[ast.stmt] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            out += _module_level_imports(node.body) + _module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            out += _module_level_imports(node.body)
            for h in node.handlers:
                out += _module_level_imports(h.body)
            out += _module_level_imports(node.orelse) + _module_level_imports(node.finalbody)
    return out


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        for node in _module_level_imports(ast.parse(path.read_text()).body):
            if isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name in mods}
                continue
            target = _absolute(name, path.name == "__init__.py", node)
            for a in node.names:
                sub = f"{target}.{a.name}"
                deps.add(sub if sub in mods else target)
        graph[name] = {d for d in deps if d in mods and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                if len(comp) > 1:
                    found.append(sorted(comp))
    return found


def test_no_import_cycle():
    assert _cycles(_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_private_name_is_imported_from_another_module():
    found = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(name, path.name == "__init__.py", node)
                found += [f"{name} imports {source}.{a.name}" for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
    assert found == []


def test_no_source_file_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in (SRC / "neuroflood").rglob("*.py") if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}


def test_train_reads_in_one_sitting():
    tree = ast.parse((SRC / "neuroflood" / "train" / "loop.py").read_text())
    (train,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "train"]
    first = train.body[1] if isinstance(train.body[0], ast.Expr) and isinstance(train.body[0].value, ast.Constant) else train.body[0]
    assert train.end_lineno - first.lineno + 1 <= 50


def test_the_command_line_is_built_without_torch():
    code = "import sys, neuroflood.cli as c; c.build_parser(); print(sorted(m for m in ('torch', 'scipy', 'h5py', 'zarr') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
