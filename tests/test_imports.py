"""The import structure: the layer contracts of .importlinter hold (bench reads top-down, acseg imports nothing of
bench), and no two modules import each other even indirectly, counting every import statement (function-local
ones included: grimp reads them all)."""

import grimp
from importlinter.cli import lint_imports

from tests.conftest import ROOT


def test_the_import_contracts_hold():
    assert lint_imports(config_filename=str(ROOT / ".importlinter"), no_cache=True, no_logo=True) == 0


def strongly_connected(graph: grimp.ImportGraph) -> list[set[str]]:
    """Tarjan's strongly connected components of more than one module: each is an import cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[set[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.find_modules_directly_imported_by(module):
            if imported not in index:
                visit(imported)
                low[module] = min(low[module], low[imported])
            elif imported in on_stack:
                low[module] = min(low[module], index[imported])
        if low[module] == index[module]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(component)

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return cycles


def test_no_import_cycle_anywhere():
    graph = grimp.build_graph("bench", "acseg", include_external_packages=False, cache_dir=None)
    assert len(graph.modules) > 50  # the whole harness was read
    assert strongly_connected(graph) == []


def test_a_cycle_is_found_where_there_is_one(tmp_path, monkeypatch):
    """The check sees a cycle made of function-local imports."""
    package = tmp_path / "loopy"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("def f():\n    from loopy import b\n")
    (package / "b.py").write_text("def g():\n    from loopy.a import f\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert strongly_connected(grimp.build_graph("loopy", cache_dir=None)) == [{"loopy.a", "loopy.b"}]
