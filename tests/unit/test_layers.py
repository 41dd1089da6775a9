"""Imports follow the layers of ``recsys_batch`` (issue #29, item 8).

config/errors < data < model < evaluation < run, and publish sits on data (the API imports
``publish.keys`` without the engine). A helper two layers share lives in the lower one. Every
import counts, those inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "recsys_batch"
ALLOWED = {
    "rules": {"errors", "rules"},  # standard library only: the API and evaluate share it
    "data": {"config", "errors", "data"},
    "model": {"config", "errors", "data", "model"},
    "evaluation": {"config", "errors", "data", "model", "evaluation", "rules"},
    "publish": {"config", "errors", "data", "publish", "rules"},
}


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of every ``recsys_batch`` import in ``path``."""
    found: list[tuple[str, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found.extend((alias.name, []) for alias in node.names)
    return [(module, names) for module, names in found if module.startswith("recsys_batch")]


def _layer(module: str, names: list[str]) -> set[str]:
    """The layers an import reaches: ``from recsys_batch import model`` reaches ``model``."""
    parts = module.split(".")
    if len(parts) > 1:
        return {parts[1]}
    return set(names)


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_a_layer_imports_only_the_layers_below(layer: str) -> None:
    """Catches ``data/validation.py`` importing ``model.split`` or ``publish/run_log.py``
    importing ``run.records`` again."""
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}: {module}"
        for path in sorted((PACKAGE / layer).glob("*.py"))
        for module, names in _imports(path)
        if not _layer(module, names) <= ALLOWED[layer]
    ]
    assert wrong == []


def test_no_module_imports_another_modules_private_name() -> None:
    """Catches ``config.py`` importing ``keys._PREFIX_RE`` again instead of ``check_prefix``."""
    private = [
        f"{path.relative_to(PACKAGE.parent)}: {module}.{name}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for module, names in _imports(path)
        for name in names
        if name.startswith("_")
    ]
    assert private == []
