"""The names the README's and the docs' Python examples use exist: each `from resnets... import
a, b` imports, each `resnets.name(...)` on the top-level package is there (a new user pastes
these first; two of them once named functions that lived elsewhere)."""

import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)
IMPORT = re.compile(r"^\s*from (resnets[\w.]*) import \(?([\w, \n]+?)\)?\s*(?:#.*)?$", re.M)
TOP_LEVEL = re.compile(r"\bresnets\.(\w+)\(")


def _python_blocks(path: Path) -> list[str]:
    return BLOCK.findall(path.read_text())


def test_the_docs_have_python_examples_to_check():
    assert sum(len(_python_blocks(path)) for path in DOCS) >= 5
    assert any("from resnets.train import" in block for path in DOCS
               for block in _python_blocks(path))


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_name_a_python_example_imports_or_calls_exists(path):
    import resnets

    missing = []
    for block in _python_blocks(path):
        for module_name, names in IMPORT.findall(block):
            module = importlib.import_module(module_name)
            missing += [f"{module_name}.{name}" for name in re.split(r"[,\s]+", names)
                        if name and not hasattr(module, name)]
        missing += [f"resnets.{name}" for name in TOP_LEVEL.findall(block)
                    if not hasattr(resnets, name)]
    assert not missing, f"{path.name}: {missing}"
