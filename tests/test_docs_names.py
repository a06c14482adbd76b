"""The names the README's and the docs' Python examples use exist: each `from resnets... import
a, b` imports, each `resnets.name(...)` on the top-level package is there (a new user pastes
these first; two of them once named functions that lived elsewhere)."""

import ast
import importlib
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _python_blocks(path: Path) -> list[ast.Module]:
    return [ast.parse(block) for block in BLOCK.findall(path.read_text())]


def _uses(tree: ast.Module) -> list[tuple[str, str]]:
    """(module, name) for each `from resnets... import name` and `resnets.name` in `tree`."""
    uses = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "resnets":
            uses += [(node.module, alias.name) for alias in node.names]
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "resnets":
            uses.append(("resnets", node.attr))
    return uses


def test_the_docs_have_python_examples_to_check():
    uses = [use for path in DOCS for tree in _python_blocks(path) for use in _uses(tree)]
    assert len(uses) >= 20 and ("resnets.train", "load_trained") in uses
    nested = ast.parse("from resnets.train import (fit,\n    nope as other)\nresnets.x(1)")
    assert _uses(nested) == [("resnets.train", "fit"), ("resnets.train", "nope"),
                             ("resnets", "x")]


@pytest.mark.parametrize("path", DOCS, ids=lambda path: path.name)
def test_every_name_a_python_example_imports_or_calls_exists(path):
    missing = [f"{module}.{name}" for tree in _python_blocks(path)
               for module, name in _uses(tree)
               if not hasattr(importlib.import_module(module), name)]
    assert not missing, f"{path.name}: {missing}"
