"""Plug-ins know only core: no registered module imports another, and neither the app nor
the config names one; every registered stage declares typed columns."""
import ast
import re
from pathlib import Path

import pyarrow as pa

from pipeline import stages

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at any depth (lazy imports in functions too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


def test_no_registered_module_imports_another():
    names = {module.__name__ for module in stages.REGISTRY}
    assert len(names) >= 12
    for module in stages.REGISTRY:
        others = (imported_modules(Path(module.__file__)) & names) - {module.__name__}
        assert not others, f"{module.__name__} imports {sorted(others)}"


def test_the_app_and_the_config_name_no_section():
    sections = {module.SECTION for module in stages.REGISTRY}
    for name in ("app.py", "config.py"):
        text = (PIPELINE / name).read_text()
        named = {s for s in sections if re.search(rf"\b{s}\b", text)}
        assert not named, f"{name} names {sorted(named)}"


def test_every_stage_declares_typed_columns():
    modules = stages.registered_stages()
    assert modules, "no registered stage"
    for module in modules:
        stage = module.STAGE
        assert stage.name == module.SECTION and stage.label, module.__name__
        for name, type_ in stage.outputs:
            assert isinstance(name, str) and isinstance(type_, pa.DataType), (module.__name__, name)
        assert set(stage.optional) <= {name for name, _ in stage.outputs}
