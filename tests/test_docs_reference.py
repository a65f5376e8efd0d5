"""The reference documentation lists every name the package emits."""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from otel_mtls.attributes import REGISTERED_NAMES, REGISTRY

ROOT = Path(__file__).resolve().parent.parent
ATTRIBUTES_SOURCE = ROOT / "otel_mtls" / "attributes.py"

# Dotted lower-case names, as attributes, metrics and events are spelled.
NAME_SHAPE = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+")


def _load_hooks() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "docs_hooks", ROOT / "docs" / "hooks.py"
    )
    assert spec is not None and spec.loader is not None

    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    return module


def _module_constants(path: Path) -> dict[str, str]:
    """ALL_CAPS names bound to a string literal at module level."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    constants: dict[str, str] = {}

    for node in tree.body:
        targets: list[ast.expr]
        if isinstance(node, ast.AnnAssign):
            targets = [node.target]
            value = node.value
        elif isinstance(node, ast.Assign):
            targets = node.targets
            value = node.value
        else:
            continue

        if not (isinstance(value, ast.Constant) and isinstance(value.value, str)):
            continue

        for target in targets:
            if isinstance(target, ast.Name) and target.id.isupper():
                constants[target.id] = value.value

    return constants


@pytest.fixture(scope="module")
def built_reference(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The HTML of the reference page, from a real (strict) MkDocs build."""
    if importlib.util.find_spec("mkdocs") is None:
        if os.environ.get("OTEL_MTLS_SKIP_QUALITY") == "1":
            pytest.skip("mkdocs is not installed and OTEL_MTLS_SKIP_QUALITY=1")

        pytest.fail("mkdocs is not installed; install the docs extra")

    site = tmp_path_factory.mktemp("docs") / "site"
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(f"mkdocs build failed:\n{result.stdout}\n{result.stderr}")

    return (site / "reference" / "index.html").read_text(encoding="utf-8")


def test_generated_reference_lists_every_name() -> None:
    table = str(_load_hooks().render_reference())

    missing = [d.name for d in REGISTRY if f"`{d.name}`" not in table]

    assert not missing, f"missing from the generated reference: {missing}"


def test_reference_page_marks_the_generated_section() -> None:
    page = (ROOT / "docs" / "reference.md").read_text(encoding="utf-8")

    assert "<!-- generated: reference -->" in page


def test_built_reference_page_lists_every_name(built_reference: str) -> None:
    missing = [
        d.name for d in REGISTRY if f"<code>{d.name}</code>" not in built_reference
    ]

    assert not missing, f"missing from the built reference page: {missing}"


def test_every_name_constant_is_registered() -> None:
    constants = _module_constants(ATTRIBUTES_SOURCE)
    names = {
        key: value
        for key, value in constants.items()
        if not key.startswith("SPAN_") and NAME_SHAPE.fullmatch(value)
    }

    # Guard against a parser that finds nothing and so checks nothing.
    assert len(names) >= 20, f"too few name constants found: {sorted(names)}"

    unregistered = {k: v for k, v in names.items() if v not in REGISTERED_NAMES}

    assert not unregistered, f"constants missing from REGISTRY: {unregistered}"


def test_only_span_names_escape_the_name_shape() -> None:
    # A constant that is neither a span name nor dotted would dodge the check above.
    constants = _module_constants(ATTRIBUTES_SOURCE)
    odd = {
        key: value
        for key, value in constants.items()
        if not key.startswith("SPAN_") and not NAME_SHAPE.fullmatch(value)
    }

    assert not odd, f"constants that look like no emitted name: {odd}"


def test_registry_names_are_unique() -> None:
    names = [d.name for d in REGISTRY]
    duplicates = sorted({n for n in names if names.count(n) > 1})

    assert not duplicates, f"registered twice: {duplicates}"
