"""Test, lint and documentation sessions.

``python3 -m nox`` runs the test suite on each supported Python; on the quality
Python the suite also runs ruff, mypy and a strict documentation build
(``nox -s lint docs`` runs those alone). Interpreters are looked up on ``PATH``,
to which every pyenv-installed CPython of a supported version is prepended.

A missing interpreter is skipped on a developer's machine and is an error on CI
(nox's default when ``CI`` is set); the ``interpreters`` session fails when no
supported interpreter exists at all, so a run can never pass with no tests run.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import nox

PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")

# The version that also runs the quality tests (ruff, mypy, the docs build).
QUALITY_PYTHON = "3.11"

ROOT = Path(__file__).resolve().parent
INSTALL_DEPS = ROOT / "collector-config" / "install-deps.sh"

nox.options.default_venv_backend = "venv"

# lint and docs stay available by name; by default their checks run inside the
# test suite (tests/test_quality.py on the quality Python), not a second time.
nox.options.sessions = ["interpreters", "tests"]
nox.options.reuse_existing_virtualenvs = False

# Newer nox downloads a missing Python by default; no such download is possible
# here, and a missing interpreter must be reported, not fetched.
if hasattr(nox.options, "download_python"):
    nox.options.download_python = "never"


def _pyenv_root() -> Path:
    if os.environ.get("PYENV_ROOT"):
        return Path(os.environ["PYENV_ROOT"])

    pyenv = shutil.which("pyenv")
    if pyenv is not None:
        # A fixed argument list, no shell: nothing user-controlled reaches it.
        result = subprocess.run(  # noqa: S603
            [pyenv, "root"], capture_output=True, text=True, check=False
        )
        if result.returncode == 0 and result.stdout.strip():
            return Path(result.stdout.strip())

    return Path.home() / ".pyenv"


def _pyenv_bin_dirs() -> list[str]:
    versions = _pyenv_root() / "versions"
    found: list[str] = []

    for python in PYTHONS:
        # "3.1*" would also match 3.10 and later, so match "X.Y" and "X.Y.*" only.
        candidates = [versions / python, *sorted(versions.glob(f"{python}.*"))]
        for candidate in reversed(candidates):
            bin_dir = candidate / "bin"
            if (bin_dir / f"python{python}").exists():
                found.append(str(bin_dir))

    return found


def _prepend_to_path(directories: list[str]) -> None:
    current = os.environ.get("PATH", "").split(os.pathsep)
    missing = [d for d in directories if d not in current]
    os.environ["PATH"] = os.pathsep.join([*missing, *current])


_prepend_to_path(_pyenv_bin_dirs())

_system_deps_installed = False


def _install_system_deps(session: nox.Session) -> None:
    """Install what the end-to-end tests need outside Python, once per nox run."""
    global _system_deps_installed  # noqa: PLW0603

    if _system_deps_installed or not INSTALL_DEPS.exists():
        return

    session.run("bash", str(INSTALL_DEPS), external=True)
    _system_deps_installed = True


@nox.session(python=False)
def interpreters(session: nox.Session) -> None:
    """Fail when no supported interpreter exists, so tests cannot all be skipped."""
    found = {p: shutil.which(f"python{p}") for p in PYTHONS}

    for python, path in found.items():
        session.log(f"python{python}: {path or 'missing'}")

    if not any(found.values()):
        session.error(f"no Python of {', '.join(PYTHONS)} found on PATH")


@nox.session(python=QUALITY_PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy (strict, configured in pyproject.toml)."""
    session.install(".[test,lint,docs]", "nox")

    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("mypy", "--python-version", "3.11", "noxfile.py", "docs/hooks.py")


@nox.session(python=QUALITY_PYTHON)
def docs(session: nox.Session) -> None:
    """Build the documentation, failing on any warning."""
    session.install(".[docs]")

    site = Path(session.create_tmp()) / "site"
    session.run(
        "mkdocs",
        "build",
        "--strict",
        "--site-dir",
        str(site),
        env={"NO_MKDOCS_2_WARNING": "1"},
    )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The test suite; on the quality version it also runs ruff, mypy and mkdocs."""
    _install_system_deps(session)

    env: dict[str, str] = {}
    if session.python == QUALITY_PYTHON:
        session.install(".[test,lint,docs]", "nox")
    else:
        session.install(".[test]")
        env["OTEL_MTLS_SKIP_QUALITY"] = "1"

    session.run("pytest", *session.posargs, env=env)
