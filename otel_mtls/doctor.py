"""``otel-mtls doctor``: is this process's telemetry set up to show mTLS failures?

Meant to run where the application runs, ideally as
``opentelemetry-instrument otel-mtls doctor``, so that it sees the providers,
exporters and instrumentation the application would get. Every check prints one
line with a verdict and, when it is not a pass, how to fix it.
"""

from __future__ import annotations

import _ssl
import json
import logging
import os
import socket
import sys
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Optional, TextIO

from opentelemetry import _logs, metrics, trace
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.trace import TracerProvider

from otel_mtls import inspect_cmd
from otel_mtls.certs import safe_text
from otel_mtls.ssl_instrumentor import active_config

_logger = logging.getLogger(__name__)

PASS: Final = "PASS"  # noqa: S105 - a verdict, not a password
WARN: Final = "WARN"
FAIL: Final = "FAIL"
SKIP: Final = "SKIP"

SIGNALS: Final = ("traces", "metrics", "logs")
_CONNECT_TIMEOUT: Final = 1.0
# The OTLP defaults of the specification, per protocol.
_DEFAULT_ENDPOINTS: Final = {
    "grpc": "http://localhost:4317",
    "http/protobuf": "http://localhost:4318",
    "http/json": "http://localhost:4318",
}


@dataclass(frozen=True)
class Check:
    """One verdict: what was checked, the result, and the fix when it failed."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def as_json(self) -> dict[str, str]:
        return {
            "name": self.name,
            "status": self.status,
            "detail": self.detail,
            "fix": self.fix,
        }


@dataclass(frozen=True)
class Exporter:
    """One signal's exporter as the environment configures it."""

    signal: str
    names: tuple[str, ...]
    protocol: str
    endpoint: str

    @property
    def otlp(self) -> bool:
        return any(name.startswith("otlp") for name in self.names)


def configured_exporters(environ: Mapping[str, str]) -> list[Exporter]:
    """The exporter of each signal, as the SDK's auto-configuration reads it.

    Unset exporter variables mean ``otlp``, which is what the SDK and the
    distribution default to; the distribution also defaults the protocol to grpc.
    """
    exporters = []
    for signal in SIGNALS:
        value = environ.get(f"OTEL_{signal.upper()}_EXPORTER", "otlp")
        names = tuple(part.strip() for part in value.split(",") if part.strip())
        prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
        protocol = (
            environ.get(prefix + "PROTOCOL")
            or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
            or "grpc"
        )
        endpoint = (
            environ.get(prefix + "ENDPOINT")
            or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
            or _DEFAULT_ENDPOINTS.get(protocol, _DEFAULT_ENDPOINTS["grpc"])
        )
        exporters.append(Exporter(signal, names, protocol, endpoint))

    return exporters


def _provider_check(signal: str, provider: object, sdk_type: type) -> Check:
    kind = type(provider).__name__
    if isinstance(provider, sdk_type):
        return Check(f"{signal} provider", PASS, f"SDK {kind}")

    return Check(
        f"{signal} provider",
        FAIL,
        f"{kind}: {signal} go nowhere",
        "run the application under opentelemetry-instrument, or set an SDK "
        f"{sdk_type.__name__} as the global provider before instrumenting",
    )


def _exporter_classes(processors: Iterable[object]) -> list[str]:
    # The SDK keeps exporters in private attributes whose names moved between
    # releases; this only labels the output, so a miss is not an error.
    found = []
    for processor in processors:
        inner = getattr(processor, "_batch_processor", processor)
        exporter = getattr(inner, "_exporter", None) or getattr(
            processor, "span_exporter", None
        )
        found.append(type(exporter if exporter is not None else processor).__name__)

    return found


def _log_processors(provider: object) -> list[object]:
    multi = getattr(provider, "_multi_log_record_processor", None)
    return list(getattr(multi, "_log_record_processors", ()))


def check_log_export(environ: Mapping[str, str], provider: object) -> Check:
    """Failures are log records: without log export they are never seen."""
    value = environ.get("OTEL_LOGS_EXPORTER", "otlp").strip()
    fix = (
        "set OTEL_LOGS_EXPORTER=otlp (or console) so that handshake failure "
        "records (mtls.handshake.failed) are exported"
    )
    if value.lower() == "none" or not value:
        return Check("log export", FAIL, f"OTEL_LOGS_EXPORTER={value!r}", fix)

    if not isinstance(provider, LoggerProvider):
        return Check("log export", FAIL, "no SDK LoggerProvider", fix)

    processors = _log_processors(provider)
    if not processors:
        return Check("log export", FAIL, "the LoggerProvider has no processor", fix)

    exporters = ", ".join(_exporter_classes(processors))
    return Check("log export", PASS, f"logs exported by {exporters}")


def check_exporters(exporters: Sequence[Exporter]) -> list[Check]:
    """One line per signal, naming the exporter and its endpoint."""
    checks = []
    for exporter in exporters:
        label = ",".join(exporter.names) or "none"
        if not exporter.names or "none" in exporter.names:
            checks.append(
                Check(
                    f"{exporter.signal} exporter",
                    WARN,
                    f"OTEL_{exporter.signal.upper()}_EXPORTER={label}",
                    f"set OTEL_{exporter.signal.upper()}_EXPORTER=otlp to export "
                    f"{exporter.signal}",
                )
            )
            continue

        where = (
            f" to {exporter.endpoint} ({exporter.protocol})" if exporter.otlp else ""
        )
        checks.append(Check(f"{exporter.signal} exporter", PASS, f"{label}{where}"))

    return checks


def _host_port(endpoint: str) -> Optional[tuple[str, int]]:
    parsed = urllib.parse.urlsplit(endpoint if "//" in endpoint else f"//{endpoint}")
    if parsed.hostname is None:
        return None

    try:
        port = parsed.port
    except ValueError:
        return None

    default = 443 if parsed.scheme == "https" else 80
    return parsed.hostname, port if port is not None else default


def check_endpoints(exporters: Sequence[Exporter], timeout: float) -> list[Check]:
    """A TCP connect to each configured OTLP endpoint, and to nothing else."""
    endpoints = sorted({e.endpoint for e in exporters if e.otlp})
    if not endpoints:
        return [Check("OTLP endpoint", SKIP, "not applicable: no OTLP exporter")]

    checks = []
    for endpoint in endpoints:
        address = _host_port(endpoint)
        if address is None:
            checks.append(
                Check(
                    "OTLP endpoint",
                    FAIL,
                    f"cannot parse {endpoint!r}",
                    "set OTEL_EXPORTER_OTLP_ENDPOINT to a URL like "
                    "http://collector:4318",
                )
            )
            continue

        try:
            with socket.create_connection(address, timeout=timeout):
                pass
        except OSError as exc:
            checks.append(
                Check(
                    "OTLP endpoint",
                    FAIL,
                    f"{endpoint} does not answer: {exc}",
                    "start the collector, or point OTEL_EXPORTER_OTLP_ENDPOINT at "
                    "one that runs",
                )
            )
            continue

        checks.append(Check("OTLP endpoint", PASS, f"{endpoint} accepts connections"))

    return checks


def check_instrumentation() -> Check:
    config = active_config()
    if config is not None:
        return Check("ssl instrumentation", PASS, "active")

    return Check(
        "ssl instrumentation",
        FAIL,
        "not active: handshakes are not recorded",
        "run under opentelemetry-instrument (and keep ssl out of "
        "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS), or call "
        "SSLInstrumentor().instrument()",
    )


def check_capture() -> Check:
    # The rejected certificate is read from the handshake messages, which only
    # the C-level message callback shows.
    if "_msg_callback" in vars(_ssl._SSLContext):
        return Check(
            "rejected-certificate capture",
            PASS,
            f"available on Python {sys.version.split()[0]}",
        )

    return Check(
        "rejected-certificate capture",
        WARN,
        "this Python's ssl module has no message callback: rejected "
        "certificates are recorded without their identity",
        "use CPython 3.9 or later built with OpenSSL",
    )


def check_certificates(paths: Sequence[Path]) -> list[Check]:
    checks = []
    for path in paths:
        inspected = inspect_cmd.inspect_file(path)
        name = f"certificate {safe_text(str(path), 256)}"
        for finding in inspected.findings:
            status = FAIL if finding.severity == inspect_cmd.FAIL else WARN
            checks.append(
                Check(name, status, finding.message, "renew or reorder the file")
            )
        if not inspected.findings:
            count = len(inspected.certificates)
            checks.append(Check(name, PASS, f"{count} certificate(s), no findings"))

    return checks


def run_checks(
    environ: Mapping[str, str],
    cert_paths: Sequence[Path] = (),
    timeout: float = _CONNECT_TIMEOUT,
) -> list[Check]:
    """Every check, in the order they are printed."""
    logger_provider: Any = _logs.get_logger_provider()
    checks = [
        _provider_check("traces", trace.get_tracer_provider(), TracerProvider),
        _provider_check("metrics", metrics.get_meter_provider(), MeterProvider),
        _provider_check("logs", logger_provider, LoggerProvider),
        check_log_export(environ, logger_provider),
    ]

    exporters = configured_exporters(environ)
    checks.extend(check_exporters(exporters))
    checks.extend(check_endpoints(exporters, timeout))
    checks.append(check_instrumentation())
    checks.append(check_capture())
    checks.extend(check_certificates(cert_paths))

    return checks


def _print_text(checks: Sequence[Check], out: TextIO) -> None:
    width = max(len(check.name) for check in checks)
    for check in checks:
        print(f"{check.status}  {check.name:<{width}}  {check.detail}", file=out)
        if check.fix and check.status in {FAIL, WARN}:
            print(f"      {'':<{width}}  fix: {check.fix}", file=out)

    failed = sum(check.status == FAIL for check in checks)
    print(f"\n{len(checks)} checks, {failed} failed.", file=out)


def run(
    cert_paths: Sequence[Path] = (),
    *,
    as_json: bool = False,
    out: Optional[TextIO] = None,
) -> int:
    """Run and print the checks; 1 when any check failed, else 0."""
    stream = out or sys.stdout
    checks = run_checks(os.environ, cert_paths)

    if as_json:
        print(
            json.dumps({"checks": [c.as_json() for c in checks]}, indent=2), file=stream
        )
    else:
        _print_text(checks, stream)

    return 1 if any(check.status == FAIL for check in checks) else 0
