"""Imports point down: core at the bottom, engines on core, stages never on engines or the app;
no import cycle between the packages of `pipeline/`; product code never imports
`pipeline.testing`.

A package is a sub-folder of `pipeline/` (`core`, `train`, `stages`, ...) or a top-level module
(`app`, `blocklist`, ...). Every import counts, lazy ones inside functions included (the
whole syntax tree is walked), relative ones resolved, `from pipeline import x` read as
`pipeline.x`.
"""
import ast
import sys
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"
# The demo (`curate demo`) runs the product on the generated world served by the fake web,
# which live in pipeline.testing: it is the one product package allowed to import them.
TESTING_IMPORTERS = {"testing", "demo"}


def module_of(path: Path) -> list[str]:
    """`pipeline/train/loop.py` -> ["pipeline", "train", "loop"] (a package's `__init__` is the package)."""
    parts = ["pipeline", *path.relative_to(PIPELINE).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def imported_modules(path: Path) -> set[str]:
    """Every `pipeline` module (or name in one) that a file imports, at any depth."""
    own = module_of(path)
    package = own if path.name == "__init__.py" else own[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            found |= {module} | {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("pipeline.")}


def package_of(module: str) -> str:
    """`pipeline.train.loop` -> "train"; `pipeline.app` -> "app"."""
    return module.split(".")[1]


def all_imports() -> set[tuple[str, str]]:
    """(file relative to pipeline/, imported module) for every file of the package."""
    return {(str(path.relative_to(PIPELINE)), module)
            for path in sorted(PIPELINE.rglob("*.py")) if path != PIPELINE / "__init__.py"
            for module in imported_modules(path)}


def package_graph() -> dict[str, dict[str, set[str]]]:
    """package -> {package it imports: the files that do}."""
    graph: dict[str, dict[str, set[str]]] = {}
    for file, module in all_imports():
        source, target = Path(file).with_suffix("").parts[0], package_of(module)
        if source != target:
            graph.setdefault(source, {}).setdefault(target, set()).add(file)
    return graph


def reachable(graph: dict, start: str) -> set[str]:
    seen, pending = set(), [start]
    while pending:
        for target in graph.get(pending.pop(), {}):
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def cycles(graph: dict) -> list[list[str]]:
    """The groups of packages that import each other (directly or through others)."""
    reach = {node: reachable(graph, node) for node in graph}
    groups = {frozenset([node] + [other for other in reach[node] if node in reach.get(other, ())])
              for node in graph if node in reach[node]}
    return sorted(sorted(group) for group in groups)


def pipeline_imports(folder: str) -> set[tuple[str, str]]:
    """(file, imported pipeline module) for every import in a package, at any depth."""
    return {(file, module) for file, module in all_imports() if file.startswith(folder + "/")}


def test_no_import_cycle_between_packages():
    graph = package_graph()
    found = cycles(graph)
    detail = [f"{a} -> {b} ({', '.join(sorted(graph[a][b]))})"
              for group in found for a in group for b in group if b in graph.get(a, {})]
    assert not found, f"packages that import each other: {found}:\n" + "\n".join(detail)


def test_product_code_never_imports_the_testing_package():
    wrong = sorted((file, module) for file, module in all_imports()
                   if package_of(module) == "testing" and Path(file).parts[0] not in TESTING_IMPORTERS)
    assert not wrong, f"product code imports pipeline.testing: {wrong}"


def test_core_imports_only_core():
    above = {(f, m) for f, m in pipeline_imports("core")
             if not m.startswith(("pipeline.core", "pipeline.errors"))}
    assert not above, f"core imports modules above it: {sorted(above)}"


def test_engines_import_only_core():
    above = {(f, m) for f, m in pipeline_imports("engines")
             if not m.startswith(("pipeline.core", "pipeline.errors", "pipeline.engines"))}
    assert not above, f"engines import modules above core: {sorted(above)}"


def test_stages_never_import_engines_or_the_app():
    wrong = {(f, m) for f, m in pipeline_imports("stages")
             if m.startswith(("pipeline.engines", "pipeline.app"))}
    assert not wrong, sorted(wrong)


def test_the_checks_see_lazy_relative_and_package_imports(tmp_path, monkeypatch):
    """The import reader itself: a lazy import, a relative one and `from pipeline import x`."""
    package = tmp_path / "pipeline"
    (package / "a").mkdir(parents=True)
    (package / "b").mkdir()
    (package / "a" / "__init__.py").write_text("from . import helper\n")
    (package / "a" / "helper.py").write_text("def f():\n    from pipeline.b.thing import x\n")
    (package / "b" / "__init__.py").write_text("")
    (package / "b" / "thing.py").write_text("from pipeline import a\nfrom ..testing.world import y\n")
    monkeypatch.setattr(sys.modules[__name__], "PIPELINE", package)
    assert package_graph() == {"a": {"b": {"a/helper.py"}}, "b": {"a": {"b/thing.py"}, "testing": {"b/thing.py"}}}
    assert cycles(package_graph()) == [["a", "b"]]
