"""Layering: core at the bottom, engines on core, stages never on engines."""
import ast
from pathlib import Path

PIPELINE = Path(__file__).resolve().parents[2] / "pipeline"


def pipeline_imports(folder: str) -> set[tuple[str, str]]:
    """(file, imported pipeline module) for every import in a package, at any depth."""
    found = set()
    for path in sorted((PIPELINE / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            found |= {(path.name, n) for n in names if n.startswith("pipeline.")}
    return found


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


def test_stages_never_import_the_testing_package():
    wrong = {(f, m) for folder in ("core", "engines", "stages", "download", "crawl", "clip")
             for f, m in pipeline_imports(folder) if m.startswith("pipeline.testing")}
    assert not wrong, sorted(wrong)
