"""The packages' import directions: api -> scheduler -> {models, kv_cache}, with tasks beside the
scheduler. A lower floor never imports a higher one, and the two bottom floors never each other.
Read from the source (ast), so imports inside functions and under TYPE_CHECKING count too."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

FORBIDDEN = {
    "models": {"scheduler", "api", "tasks", "kv_cache"},
    "kv_cache": {"scheduler", "api", "tasks", "models"},
    "scheduler": {"api", "tasks"},
}


def imported_packages(package: str) -> dict[str, set[str]]:
    """Top-level package of every absolute import in each .py file of `package`, by file."""
    found = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        names = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_import_points_upward(package):
    files = imported_packages(package)
    assert files, f"no source files found under {package}/"
    wrong = {f: sorted(names & FORBIDDEN[package]) for f, names in files.items() if names & FORBIDDEN[package]}
    assert not wrong, f"{package}/ must not import {sorted(FORBIDDEN[package])}: {wrong}"


def test_the_walk_sees_imports():
    """The check above is only worth something if it finds the imports that do exist."""
    scheduler = set().union(*imported_packages("scheduler").values())
    assert {"models", "kv_cache", "torch"} <= scheduler
    assert "huggingface_hub" in imported_packages("models")["models/loader.py"]  # imported inside a function
