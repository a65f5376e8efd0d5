"""Shared fixtures: a PKI made per test run, in-memory telemetry, loopback peers."""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from otel_mtls import attributes as A
from otel_mtls import pki as pki_module
from otel_mtls.demo import in_memory_log_exporter
from otel_mtls.ssl_instrumentor import SSLInstrumentor

TIMEOUT = 5.0


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> pki_module.DemoPKI:
    return pki_module.build_demo_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class Telemetry:
    """In-memory providers and what they received."""

    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    logger_provider: LoggerProvider
    span_exporter: InMemorySpanExporter
    log_exporter: Any
    reader: InMemoryMetricReader

    def spans(self, side: Optional[str] = None) -> list[ReadableSpan]:
        spans = list(self.span_exporter.get_finished_spans())
        if side is None:
            return spans

        return [s for s in spans if (s.attributes or {}).get(A.MTLS_SIDE) == side]

    def span(self, side: str) -> ReadableSpan:
        spans = self.spans(side)
        assert len(spans) == 1, [s.attributes for s in self.spans()]
        return spans[0]

    def logs(self) -> list[Any]:
        return [item.log_record for item in self.log_exporter.get_finished_logs()]

    def counts(self, metric: str = A.METRIC_HANDSHAKES) -> dict[tuple[Any, ...], int]:
        """Counter values keyed by the sorted attribute items of each point."""
        data = self.reader.get_metrics_data()
        result: dict[tuple[Any, ...], int] = {}
        if data is None:
            return result

        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for item in scope.metrics:
                    if item.name != metric:
                        continue
                    for point in item.data.data_points:
                        key = tuple(sorted((point.attributes or {}).items()))
                        value: Any = getattr(point, "value", None)
                        if value is None:
                            value = getattr(point, "count", 0)
                        result[key] = int(value)

        return result

    def clear(self) -> None:
        self.span_exporter.clear()
        self.log_exporter.clear()


def make_telemetry() -> Telemetry:
    span_exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(span_exporter))

    log_exporter = in_memory_log_exporter()
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(SimpleLogRecordProcessor(log_exporter))

    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    return Telemetry(
        tracer_provider,
        meter_provider,
        logger_provider,
        span_exporter,
        log_exporter,
        reader,
    )


@contextlib.contextmanager
def instrumented(**settings: Any) -> Iterator[Telemetry]:
    """Instrument with fresh in-memory providers and ``settings``; then undo it."""
    collected = make_telemetry()
    instrumentor = SSLInstrumentor()
    instrumentor.instrument(
        tracer_provider=collected.tracer_provider,
        meter_provider=collected.meter_provider,
        logger_provider=collected.logger_provider,
        **settings,
    )

    try:
        yield collected
    finally:
        instrumentor.uninstrument()
        collected.tracer_provider.shutdown()
        collected.logger_provider.shutdown()
        collected.meter_provider.shutdown()


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    with instrumented() as collected:
        yield collected

    # Every name the package emitted must be in the documented registry.
    emitted = {key for span in collected.spans() for key in (span.attributes or {})}
    emitted |= {key for log in collected.logs() for key in (log.attributes or {})}
    unknown = emitted - A.REGISTERED_NAMES
    assert not unknown, f"emitted but not in the reference registry: {unknown}"


@dataclass
class Result:
    """What each side of one loopback connection saw."""

    server: Any = None
    client: Any = None
    port: int = 0
    client_port: int = 0
    server_data: bytes = b""
    client_data: bytes = b""
    errors: list[BaseException] = field(default_factory=list)


Client = Callable[[int, Result], bytes]


def serve_once(
    server_ctx: ssl.SSLContext,
    client: Client,
    *,
    mode: str = "explicit",
    server_timeout: float = TIMEOUT,
) -> Result:
    """One TLS connection over 127.0.0.1 with a server thread; both outcomes kept.

    ``mode`` is how the server handshakes: ``eager`` inside ``wrap_socket``,
    ``explicit`` by calling ``do_handshake()``, ``lazy`` inside the first read.
    The server reads once and answers ``pong``. ``client(port, result)`` notes its
    local port in ``result`` and returns what it read, or raises.
    """
    result = Result()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    port = result.port = listener.getsockname()[1]

    def server() -> None:
        try:
            raw, _ = listener.accept()
        except OSError as exc:
            result.server = exc
            return

        raw.settimeout(server_timeout)
        tls: Optional[ssl.SSLSocket] = None
        try:
            tls = server_ctx.wrap_socket(
                raw, server_side=True, do_handshake_on_connect=mode == "eager"
            )
            if mode == "explicit":
                tls.do_handshake()
            result.server_data = tls.recv(64)
            tls.sendall(b"pong")
            result.server = "ok"
            tls.close()
        except BaseException as exc:  # noqa: BLE001 - recorded for the test
            result.server = exc
            if tls is not None and tls.fileno() >= 0:
                _drain_and_close(socket.socket(fileno=tls.detach()))
            else:
                raw.close()

    thread = threading.Thread(target=server, daemon=True)
    thread.start()

    try:
        result.client_data = client(port, result)
        result.client = "ok"
    except BaseException as exc:  # noqa: BLE001 - recorded for the test
        result.client = exc

    thread.join(TIMEOUT * 2)
    listener.close()
    assert not thread.is_alive(), "server thread did not stop"
    return result


def _drain_and_close(raw: socket.socket) -> None:
    """Close only after the client is done, so it reads our alert, not a reset.

    Closing a socket with unread data makes the kernel send RST, and the client
    would see a reset instead of the alert OpenSSL already sent.
    """
    raw.settimeout(1.0)
    try:
        for _ in range(64):
            if not raw.recv(4096):
                break
    except OSError:
        pass
    finally:
        raw.close()


def tls_client(
    client_ctx: ssl.SSLContext, server_hostname: Optional[str] = "localhost"
) -> Client:
    """A blocking client that sends ``ping`` and reads the answer."""

    def run(port: int, result: Result) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            result.client_port = raw.getsockname()[1]
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname) as tls:
                tls.sendall(b"ping")
                return tls.recv(64)

    return run


def versions() -> Sequence[ssl.TLSVersion]:
    return (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)


def write_pem(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path
