"""The architecture as written in pyproject.toml and DESIGN.md, checked on every test run.

- The floors (`[tool.importlinter]`): every import runs downward, no module-level cycles.
- No module imports a private (`_`) name from another room (subpackage or top-level module).
- No function over 60 lines and no file over 500 lines in src/, no function of the command line
  over 40: a function past a screen is usually doing two jobs.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "resnets"
LINT_IMPORTS = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))

MAX_FUNCTION_LINES = 60
MAX_CLI_FUNCTION_LINES = 40
MAX_FILE_LINES = 500


def _lint(root: Path) -> subprocess.CompletedProcess:
    """`lint-imports` on the package under `root/src`, with `root/pyproject.toml`'s contracts."""
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([LINT_IMPORTS, "--no-cache"], cwd=root, env=env, capture_output=True,
                          text=True, timeout=120)


def test_lint_imports_keeps_every_contract():
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, upward", [
    ("models/blocks.py", "resnets.train.schedule"),  # a model asking the training room
    ("data/augment.py", "resnets.models.blocks"),  # data and models never meet
    ("train/schedule.py", "resnets.cli.types"),  # nothing below the command line imports it
])
def test_lint_imports_fails_on_an_injected_upward_import(tmp_path, module, upward):
    shutil.copytree(PACKAGE, tmp_path / "src" / "resnets",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    target = tmp_path / "src" / "resnets" / module
    target.write_text(target.read_text() + f"\nimport {upward}  # injected\n")
    result = _lint(tmp_path)
    assert result.returncode != 0
    importer = "resnets." + module.removesuffix(".py").replace("/", ".")
    assert f"{importer} -> {upward}" in result.stdout, result.stdout


def _room(module: str) -> str:
    """`resnets.train.loop` -> `train`; a top-level module is a room of its own."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _sources():
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        yield path, module.removesuffix(".__init__"), ast.parse(path.read_text(), str(path))


def _imported_names(module: str, is_package: bool, tree: ast.AST):
    """(module imported from, name) for every `from X import name` in `tree`."""
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")[: len(module.split(".")) + is_package - node.level]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                yield source, alias.name


def test_no_module_imports_a_private_name_of_another_room():
    crossings = []
    for path, module, tree in _sources():
        for source, name in _imported_names(module, path.name == "__init__.py", tree):
            private = name.startswith("_") and not name.startswith("__")
            if source.startswith("resnets") and private and _room(source) != _room(module):
                crossings.append(f"{module} imports {source}.{name}")
    assert not crossings


def _too_long(text: str, module: str) -> list[str]:
    """What in the source `text` of `module` is over its limit."""
    found = []
    lines = len(text.splitlines())
    if lines > MAX_FILE_LINES:
        found.append(f"{module}: {lines} lines")
    limit = MAX_CLI_FUNCTION_LINES if _room(module) == "cli" else MAX_FUNCTION_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                found.append(f"{module}.{node.name}: {length} lines (limit {limit})")
    return found


def test_no_long_function_or_file_in_src():
    too_long = [part for path, module, _ in _sources()
                for part in _too_long(path.read_text(), module)]
    assert not too_long


def test_the_size_check_finds_what_is_over_its_limit():
    """The check above can fail: a 61-line function, a 41-line command-line function and a
    501-line file are each found."""
    def function(lines: int) -> str:
        return "def f():\n" + "".join(f"    x = {i}\n" for i in range(lines - 1))

    assert _too_long(function(60), "resnets.train.x") == []
    assert _too_long(function(61), "resnets.train.x") == ["resnets.train.x.f: 61 lines (limit 60)"]
    assert _too_long(function(41), "resnets.cli.x") == ["resnets.cli.x.f: 41 lines (limit 40)"]
    assert _too_long("x = 1\n" * 501, "resnets.atomic") == ["resnets.atomic: 501 lines"]
