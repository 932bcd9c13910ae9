"""After the Quickstart, the next command works (issue 14, item 9): the package data is
declared so setuptools has nothing to warn about, and the demo's "next:" line runs as
printed."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from loopsim.cli.demo import own_command
from loopsim.testing.stubserver import StubOpenAI

ROOT = Path(__file__).parent.parent


def test_every_folder_of_the_package_is_declared_to_setuptools():
    """A folder of files under loopsim/ that `packages` leaves out is what makes
    setuptools print its "Package would be ignored" banner during `pip install`."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    for folder in (ROOT / "loopsim").rglob("*"):
        if not folder.is_dir() or folder.name == "__pycache__":
            continue
        if any(f.is_file() and f.suffix != ".pyc" for f in folder.iterdir()):
            name = ".".join(folder.relative_to(ROOT).parts)
            assert name in declared, f"{name} is not in [tool.setuptools] packages"
    for package, patterns in config["package-data"].items():
        if not package.startswith("loopsim."):
            continue
        where = ROOT.joinpath(*package.split("."))
        if where.exists():
            for pattern in patterns:
                assert list(where.glob(pattern)), f"{package}: {pattern} matches nothing"


def test_own_command_is_what_the_user_can_type(tmp_path, monkeypatch):
    script = tmp_path / ".venv" / "bin" / "loopsim"
    script.parent.mkdir(parents=True)
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated
    assert own_command(".venv/bin/loopsim") == ".venv/bin/loopsim"
    monkeypatch.setenv("PATH", f"{script.parent}:/usr/bin:/bin")  # activated
    assert own_command(".venv/bin/loopsim") == "loopsim"
    assert own_command(str(script)) == "loopsim"
    assert own_command("/x/loopsim/__main__.py").endswith(" -m loopsim")


def test_the_demo_next_line_works_as_printed(tmp_path):
    """A real `demo` (on a stub OpenAI-compatible model) from the repo root; then the
    command it printed after "next:" is run as printed, from the same folder."""
    env = {
        **os.environ,
        "LOOPSIM_MODEL": "openai:stub-model",
        "LOOPSIM_API_KEY": "stub-key-for-tests",
    }
    env.pop("LOOPSIM_DATABASE_URL", None)
    database = tmp_path / "my demo.db"  # a space: the printed path must be quoted
    with StubOpenAI() as stub:
        env["LOOPSIM_MODEL_BASE_URL"] = stub.base_url
        demo = subprocess.run(
            [
                sys.executable,
                "-m",
                "loopsim",
                "--db",
                str(database),
                "demo",
                "--days",
                "2",
                "--report",
                str(tmp_path / "demo-report.md"),
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert demo.returncode == 0, demo.stderr
    (line,) = [ln for ln in demo.stderr.splitlines() if ln.startswith("next: ")]
    command = shlex.split(line.removeprefix("next: "))
    shown = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, (line, shown.stderr)
    assert "day 1" in shown.stdout
    assert "day 2" in shown.stdout


@pytest.mark.integration
def test_the_quickstart_install_runs_no_import_hook_at_start_up(tmp_path):
    """`make setup`'s install adds no code to Python's start-up: a hook run from a .pth
    file (setuptools' default editable finder) takes long enough that a Ctrl-C in the
    first tenth of a second ends in "Fatal Python error" and a traceback, before loopsim
    can catch it. A module added later is still found, after the next `make`."""
    tree = tmp_path / "clone"
    listed = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        target = tree / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, target)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}

    def make_setup() -> None:
        done = subprocess.run(
            ["make", "setup", "PIP_FLAGS=--no-deps", f"PYTHON={sys.executable}"],
            cwd=tree,
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    make_setup()
    python = tree / ".venv" / "bin" / "python"
    start = subprocess.run(
        [str(python), "-X", "importtime", "-c", "pass"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    hooks = [ln for ln in start.stderr.splitlines() if "loopsim" in ln]
    assert hooks == [], hooks
    version = subprocess.run(
        [str(tree / ".venv" / "bin" / "loopsim"), "--version"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert version.stdout.startswith("loopsim "), version.stderr
    (tree / "loopsim" / "added_later.py").write_text('"""A module added after setup."""\n')
    make_setup()
    added = subprocess.run(
        [str(python), "-c", "import loopsim.added_later"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stderr
