"""MkDocs hook that fills the reference tables from the package's own registries.

A page asks for a table with a marker such as ``<!-- generated: reference -->``. The
tables are built from ``otel_mtls.attributes.REGISTRY``, ``otel_mtls.config.SETTINGS``
and ``otel_mtls.classify.REASONS``, so each name, setting and failure reason is
described once, in the code, and the documentation cannot drift from it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mkdocs.config.defaults import MkDocsConfig
    from mkdocs.structure.files import Files
    from mkdocs.structure.pages import Page

MARKER = re.compile(r"<!--\s*generated:\s*([a-z_-]+)\s*-->")

_REPO = Path(__file__).resolve().parent.parent

# A checkout that was never installed still documents itself.
if importlib.util.find_spec("otel_mtls") is None:
    sys.path.append(str(_REPO))

from otel_mtls.attributes import METRIC_ATTRIBUTES, REGISTRY  # noqa: E402
from otel_mtls.classify import REASONS  # noqa: E402
from otel_mtls.config import SETTINGS  # noqa: E402

# Each kind of registry entry gets its own section, in this order.
_KINDS = (
    ("attribute", "Attributes", "Type"),
    ("metric", "Metrics", "Instrument"),
    ("event", "Events", "Record"),
)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _code(text: str) -> str:
    return f"`{_cell(text)}`" if text else ""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]

    for row in rows:
        lines.append("| " + " | ".join(row) + " |")

    return "\n".join(lines)


def render_reference() -> str:
    """One table per kind of name: attributes, metrics and events."""
    known = {kind for kind, _, _ in _KINDS}
    unknown = sorted({d.kind for d in REGISTRY} - known)
    if unknown:
        raise ValueError(f"REGISTRY has kinds the reference cannot show: {unknown}")

    sections = []
    for kind, title, type_header in _KINDS:
        entries = [d for d in REGISTRY if d.kind == kind]
        with_examples = any(d.example for d in entries)

        header = ["Name", type_header, "Defined by", "Description"]
        if with_examples:
            header.append("Example")

        rows = []
        for d in entries:
            source = "OpenTelemetry semconv" if d.semconv else "otel-mtls (`mtls.`)"
            row = [_code(d.name), _cell(d.type), source, _cell(d.description)]
            if with_examples:
                row.append(_code(d.example))

            rows.append(row)

        sections.append(f"## {title}\n\n{_table(header, rows)}")

        if kind == "metric":
            allowed = ", ".join(_code(name) for name in METRIC_ATTRIBUTES)
            sections.append(
                "The handshake metrics carry only these attributes: "
                f"{allowed}. Each other metric names its attributes above."
            )

    return "\n\n".join(sections)


def render_settings() -> str:
    """The settings, with keyword, environment variable, type and default."""
    header = ["Keyword", "Environment variable", "Type", "Default", "Description"]
    rows = [
        [
            _code(s.keyword),
            _code(s.env),
            _cell(s.type.__name__),
            _code(repr(s.default)),
            _cell(s.description),
        ]
        for s in SETTINGS
    ]

    return _table(header, rows)


def render_reasons() -> str:
    """The closed set of failure reasons."""
    header = ["Reason", "Meaning", "Typical cause"]
    rows = [
        [_code(r.name), _cell(r.description), _cell(r.typical_cause)] for r in REASONS
    ]

    return _table(header, rows)


RENDERERS: dict[str, Callable[[], str]] = {
    "reference": render_reference,
    "settings": render_settings,
    "reasons": render_reasons,
}


def expand(markdown: str) -> str:
    """Replace every marker in ``markdown`` with its generated table."""

    def replace(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in RENDERERS:
            raise ValueError(f"unknown generated section {name!r}")

        return RENDERERS[name]()

    return MARKER.sub(replace, markdown)


def on_page_markdown(
    markdown: str, *, page: Page, config: MkDocsConfig, files: Files
) -> str:
    """MkDocs event: expand the markers of one page."""
    return expand(markdown)
