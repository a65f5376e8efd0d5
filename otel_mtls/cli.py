"""The ``otel-mtls`` command line.

``otel-mtls`` with no command runs ``demo``, so that installing the package and
typing its name shows what it records.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from otel_mtls import demo
from otel_mtls.version import __version__

_logger = logging.getLogger(__name__)

DEFAULT_COMMAND: Final = "demo"

# Options that belong to the program itself rather than to the default command.
_OWN_OPTIONS: Final = frozenset({"-h", "--help", "--version"})


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="otel-mtls",
        description="Make mutual TLS observable with OpenTelemetry.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo_parser = commands.add_parser(
        "demo",
        help="run real mTLS handshakes locally and show the recorded telemetry "
        "(the default)",
        description="Start a local HTTPS server that requires a client "
        "certificate, connect to it with good, bad and missing client "
        "certificates over TLS 1.3 and 1.2, and show what the server's "
        "telemetry recorded. Exits with 1 when an attempt was not recorded as "
        "expected. Set OTEL_EXPORTER_OTLP_ENDPOINT to also export the "
        "telemetry over OTLP.",
    )
    demo_parser.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per attempt, one per line, with the "
        "recorded attributes",
    )
    demo_parser.add_argument(
        "--keep-dir",
        type=Path,
        metavar="DIR",
        help="write the demo PKI to DIR and keep it, instead of a temporary "
        "directory removed at exit",
    )

    return parser


def _with_default_command(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if not args or (args[0].startswith("-") and args[0] not in _OWN_OPTIONS):
        return [DEFAULT_COMMAND, *args]

    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(
        _with_default_command(sys.argv[1:] if argv is None else argv)
    )
    _logger.debug("running %s", args.command)

    # Only one command so far; the dispatch grows with the sub-parsers.
    return demo.run(as_json=args.json, keep_dir=args.keep_dir)
