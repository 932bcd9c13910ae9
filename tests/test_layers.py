"""The layers, held by where a file stands rather than by a list of file names.

Each package of loopsim has a rank; a module may import its own package and anything
ranked below it, never above. A new file under ``loopsim/researcher/`` is blind to
check-ins because of the folder it is in.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from loopsim.record.store import Store

PACKAGE = Path(__file__).parent.parent / "loopsim"

# Lowest first. The base modules are single files; the rest are packages.
RANKS = {
    name: rank
    for rank, names in enumerate(
        [
            ("errors", "text", "ids"),
            ("schemas",),
            ("clock", "config"),
            ("record",),
            ("chat",),
            ("researcher",),
            ("checkin",),
            ("loop",),
            ("exports",),
            ("service",),
            ("cli",),
            ("__main__", "testing"),
        ]
    )
    for name in names
}


def unit(path: Path) -> str:
    """The layer a file of the package belongs to: its package, or its module name."""
    return path.relative_to(PACKAGE).with_suffix("").parts[0]


def imports(path: Path) -> set[str]:
    """Every loopsim module (and imported name) a file imports, at any depth."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def layers_imported(path: Path) -> set[str]:
    return {m.split(".")[1] for m in imports(path) if m.startswith("loopsim.")}


def package_files() -> list[Path]:
    root_init = PACKAGE / "__init__.py"
    return sorted(p for p in PACKAGE.rglob("*.py") if p != root_init)


def test_every_layer_has_a_rank():
    assert {unit(p) for p in package_files()} <= set(RANKS)


@pytest.mark.parametrize("path", package_files(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_imports_a_layer_above_its_own(path):
    own = RANKS[unit(path)]
    # __version__ is an attribute of the package root, which every layer may read.
    upward = {
        layer
        for layer in layers_imported(path) - {"__version__"}
        if layer in RANKS and RANKS[layer] > own
    }
    assert not upward, f"{path.relative_to(PACKAGE)} imports {sorted(upward)}"


def test_the_researcher_package_cannot_see_check_ins():
    forbidden = {"checkin", "loop", "service", "cli", "exports", "testing"}
    for path in (PACKAGE / "researcher").rglob("*.py"):
        assert not layers_imported(path) & forbidden, path.name


def test_nothing_in_the_package_imports_the_testing_helpers():
    for path in package_files():
        if unit(path) != "testing":
            assert "testing" not in layers_imported(path), path


def test_the_layer_rule_catches_an_upward_import(tmp_path):
    """The checks above would pass on nothing; this one proves they can fail."""
    planted = PACKAGE / "researcher" / "_planted_for_test.py"
    planted.write_text("from loopsim.checkin import schedule\n")
    try:
        assert "checkin" in layers_imported(planted)
        assert RANKS["checkin"] > RANKS[unit(planted)]
    finally:
        planted.unlink()


def sqlalchemy_outside_record(paths: list[Path]) -> list[Path]:
    """The files, outside ``loopsim/record/``, that import sqlalchemy (a Session included)."""
    return [
        path
        for path in paths
        if unit(path) != "record"
        and any(m == "sqlalchemy" or m.startswith("sqlalchemy.") for m in imports(path))
    ]


def test_only_the_record_imports_sqlalchemy():
    """The record is the only door to the tables: no other layer can build a query."""
    assert not sqlalchemy_outside_record(package_files())


def test_the_record_rule_catches_a_sqlalchemy_import():
    """The check above would pass on nothing; this one proves it can fail."""
    planted = PACKAGE / "checkin" / "_planted_for_test.py"
    planted.write_text("from sqlalchemy.orm import Session\n")
    try:
        assert sqlalchemy_outside_record(package_files()) == [planted]
    finally:
        planted.unlink()


def test_the_store_is_composed_of_small_query_classes():
    """One query class per noun, each short enough to read whole."""
    parts = [cls for cls in Store.__mro__ if cls.__module__.startswith("loopsim.record.")]
    assert len(parts) >= 8
    for cls in parts:
        lines, _ = inspect.getsourcelines(cls)
        assert len(lines) <= 200, f"{cls.__module__}.{cls.__qualname__}: {len(lines)} lines"


# Modules still over the limit while they are being split; each must leave this set as
# soon as it is short enough (the test below says so), and then the set stays empty.
OVER_500 = {"cli/__init__.py", "researcher/conversation.py", "service/worker.py"}


def test_no_module_is_over_500_lines():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    over = {name for name, size in sizes.items() if size > 500}
    assert over <= OVER_500, f"split by noun: {sorted(over - OVER_500)}"
    short = OVER_500 - over
    assert not short, f"short enough now; remove from OVER_500: {sorted(short)}"
