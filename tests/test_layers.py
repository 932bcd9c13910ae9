"""The boundary worth more than the rest: prompt-building code cannot see check-ins."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "loopsim"
BLIND = ("amplify.py", "researcher.py", "view.py")
FORBIDDEN = {
    "loopsim.checkin",
    "loopsim.drift",
    "loopsim.loop",
    "loopsim.cli",
    "loopsim.cli_checkin",
}


def imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_prompt_builders_never_import_checkin_code():
    for name in BLIND:
        assert not imports(PACKAGE / name) & FORBIDDEN, name


def test_store_and_lower_layers_never_import_upward():
    upper = {
        "loopsim.loop",
        "loopsim.cli",
        "loopsim.checkin",
        "loopsim.researcher",
        "loopsim.view",
        "loopsim.export",
    }
    for name in ("store.py", "models.py", "db.py", "chat.py", "schemas.py", "config.py"):
        assert not imports(PACKAGE / name) & upper, name
