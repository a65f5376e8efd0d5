"""``otel-mtls demo``: real mutual TLS handshakes, and what the telemetry made of them.

The demo builds a throw-away PKI, starts an HTTPS server on 127.0.0.1 that requires
a client certificate, and connects to it with a valid client certificate, with
four bad ones (expired, not yet valid, from an untrusted CA, server-only extended
key usage) and with none, over TLS 1.3 and TLS 1.2. It then prints what the
server's handshake spans recorded for each attempt.

The telemetry goes to providers of the demo's own, read back from memory. When the
standard ``OTEL_EXPORTER_OTLP_*ENDPOINT`` variables are set it is also exported
over OTLP; without them nothing leaves the process.
"""

from __future__ import annotations

import collections
import contextlib
import http.client
import http.server
import importlib
import json
import logging
import os
import re
import socket
import ssl
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any, Final, Optional, TextIO

from cryptography import x509
from opentelemetry.sdk._logs import LoggerProvider, LogRecordProcessor
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    InMemoryMetricReader,
    MetricReader,
    NumberDataPoint,
    PeriodicExportingMetricReader,
    Sum,
)
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.util.types import AttributeValue

from otel_mtls import attributes as A
from otel_mtls.pki import (
    Credential,
    DemoPKI,
    build_demo_pki,
    client_context,
    server_context,
)
from otel_mtls.ssl_instrumentor import SSLInstrumentor

try:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter
except ImportError:  # pragma: no cover - SDKs from before the LogRecordExporter rename
    # Newer SDKs still have the old name, but it warns as deprecated there.
    from opentelemetry.sdk._logs.export import (
        InMemoryLogExporter as InMemoryLogRecordExporter,
    )

_logger = logging.getLogger(__name__)


def in_memory_log_exporter() -> Any:
    """The SDK's in-memory log exporter, under its name in the installed SDK."""
    return InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]


DEMO_SERVICE_NAME: Final = "otel-mtls-demo"

# Bounds every socket of the demo, client and server, so that it cannot hang.
_TIMEOUT: Final = 5.0
_HOST: Final = "127.0.0.1"
# How long a server waits for a rejected client to read the alert and go away.
_LINGER: Final = 1.0

_VERSIONS: Final = (("1.3", ssl.TLSVersion.TLSv1_3), ("1.2", ssl.TLSVersion.TLSv1_2))
NO_CERTIFICATE: Final = "none"
CREDENTIALS: Final = (
    "valid",
    "expired",
    "not_yet_valid",
    "untrusted",
    "server_only",
    NO_CERTIFICATE,
)

_SIGNALS: Final = ("traces", "metrics", "logs")
_DEFAULT_PROTOCOL: Final = "http/protobuf"
_PROTOCOLS: Final = frozenset({"grpc", _DEFAULT_PROTOCOL})

# OpenSSL messages end with the C source line that raised them: noise to a reader.
_SSL_SOURCE: Final = re.compile(r"\s*\(_ssl\.c:\d+\)$")


@dataclass(frozen=True)
class OtlpTarget:
    """One signal exported over OTLP, as the standard variables ask."""

    signal: str
    protocol: str
    endpoint: str


def otlp_targets(environ: Mapping[str, str]) -> list[OtlpTarget]:
    """The signals to export over OTLP: those whose endpoint variable is set.

    The per-signal variables win over the generic ones, as the OpenTelemetry
    specification has it; the exporters then read the same variables themselves.
    """
    targets = []

    for signal in _SIGNALS:
        prefix = f"OTEL_EXPORTER_OTLP_{signal.upper()}_"
        endpoint = _first(environ, prefix + "ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
        if not endpoint:
            continue

        protocol = _first(environ, prefix + "PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")
        protocol = (protocol or _DEFAULT_PROTOCOL).lower()
        if protocol not in _PROTOCOLS:
            _logger.warning(
                "OTLP protocol %r is not supported for %s; using %s",
                protocol,
                signal,
                _DEFAULT_PROTOCOL,
            )
            protocol = _DEFAULT_PROTOCOL

        targets.append(OtlpTarget(signal, protocol, endpoint))

    return targets


def _first(environ: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            return value

    return ""


# The OTLP exporters are imported only when asked for: grpc is slow to import.
# Per signal: the exporter module and class, the same under .grpc and .http.
_EXPORTERS: Final = {
    "traces": ("trace_exporter", "OTLPSpanExporter"),
    "metrics": ("metric_exporter", "OTLPMetricExporter"),
    "logs": ("_log_exporter", "OTLPLogExporter"),
}


def _otlp_exporter(signal: str, protocol: str) -> Any:
    """The OTLP exporter of ``signal`` over gRPC or HTTP, configured by env."""
    transport = "grpc" if protocol == "grpc" else "http"
    module_name, class_name = _EXPORTERS[signal]
    module = importlib.import_module(
        f"opentelemetry.exporter.otlp.proto.{transport}.{module_name}"
    )
    return getattr(module, class_name)()


def _otlp_span_processor(protocol: str) -> SpanProcessor:
    return BatchSpanProcessor(_otlp_exporter("traces", protocol))


def _otlp_metric_reader(protocol: str) -> MetricReader:
    return PeriodicExportingMetricReader(_otlp_exporter("metrics", protocol))


def _otlp_log_processor(protocol: str) -> LogRecordProcessor:
    return BatchLogRecordProcessor(_otlp_exporter("logs", protocol))


class Telemetry:
    """The demo's own providers, read back from memory, plus OTLP when configured."""

    def __init__(self, targets: Sequence[OtlpTarget]) -> None:
        self.targets = list(targets)
        protocols = {target.signal: target.protocol for target in targets}
        resource = Resource.create({SERVICE_NAME: DEMO_SERVICE_NAME})

        # Shut down explicitly when the demo ends rather than at interpreter exit,
        # which would keep the providers of every run alive until the process ends.
        self.spans = InMemorySpanExporter()
        self.tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        if "traces" in protocols:
            processor = _otlp_span_processor(protocols["traces"])
            self.tracer_provider.add_span_processor(processor)

        self.metrics = InMemoryMetricReader()
        readers: list[MetricReader] = [self.metrics]
        if "metrics" in protocols:
            readers.append(_otlp_metric_reader(protocols["metrics"]))
        self.meter_provider = MeterProvider(
            resource=resource, metric_readers=readers, shutdown_on_exit=False
        )

        # The SDK leaves this constructor unannotated.
        self.logs = in_memory_log_exporter()
        self.logger_provider = LoggerProvider(resource=resource, shutdown_on_exit=False)
        self.logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(self.logs)
        )
        if "logs" in protocols:
            log_processor = _otlp_log_processor(protocols["logs"])
            self.logger_provider.add_log_record_processor(log_processor)

    def shutdown(self) -> None:
        """Flush the OTLP exporters, if any, and stop every provider."""
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()
        self.logger_provider.shutdown()

    def destination(self) -> str:
        if not self.targets:
            return (
                "in memory only (set OTEL_EXPORTER_OTLP_ENDPOINT to also export "
                "over OTLP)"
            )

        sent = "; ".join(
            f"{target.signal} to {target.endpoint} ({target.protocol})"
            for target in self.targets
        )
        return f"in memory, and over OTLP: {sent}"

    def handshake_totals(self) -> dict[tuple[str, str], int]:
        """The ``mtls.handshakes`` counter, summed by side and outcome."""
        totals: collections.Counter[tuple[str, str]] = collections.Counter()

        for point in self._sum_points(A.METRIC_HANDSHAKES):
            labels = point.attributes or {}
            side = str(labels.get(A.MTLS_SIDE))
            outcome = str(labels.get(A.MTLS_OUTCOME))
            totals[side, outcome] += int(point.value)

        return totals

    def _sum_points(self, name: str) -> Iterator[NumberDataPoint]:
        data = self.metrics.get_metrics_data()
        if data is None:
            return

        for resource_metrics in data.resource_metrics:
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    if metric.name == name and isinstance(metric.data, Sum):
                        yield from metric.data.data_points

    def failure_logs(self) -> list[Mapping[str, AttributeValue]]:
        """Attributes of every ``mtls.handshake.failed`` log record."""
        found = []
        for item in self.logs.get_finished_logs():
            record = item.log_record
            if record.event_name == A.EVENT_HANDSHAKE_FAILED:
                found.append(record.attributes or {})

        return found


# -- the server -------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    """Answers ``GET /`` with the subject of the client certificate."""

    server_version = "otel-mtls-demo"
    timeout = _TIMEOUT

    def do_GET(self) -> None:
        body = f"hello {_peer_subject(self.connection)}\n".encode()
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        # The base class writes an access log to stderr; it would break the table.
        _logger.debug("server: " + format, *args)


def _peer_subject(connection: socket.socket) -> str:
    if not isinstance(connection, ssl.SSLSocket):
        return "?"

    der = connection.getpeercert(binary_form=True)
    if not der:
        return "?"

    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class _MutualTLSServer(http.server.ThreadingHTTPServer):
    """An HTTPS server whose TLS handshake happens in the accept loop."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__((_HOST, 0), _Handler)
        self.context = context

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        sock, address = self.socket.accept()

        # accept() returns a blocking socket; a silent client must not be able to
        # stall the accept loop, in which the handshake runs.
        sock.settimeout(_TIMEOUT)

        # A second descriptor outlives the one a failed handshake closes.
        spare = sock.dup()
        try:
            tls = self.context.wrap_socket(sock, server_side=True)
        except OSError:
            # The span of the failed handshake is recorded by now; the caller
            # drops the connection after this raises.
            sock.close()
            _close_lingering(spare)
            raise

        spare.close()
        return tls, address

    def handle_error(self, request: object, client_address: object) -> None:
        _logger.debug("server: error with %s", client_address, exc_info=True)


def _close_lingering(sock: socket.socket) -> None:
    """Close only once the client has read the alert, as web servers do.

    A TLS 1.3 client sends its request before it learns that its certificate was
    refused. Closing with that request unread makes the kernel answer with a
    reset, which discards the server's alert before the client has read it: the
    client would see a bare EOF instead of the reason.
    """
    deadline = time.monotonic() + _LINGER
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(_LINGER)
        while time.monotonic() < deadline and sock.recv(4096):
            pass

    sock.close()


@contextlib.contextmanager
def _running_server(context: ssl.SSLContext) -> Iterator[int]:
    """Serve in a background thread; yield the port; stop and join at the end."""
    server = _MutualTLSServer(context)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="otel-mtls-demo-server",
        daemon=True,
    )
    thread.start()

    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        # Also joins the request threads (ThreadingMixIn.block_on_close).
        server.server_close()
        thread.join(_TIMEOUT)


# -- the clients ------------------------------------------------------------------


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection that notes its local port before the TLS handshake."""

    def __init__(self, port: int, context: ssl.SSLContext) -> None:
        super().__init__(_HOST, port, timeout=_TIMEOUT, context=context)
        self.tls_context = context
        self.local_port: Optional[int] = None

    def connect(self) -> None:
        # The port identifies the attempt in the server's telemetry. It is read
        # between the TCP connect and the handshake, because a failed handshake
        # closes the socket and the port can no longer be asked for.
        http.client.HTTPConnection.connect(self)
        self.local_port = self.sock.getsockname()[1]
        self.sock = self.tls_context.wrap_socket(self.sock, server_hostname=self.host)


@dataclass
class Attempt:
    """One client connection, and what each side's telemetry recorded of it."""

    tls_version: str
    credential: str
    client_port: Optional[int]
    client_result: str
    accepted: bool
    server: Optional[dict[str, AttributeValue]] = None
    client: Optional[dict[str, AttributeValue]] = None
    trace_id: Optional[str] = None
    failure_logged: bool = False
    expected_sha256: Optional[str] = None

    def as_json(self) -> dict[str, object]:
        return {
            "tls_version": self.tls_version,
            "credential": self.credential,
            "client_port": self.client_port,
            "client_result": self.client_result,
            "trace_id": self.trace_id,
            "server": _json_safe(self.server),
            "client": _json_safe(self.client),
        }


def _json_safe(
    attributes: Optional[Mapping[str, AttributeValue]],
) -> Optional[dict[str, object]]:
    if attributes is None:
        return None

    return {
        name: list(value) if isinstance(value, (list, tuple)) else value
        for name, value in attributes.items()
    }


def _connect(
    pki: DemoPKI, port: int, version: ssl.TLSVersion, credential: Optional[Credential]
) -> tuple[Optional[int], str, bool]:
    """One GET /; returns the local port, what the client saw, and acceptance."""
    context = client_context(pki.ca_path, credential, version=version)
    connection = _Connection(port, context)

    try:
        connection.request("GET", "/")
        response = connection.getresponse()
        body = response.read().decode("utf-8", "replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return connection.local_port, _describe_error(exc), False
    finally:
        connection.close()

    accepted = response.status == HTTPStatus.OK
    return connection.local_port, f"HTTP {response.status}: {body}", accepted


def _describe_error(exc: BaseException) -> str:
    text = _SSL_SOURCE.sub("", str(exc)) or repr(exc)
    return f"{type(exc).__name__}: {text}"


def _run_attempts(pki: DemoPKI, port: int) -> list[Attempt]:
    attempts = []

    for version_name, version in _VERSIONS:
        for name in CREDENTIALS:
            credential = pki.clients.get(name)
            local_port, result, accepted = _connect(pki, port, version, credential)
            attempts.append(
                Attempt(
                    tls_version=version_name,
                    credential=name,
                    client_port=local_port,
                    client_result=result,
                    accepted=accepted,
                    expected_sha256=credential.sha256 if credential else None,
                )
            )

    return attempts


# -- reading the telemetry back ---------------------------------------------------


def _spans_by_port(spans: Iterable[ReadableSpan], side: str) -> dict[int, ReadableSpan]:
    """Handshake spans of one side, keyed by the client's port."""
    port_attribute = A.CLIENT_PORT if side == "server" else A.NETWORK_LOCAL_PORT
    found = {}

    for span in spans:
        attributes = span.attributes or {}
        if attributes.get(A.MTLS_SIDE) != side:
            continue

        port = attributes.get(port_attribute)
        if isinstance(port, int):
            found[port] = span

    return found


def _wait_for_server_spans(telemetry: Telemetry, ports: set[int]) -> None:
    # A server records a rejection after sending its alert, so the client can
    # have its answer a moment before the server's span has ended.
    deadline = time.monotonic() + _TIMEOUT
    while time.monotonic() < deadline:
        recorded = _spans_by_port(telemetry.spans.get_finished_spans(), "server")
        if ports <= recorded.keys():
            return

        time.sleep(0.01)

    _logger.warning("gave up waiting for the server's handshake spans")


def _attach_telemetry(attempts: Sequence[Attempt], telemetry: Telemetry) -> None:
    spans = telemetry.spans.get_finished_spans()
    servers = _spans_by_port(spans, "server")
    clients = _spans_by_port(spans, "client")
    logged = {
        record.get(A.CLIENT_PORT)
        for record in telemetry.failure_logs()
        if record.get(A.MTLS_SIDE) == "server"
    }

    for attempt in attempts:
        if attempt.client_port is None:
            continue

        server = servers.get(attempt.client_port)
        if server is not None:
            attempt.server = dict(server.attributes or {})
            attempt.trace_id = format(server.context.trace_id, "032x")

        client = clients.get(attempt.client_port)
        if client is not None:
            attempt.client = dict(client.attributes or {})

        attempt.failure_logged = attempt.client_port in logged


# -- expectations -----------------------------------------------------------------


def check(attempts: Sequence[Attempt]) -> list[str]:
    """Every way in which the attempts did not behave as the demo expects."""
    problems = []

    for attempt in attempts:
        label = f"TLS {attempt.tls_version} {attempt.credential}"
        problem = _problem(attempt)
        if problem:
            problems.append(f"{label}: {problem}")

    return problems


def _problem(attempt: Attempt) -> str:
    server = attempt.server
    if server is None:
        return f"no server handshake span for client port {attempt.client_port}"

    digest = server.get(A.TLS_CLIENT_HASH_SHA256)
    if digest != attempt.expected_sha256:
        return f"recorded sha256 {digest}, expected {attempt.expected_sha256}"

    if attempt.credential == "valid":
        return _acceptance_problem(attempt, server)

    return _rejection_problem(attempt, server)


def _acceptance_problem(attempt: Attempt, server: Mapping[str, AttributeValue]) -> str:
    if not attempt.accepted:
        return f"expected acceptance, client saw {attempt.client_result!r}"

    if server.get(A.MTLS_OUTCOME) != "success":
        return f"expected acceptance, server outcome {server.get(A.MTLS_OUTCOME)}"

    return ""


def _rejection_problem(attempt: Attempt, server: Mapping[str, AttributeValue]) -> str:
    if attempt.accepted or server.get(A.MTLS_OUTCOME) != "failure":
        return f"expected rejection, client saw {attempt.client_result!r}"

    if not server.get(A.MTLS_FAILURE_REASON):
        return "no failure reason recorded"

    if not attempt.failure_logged:
        return "no failure log record emitted"

    return ""


# -- output -----------------------------------------------------------------------

_COLUMNS: Final = ("TLS", "credential", "outcome", "reason", "verify", "client subject")


def _row(attempt: Attempt) -> tuple[str, ...]:
    server = attempt.server or {}
    return (
        attempt.tls_version,
        attempt.credential,
        str(server.get(A.MTLS_OUTCOME, "(no span)")),
        str(server.get(A.MTLS_FAILURE_REASON, "-")),
        str(server.get(A.MTLS_VERIFY_CODE, "-")),
        str(server.get(A.TLS_CLIENT_SUBJECT, "-")),
    )


def _client_view(attempt: Attempt) -> str:
    view = f"client: {attempt.client_result}"
    client = attempt.client or {}
    reason = client.get(A.MTLS_FAILURE_REASON)
    if reason is None:
        return view

    view += f" -> {reason}"
    alert = client.get(A.MTLS_ALERT_RECEIVED)
    if alert is not None:
        view += f" (alert {alert} received)"

    return view


def _table(attempts: Sequence[Attempt], pki: DemoPKI) -> list[str]:
    rows = [_COLUMNS, *(_row(attempt) for attempt in attempts)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    files = {name: cred.cert_path for name, cred in pki.clients.items()}
    lines = []

    for attempt, row in zip((None, *attempts), rows):
        cells = "  ".join(cell.ljust(width) for cell, width in zip(row, widths))
        trace = "trace id" if attempt is None else attempt.trace_id or "-"
        lines.append(f"{cells}  {trace}")
        if attempt is None:
            continue

        digest = (attempt.server or {}).get(A.TLS_CLIENT_HASH_SHA256)
        if digest is not None:
            path = files.get(attempt.credential)
            where = f"  ({path.name})" if path is not None else ""
            lines.append(f"     sha256 {digest}{where}")
        lines.append(f"     {_client_view(attempt)}")

    return lines


def _header(pki: DemoPKI, kept: bool, port: int) -> list[str]:
    fate = "kept" if kept else "temporary, removed at exit"
    example = pki.clients["valid"].cert_path
    return [
        f"PKI in {pki.directory} ({fate}); CA {pki.ca_path.name}.",
        f"  openssl x509 -in {example} -noout -fingerprint -sha256",
        "  prints the same SHA-256 as below, with colons.",
        f"Server https://{_HOST}:{port}/ requires a client certificate of that CA.",
        "What the server's handshake spans recorded for each client:",
        "",
    ]


def _footer(attempts: Sequence[Attempt], telemetry: Telemetry) -> list[str]:
    rejected = sum(
        1
        for attempt in attempts
        if (attempt.server or {}).get(A.MTLS_OUTCOME) == "failure"
    )
    logs = telemetry.failure_logs()
    server_logs = sum(1 for record in logs if record.get(A.MTLS_SIDE) == "server")
    totals = telemetry.handshake_totals()
    counter = "; ".join(
        f"{side} {outcome}={count}" for (side, outcome), count in sorted(totals.items())
    )

    return [
        "",
        f"{len(attempts)} attempts, {rejected} rejected by the server.",
        f"{len(logs)} {A.EVENT_HANDSHAKE_FAILED} log records "
        f"({server_logs} server, {len(logs) - server_logs} client).",
        f"{A.METRIC_HANDSHAKES} counter: {counter or 'nothing recorded'}.",
        f"Telemetry: {telemetry.destination()}.",
    ]


# -- the whole run ----------------------------------------------------------------


def run(
    *,
    as_json: bool = False,
    keep_dir: Optional[Path] = None,
    out: Optional[TextIO] = None,
) -> int:
    """Run the demo; 0 when every attempt behaved as expected, else 1."""
    stream = out if out is not None else sys.stdout
    instrumentor = SSLInstrumentor()

    if instrumentor.is_instrumented_by_opentelemetry:
        print(
            "otel-mtls demo: the ssl module is already instrumented in this process "
            "(by opentelemetry-instrument?); the demo needs its own providers",
            file=sys.stderr,
        )
        return 1

    with contextlib.ExitStack() as stack:
        try:
            directory = _pki_directory(stack, keep_dir)
            pki = build_demo_pki(directory)
        except OSError as exc:
            print(f"otel-mtls demo: cannot write the PKI: {exc}", file=sys.stderr)
            return 2

        telemetry = Telemetry(otlp_targets(os.environ))
        stack.callback(telemetry.shutdown)

        attempts, port = _instrumented_run(instrumentor, pki, telemetry)

        if as_json:
            for attempt in attempts:
                print(json.dumps(attempt.as_json()), file=stream)
        else:
            lines = [
                *_header(pki, keep_dir is not None, port),
                *_table(attempts, pki),
                *_footer(attempts, telemetry),
            ]
            print("\n".join(lines), file=stream)

        # Reported before the OTLP exporters flush, which can take a while.
        return _report(check(attempts), len(attempts), as_json, stream)


def _pki_directory(stack: contextlib.ExitStack, keep_dir: Optional[Path]) -> Path:
    if keep_dir is None:
        return Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="otel-mtls-"))
        )

    keep_dir.mkdir(parents=True, exist_ok=True)
    return keep_dir.resolve()


def _instrumented_run(
    instrumentor: SSLInstrumentor, pki: DemoPKI, telemetry: Telemetry
) -> tuple[list[Attempt], int]:
    # Capturing rejected certificates is set explicitly: an environment that turns
    # it off would hide exactly what the demo is there to show.
    instrumentor.instrument(
        tracer_provider=telemetry.tracer_provider,
        meter_provider=telemetry.meter_provider,
        logger_provider=telemetry.logger_provider,
        capture_rejected_certificates=True,
    )

    try:
        context = server_context(pki.server, pki.ca_path)
        with _running_server(context) as port:
            attempts = _run_attempts(pki, port)
            ports = {a.client_port for a in attempts if a.client_port is not None}
            _wait_for_server_spans(telemetry, ports)
    finally:
        instrumentor.uninstrument()

    _attach_telemetry(attempts, telemetry)
    return attempts, port


def _report(problems: Sequence[str], count: int, as_json: bool, out: TextIO) -> int:
    for problem in problems:
        print(f"otel-mtls demo: unexpected: {problem}", file=sys.stderr)

    if problems:
        return 1

    if not as_json:
        print(f"All {count} attempts behaved as expected.", file=out)

    return 0
