"""The package's shape, read from its source: the import graph has no cycle, the library never
reaches the experiment, importing the library loads none of it, modules stay small, the public names
exist, and no file points at material outside the package.

The graph is built with ``ast`` from every ``import`` / ``from ... import`` of ``mixout_theory...``,
those inside functions included; ``from mixout_theory.experiment import data`` is an edge to the
module ``mixout_theory.experiment.data`` (an imported name that is no module is an edge to the module
it comes from). "Module level" means executed on import: anywhere but inside a function body.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "mixout_theory"
EXPERIMENT = "mixout_theory.experiment"
ENTRY_POINTS = {"mixout_theory.cli", "mixout_theory.__main__"}
MAX_LINES = 800
#: How a file would point at notes kept outside the repository (spelled in pieces, so this file does not).
OUTSIDE_REFERENCES = ("paper" + "-notes", "shared" + "/")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(current: str, node: ast.ImportFrom) -> str:
    """The absolute module named by a ``from`` import (relative ones resolved against ``current``)."""
    if not node.level:
        return node.module or ""
    is_package = MODULES[current].name == "__init__.py"
    base = current.split(".")
    base = base[: len(base) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def _targets(current: str, node) -> list[str]:
    """The package's modules an import statement makes ``current`` depend on."""
    out = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            if alias.name.split(".")[0] == "mixout_theory":
                out.append(alias.name)
    elif isinstance(node, ast.ImportFrom):
        module = _resolve(current, node)
        if module.split(".")[0] == "mixout_theory":
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                out.append(sub if sub in MODULES else module)
    for target in out:
        assert target in MODULES, f"{current} imports {target}, which is no module of the package"
    return out


class _Imports(ast.NodeVisitor):
    """Collect (target, at_module_level) for every import of the package in one module."""

    def __init__(self, current: str):
        self.current, self.depth, self.found = current, 0, []

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_Import(self, node):
        self.found += [(t, self.depth == 0) for t in _targets(self.current, node)]

    visit_ImportFrom = visit_Import


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph = {}
    for name, path in MODULES.items():
        visitor = _Imports(name)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        graph[name] = {t for t, top in visitor.found if (top or not module_level_only) and t != name}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path ``[a, b, ..., a]``, or None (iterative depth-first search)."""
    state = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph[nxt])))
    return None


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


LIBRARY = sorted(
    m for m in MODULES if not (m == EXPERIMENT or m.startswith(EXPERIMENT + ".")) and m not in ENTRY_POINTS
)


def test_the_graph_sees_the_packages_modules_and_imports():
    """A guard for the tests below: the graph is not empty and resolves names to modules."""
    assert {
        "mixout_theory",
        "mixout_theory.mixing",
        "mixout_theory.cli",
        EXPERIMENT,
        "mixout_theory.experiment.data",
        "mixout_theory.experiment.plots",
    } <= set(MODULES)
    top, full = _graph(True), _graph(False)
    assert "mixout_theory.mixing" in top["mixout_theory.modules"]  # from mixout_theory import mixing
    assert (
        "mixout_theory.experiment.mlp" in top["mixout_theory.experiment.engine"]
    )  # from ...experiment import mlp
    assert (
        "mixout_theory.experiment.studies" in full["mixout_theory.cli"] - top["mixout_theory.cli"]
    )  # in a function
    assert "mixout_theory.experiment.machine" in full["mixout_theory.experiment.store"]  # run_env's import
    assert "mixout_theory.experiment.engine" in full["mixout_theory.experiment.machine"]  # resolve_device's
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_cycle_among_module_level_imports():
    cycle = _cycle(_graph(module_level_only=True))
    assert cycle is None, "import cycle at module level: " + " -> ".join(cycle)


def test_no_cycle_with_function_level_imports():
    cycle = _cycle(_graph(module_level_only=False))
    assert cycle is None, "import cycle (function-level imports included): " + " -> ".join(cycle)


def test_the_library_never_imports_the_experiment():
    full = _graph(module_level_only=False)
    for name in LIBRARY:
        direct = sorted(t for t in full[name] if t == EXPERIMENT or t.startswith(EXPERIMENT + "."))
        assert not direct, f"{name} imports {direct}"
        reached = sorted(t for t in _reachable(full, name) if t.startswith(EXPERIMENT) or t in ENTRY_POINTS)
        assert not reached, f"{name} reaches {reached}"
    assert {"mixout_theory", "mixout_theory.mixing", "mixout_theory.figures", "mixout_theory.cases"} <= set(
        LIBRARY
    )


@pytest.mark.parametrize(
    "statement",
    [
        "import mixout_theory",
        "import mixout_theory.cli",
        "from mixout_theory import figures, modules, penalty, cases, bounds, profiles",
    ],
)
def test_importing_the_library_loads_no_experiment_module(statement):
    code = (
        f"{statement}; import sys; "
        "print('\\n'.join(sorted(m for m in sys.modules if m.startswith('mixout_theory'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    loaded = out.stdout.split()
    assert "mixout_theory" in loaded and "mixout_theory.mixing" in loaded
    assert not [m for m in loaded if m == EXPERIMENT or m.startswith(EXPERIMENT + ".")], loaded


def test_no_module_is_over_the_line_budget():
    sizes = {name: len(path.read_text().splitlines()) for name, path in MODULES.items()}
    too_long = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not too_long, f"modules over {MAX_LINES} lines: {too_long}"


def test_public_names_exist():
    import mixout_theory

    names = mixout_theory.__all__
    assert len(names) == len(set(names)), "duplicates in __all__"
    missing = [n for n in names if not hasattr(mixout_theory, n)]
    assert not missing, missing
    for gone in (
        "load_experiment",
        "Member",
        "train_ensemble",
        "effective_l2",
        "run_ablations",
        "DataIntegrityError",
    ):
        assert gone not in names and not hasattr(mixout_theory, gone), gone


def test_no_file_points_outside_the_project():
    """The project's files stand on their own: no reference to notes kept outside the repository."""
    offenders = []
    files = [
        p
        for folder in (PACKAGE, ROOT / "docs", ROOT / "notebooks", ROOT / "benchmarks")
        for p in folder.rglob("*")
    ]
    files += [ROOT / "README.md", ROOT / "data" / "README.md"]
    for path in sorted(files):
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".png", ".pdf"):
            text = path.read_bytes()
            offenders += [
                f"{path.relative_to(ROOT)}: {word}" for word in OUTSIDE_REFERENCES if word.encode() in text
            ]
    assert not offenders, offenders
