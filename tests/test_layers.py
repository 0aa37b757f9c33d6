"""The packages import one way: policies/ and workloads/ at the bottom, serving/ above them,
simulator/ above serving/, orchestrator/ on top; and no module imports itself back through others.

Read from the source with ``ast`` (every ``import`` statement, also the ones inside functions, which
run later but still tie the modules together), so a back edge fails here before anyone runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What each package may import from this repository (besides itself).
ALLOWED = {
    "policies": set(),
    "workloads": set(),
    "serving": {"policies", "workloads"},
    "simulator": {"policies", "workloads", "serving"},
    "orchestrator": {"policies", "workloads", "serving", "simulator"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Modules of this repository that ``path`` imports (``from a.b import c`` counts ``a.b.c`` when
    that is a module, else ``a.b``)."""
    pkg = module_name(path).split(".") if path.name == "__init__.py" else module_name(path).split(".")[:-1]
    out = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            subs = {f"{base}.{a.name}" for a in node.names}
            out |= subs
            if not all(_exists(m) for m in subs):  # something from the package's __init__ itself
                out.add(base)
    return {m for m in out if m.split(".")[0] in ALLOWED and _exists(m)}


def _runtime_nodes(tree: ast.AST):
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            yield from (n for stmt in node.orelse for n in _runtime_nodes_of(stmt))
            continue
        yield from _runtime_nodes_of(node)


def _runtime_nodes_of(node: ast.AST):
    yield node
    yield from _runtime_nodes(node)


def _exists(module: str) -> bool:
    p = REPO.joinpath(*module.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def graph() -> dict[str, set[str]]:
    files = [p for pkg in ALLOWED for p in (REPO / pkg).rglob("*.py")]
    return {module_name(p): imports(p) - {module_name(p)} for p in files}


def back_edges(g: dict[str, set[str]]) -> list[str]:
    """``"a.x -> b.y"`` for every import of a package that ``ALLOWED`` does not list for it."""
    return sorted(f"{m} -> {t}" for m, targets in g.items() for t in targets
                  if t.split(".")[0] != m.split(".")[0] and t.split(".")[0] not in ALLOWED[m.split(".")[0]])  # fmt: skip


def cycle(g: dict[str, set[str]]) -> list[str] | None:
    """One import cycle among the modules of ``g``, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for t in sorted(g.get(m, ())):
            if state.get(t) == 1:
                return path[path.index(t):] + [t]
            if not state.get(t) and (found := visit(t)):
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(g):
        if not state.get(m) and (found := visit(m)):
            return found
    return None


def test_packages_import_only_layers_below():
    back = back_edges(graph())
    assert not back, "imports against the layer order:\n" + "\n".join(back)


def test_no_import_cycles_between_modules():
    found = cycle(graph())
    assert found is None, "import cycle: " + " -> ".join(found)


def test_the_checks_catch_a_back_edge_and_a_cycle():
    g = graph()
    assert back_edges({**g, "serving.sneaky": {"orchestrator.grid"}}) == ["serving.sneaky -> orchestrator.grid"]
    assert back_edges({**g, "policies.sneaky": {"workloads.trace"}}) == ["policies.sneaky -> workloads.trace"]
    assert cycle({**g, "workloads.trace": g["workloads.trace"] | {"workloads.loaders"}}) is not None
