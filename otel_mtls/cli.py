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

from otel_mtls import demo, doctor, inspect_cmd, probe
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

    _add_inspect(commands)
    _add_doctor(commands)
    _add_probe(commands)

    return parser


def _add_inspect(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "inspect",
        help="show what would be recorded about certificate files",
        description="Print, for each certificate in the PEM or DER files, the "
        "attributes otel-mtls would record (escaped and capped as in telemetry), "
        "chain order problems and expiry. Exits with 1 when a file cannot be "
        "read, a certificate is expired or not yet valid, or a chain is out of "
        "order.",
    )
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE")
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--side",
        choices=("client", "server"),
        default="client",
        help="name the attributes as the client's or the server's certificate "
        "(default: client)",
    )


def _add_doctor(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "doctor",
        help="check that this environment's telemetry would show mTLS failures",
        description="Check the OpenTelemetry providers, log export, exporters "
        "and their endpoints, the ssl instrumentation and rejected-certificate "
        "capture, and audit the given certificate files. Run it as "
        "'opentelemetry-instrument otel-mtls doctor' to see what the "
        "application would get. Exits with 1 when a check fails.",
    )
    parser.add_argument(
        "--cert",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="audit a certificate file (PEM or DER) for expiry and chain order; "
        "repeatable",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _versions(text: str) -> list[str]:
    versions = _csv(text)
    unknown = [v for v in versions if v not in probe.TLS_VERSIONS]
    if unknown or not versions:
        raise argparse.ArgumentTypeError(f"TLS versions are 1.2 and 1.3, not {text!r}")
    return versions


def _credentials(text: str) -> list[str]:
    names = _csv(text)
    unknown = [n for n in names if n not in probe.CREDENTIALS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown credential(s) {unknown}; choose from "
            f"{', '.join(probe.CREDENTIALS)}"
        )
    return names


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text!r}")
    return value


def _target(text: str) -> probe.Target:
    try:
        return probe.parse_target(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _telemetry(text: str) -> tuple[str, int]:
    try:
        return probe.parse_telemetry_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _add_probe(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "probe",
        help="check that an mTLS endpoint refuses bad client certificates",
        description="Connect to HOST:PORT, and to nothing else, with a battery "
        "of client credentials made on the fly, and report for each whether the "
        "server accepted or refused it. Exits with 1 when a bad credential was "
        "accepted, the control was refused, an attempt could not connect, or "
        "(with --expect-telemetry) an attempt went unlogged.",
    )
    parser.add_argument("target", type=_target, metavar="HOST:PORT")
    parser.add_argument(
        "--tls", type=_versions, default=["1.2", "1.3"], help="default: 1.2,1.3"
    )
    parser.add_argument("--issuer-cert", type=Path, metavar="FILE")
    parser.add_argument(
        "--issuer-key",
        type=Path,
        metavar="FILE",
        help="with --issuer-cert: the test CA the server trusts, to make the "
        "valid control and the expired, not yet valid, server-only, incomplete "
        "chain, weak key and SHA-1 credentials, and to issue the hostile names",
    )
    parser.add_argument("--revoked-cert", type=Path, metavar="FILE")
    parser.add_argument(
        "--revoked-key",
        type=Path,
        metavar="FILE",
        help="with --revoked-cert: a client credential revoked in the target's "
        "CRL or OCSP setup, which the server must refuse",
    )
    parser.add_argument(
        "--server-ca",
        type=Path,
        metavar="FILE",
        help="verify the server against this CA (default: not verified)",
    )
    parser.add_argument("--sni", help="server name to send (default: the host)")
    parser.add_argument("--alpn", type=_csv, default=[], help="e.g. h2,http/1.1")
    parser.add_argument(
        "--rate",
        type=_positive,
        default=10.0,
        help="attempts per second at most (default: 10)",
    )
    parser.add_argument(
        "--max-attempts", type=int, default=100, metavar="N", help="default: 100"
    )
    parser.add_argument(
        "--only", type=_credentials, default=[], metavar="NAMES", help="comma-separated"
    )
    parser.add_argument(
        "--expect-telemetry",
        type=_telemetry,
        metavar="otlp:HOST:PORT",
        help="receive the target's OTLP/HTTP export on HOST:PORT and match each "
        "attempt to its record",
    )
    parser.add_argument(
        "--telemetry-wait",
        type=_positive,
        default=15.0,
        metavar="SECONDS",
        help="how long to wait for records after the last attempt (default: 15)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML")


def _with_default_command(argv: Sequence[str]) -> list[str]:
    args = list(argv)
    if not args or (args[0].startswith("-") and args[0] not in _OWN_OPTIONS):
        return [DEFAULT_COMMAND, *args]

    return args


def _run_probe(args: argparse.Namespace) -> int:
    if (args.issuer_cert is None) != (args.issuer_key is None):
        print("--issuer-cert and --issuer-key go together", file=sys.stderr)
        return 2
    if (args.revoked_cert is None) != (args.revoked_key is None):
        print("--revoked-cert and --revoked-key go together", file=sys.stderr)
        return 2

    options = probe.Options(
        target=args.target,
        versions=args.tls,
        issuer_cert=args.issuer_cert,
        issuer_key=args.issuer_key,
        revoked_cert=args.revoked_cert,
        revoked_key=args.revoked_key,
        server_ca=args.server_ca,
        sni=args.sni,
        alpn=args.alpn,
        rate=args.rate,
        max_attempts=max(args.max_attempts, 0),
        only=args.only,
        expect_telemetry=args.expect_telemetry,
        telemetry_wait=args.telemetry_wait,
    )
    return probe.run(options, as_json=args.json, junit=args.junit)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = build_parser().parse_args(
        _with_default_command(sys.argv[1:] if argv is None else argv)
    )
    _logger.debug("running %s", args.command)

    if args.command == "probe":
        return _run_probe(args)

    if args.command == "doctor":
        return doctor.run(args.cert, as_json=args.json)

    if args.command == "inspect":
        return inspect_cmd.run(args.files, as_json=args.json, side=args.side)

    return demo.run(as_json=args.json, keep_dir=args.keep_dir)
