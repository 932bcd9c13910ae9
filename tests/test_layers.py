"""The layers, held by where a file stands rather than by a list of file names.

Each package of loopsim has a rank; a module may import its own package and anything
ranked below it, never above. A new file under ``loopsim/researcher/`` is blind to
check-ins because of the folder it is in.
"""

from __future__ import annotations

import ast
import inspect
import shutil
from pathlib import Path

import pytest

from loopsim.record.store import Store

PACKAGE = Path(__file__).parent.parent / "loopsim"

# Lowest first. The base modules are single files; the rest are packages.
RANKS = {
    name: rank
    for rank, names in enumerate(
        [
            ("errors", "text", "ids", "interrupts", "spec_errors"),
            ("schemas",),
            ("clock", "config"),
            ("record", "specs"),
            ("chat",),
            ("researcher",),
            ("checkin",),
            ("loop",),
            ("exports",),
            ("api",),
            ("service",),
            ("cli",),
            ("__main__", "testing"),
        ]
    )
    for name in names
}


def unit(path: Path, root: Path = PACKAGE) -> str:
    """The layer a file of the package belongs to: its package, or its module name."""
    return path.relative_to(root).with_suffix("").parts[0]


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


def package_files(root: Path = PACKAGE) -> list[Path]:
    root_init = root / "__init__.py"
    return sorted(p for p in root.rglob("*.py") if p != root_init)


def package_copy(tmp_path: Path) -> Path:
    """A copy of the package's source to plant a bad file in: the real tree is never
    written, so a test stopped midway leaves nothing behind, and tests reading the tree
    on another worker meanwhile never see the plant."""
    copy = tmp_path / "loopsim"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


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
    root = package_copy(tmp_path)
    planted = root / "researcher" / "_planted_for_test.py"
    planted.write_text("from loopsim.checkin import schedule\n")
    assert "checkin" in layers_imported(planted)
    assert RANKS["checkin"] > RANKS[unit(planted, root)]


def test_cli_command_modules_never_import_the_cli_root(tmp_path):
    """The root (``loopsim/cli/__init__.py``) imports each command module, never the
    reverse. ``doc.py`` is the one module above the root: it renders the whole app into
    docs/cli.md, and nothing in the package imports it, so it closes no circle."""

    def root_imports(path: Path) -> list[str]:
        """The imports in ``path`` (a file of a ``cli`` folder inside ``loopsim``) that
        reach the ``loopsim.cli`` package itself rather than one of its modules."""
        folder = path.parent
        here = ["loopsim", "cli"]

        def is_module(name: str) -> bool:
            return (folder / f"{name}.py").is_file() or (folder / name).is_dir()

        found = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found += [a.name for a in node.names if a.name == "loopsim.cli"]
            elif isinstance(node, ast.ImportFrom):
                base = here[: len(here) - node.level + 1] if node.level else []
                module = ".".join(base + ([node.module] if node.module else []))
                for alias in node.names:
                    if module == "loopsim.cli" and not is_module(alias.name):
                        found.append(f"from loopsim.cli import {alias.name}")
                    elif module == "loopsim" and alias.name == "cli":
                        found.append("from loopsim import cli")
        return found

    cli = PACKAGE / "cli"
    leaves = [p for p in sorted(cli.glob("*.py")) if p.name not in ("__init__.py", "doc.py")]
    assert len(leaves) >= 5, "the command modules were not found"
    for path in leaves:
        assert not root_imports(path), f"cli/{path.name} imports the cli root"
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            assert "loopsim.cli.doc" not in names, f"{path} imports cli/doc.py"

    # The rule can fail: each way of reaching the root is caught, a submodule is not.
    planted = tmp_path / "cli"
    planted.mkdir()
    (planted / "context.py").write_text("")
    cases = {
        "from loopsim.cli import app\n": True,
        "import loopsim.cli\n": True,
        "import loopsim.cli as root\n": True,
        "from loopsim import cli\n": True,
        "from . import app\n": True,
        "from .. import cli\n": True,
        "from loopsim.cli import context\n": False,
        "from loopsim.cli.context import app_context\n": False,
        "from . import context\n": False,
        "import loopsim.cli.context\n": False,
    }
    for source, caught in cases.items():
        (planted / "leaf.py").write_text(source)
        assert bool(root_imports(planted / "leaf.py")) is caught, source


def sqlalchemy_outside_record(paths: list[Path], root: Path = PACKAGE) -> list[Path]:
    """The files, outside ``loopsim/record/``, that import sqlalchemy (a Session included)."""
    return [
        path
        for path in paths
        if unit(path, root) != "record"
        and any(m == "sqlalchemy" or m.startswith("sqlalchemy.") for m in imports(path))
    ]


def test_only_the_record_imports_sqlalchemy():
    """The record is the only door to the tables: no other layer can build a query."""
    assert not sqlalchemy_outside_record(package_files())


def test_the_record_rule_catches_a_sqlalchemy_import(tmp_path):
    """The check above would pass on nothing; this one proves it can fail."""
    root = package_copy(tmp_path)
    assert sqlalchemy_outside_record(package_files(root), root) == []
    planted = root / "checkin" / "_planted_for_test.py"
    planted.write_text("from sqlalchemy.orm import Session\n")
    assert sqlalchemy_outside_record(package_files(root), root) == [planted]


def test_the_store_is_composed_of_small_query_classes():
    """One query class per noun, each short enough to read whole."""
    parts = [cls for cls in Store.__mro__ if cls.__module__.startswith("loopsim.record.")]
    assert len(parts) >= 8
    for cls in parts:
        lines, _ = inspect.getsourcelines(cls)
        assert len(lines) <= 200, f"{cls.__module__}.{cls.__qualname__}: {len(lines)} lines"


# Modules still over the limit while they are being split; each must leave this set as
# soon as it is short enough (the test below says so), and then the set stays empty.
OVER_500: set[str] = set()


def test_no_module_is_over_500_lines():
    sizes = {
        str(path.relative_to(PACKAGE)): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
    }
    over = {name for name, size in sizes.items() if size > 500}
    assert over <= OVER_500, f"split by noun: {sorted(over - OVER_500)}"
    short = OVER_500 - over
    assert not short, f"short enough now; remove from OVER_500: {sorted(short)}"
