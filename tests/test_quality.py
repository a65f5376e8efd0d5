"""The repository passes its own linters, type checker and strict docs build.

Each tool runs as ``python -m TOOL`` with the interpreter running the tests. A tool
that is not installed fails its test, unless ``OTEL_MTLS_SKIP_QUALITY=1`` says that
this run deliberately leaves it out (the noxfile runs these tests on one Python
version only and sets the variable for the others).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# mypy from a cold cache over the package and its tests takes a while.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def _require(module: str) -> None:
    if importlib.util.find_spec(module) is not None:
        return

    if os.environ.get("OTEL_MTLS_SKIP_QUALITY") == "1":
        pytest.skip(f"{module} is not installed and OTEL_MTLS_SKIP_QUALITY=1")

    pytest.fail(
        f"{module} is not installed; install the lint and docs extras, or set "
        "OTEL_MTLS_SKIP_QUALITY=1 to leave the quality checks out of this run"
    )


def _run(module: str, *args: str) -> None:
    _require(module)

    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )

    if result.returncode != 0:
        pytest.fail(
            f"{module} {' '.join(args)} exited with {result.returncode}:\n"
            f"{result.stdout}\n{result.stderr}",
            pytrace=False,
        )


def test_ruff_check() -> None:
    _run("ruff", "check", ".")


def test_ruff_format() -> None:
    _run("ruff", "format", "--check", ".")


def test_mypy() -> None:
    # Configured in pyproject.toml: strict, over the package, tests and benchmarks.
    _run("mypy")


def test_mypy_tooling() -> None:
    # The noxfile and the docs hook sit outside the configured paths, and run only
    # on the newest tooling, whose own sources need a newer target than the package.
    _require("nox")
    _require("mkdocs")
    _run("mypy", "--python-version", "3.11", "noxfile.py", "docs/hooks.py")


def test_docs_build_strict(tmp_path: Path) -> None:
    _require("material")
    _run("mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site"))
