"""Instrumentor behaviour: set-up, tear-down, configuration, safety, metrics."""

from __future__ import annotations

import _ssl
import gzip
import http.server
import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)

from otel_mtls import attributes as A
from otel_mtls import certs, config
from otel_mtls import pki as pki_module
from otel_mtls import ssl_instrumentor as instrumentor_module
from otel_mtls.pki import DemoPKI
from otel_mtls.ssl_instrumentor import SSLInstrumentor

from .conftest import (
    Result,
    Telemetry,
    instrumented,
    make_telemetry,
    serve_once,
    tls_client,
)

V13 = ssl.TLSVersion.TLSv1_3
V12 = ssl.TLSVersion.TLSv1_2
_MSG_CALLBACK: Any = _ssl._SSLContext.__dict__["_msg_callback"]


def _pair(pki: DemoPKI, name: str, version: ssl.TLSVersion) -> Result:
    credential = None if name == "none" else pki.clients[name]
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=version)
    client_ctx = pki_module.client_context(pki.ca_path, credential, version=version)
    return serve_once(server_ctx, tls_client(client_ctx))


def test_contexts_created_before_instrument_are_observed(pki: DemoPKI) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    client_ctx = pki_module.client_context(pki.ca_path, pki.clients["untrusted"])
    with instrumented() as collected:
        serve_once(server_ctx, tls_client(client_ctx))

    attrs = dict(collected.span("server").attributes or {})
    assert attrs[A.MTLS_FAILURE_REASON] == "unknown_ca"
    assert attrs[A.TLS_CLIENT_HASH_SHA256] == pki.clients["untrusted"].sha256


def test_uninstrument_restores_every_patched_name(pki: DemoPKI) -> None:
    patched = [
        (ssl.SSLContext, "wrap_socket"),
        (ssl.SSLContext, "wrap_bio"),
        (ssl.SSLSocket, "do_handshake"),
        (ssl.SSLObject, "do_handshake"),
    ]
    before = [owner.__dict__[name] for owner, name in patched]
    collected = make_telemetry()
    instrumentor = SSLInstrumentor()
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    client_ctx = pki_module.client_context(pki.ca_path, pki.clients["valid"])

    instrumentor.instrument(tracer_provider=collected.tracer_provider)
    during = [owner.__dict__[name] for owner, name in patched]
    serve_once(server_ctx, tls_client(client_ctx))
    assert _MSG_CALLBACK.__get__(server_ctx) is not None
    instrumentor.uninstrument()

    after = [owner.__dict__[name] for owner, name in patched]
    assert all(a is not b for a, b in zip(before, during))
    assert all(a is b for a, b in zip(before, after))
    assert _MSG_CALLBACK.__get__(server_ctx) is None
    assert _MSG_CALLBACK.__get__(client_ctx) is None

    collected.span_exporter.clear()
    result = serve_once(server_ctx, tls_client(client_ctx))
    assert result.client_data == b"pong"
    assert collected.spans() == []


def test_a_users_own_message_callback_keeps_working(
    telemetry: Telemetry, pki: DemoPKI
) -> None:
    seen: list[str] = []
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    # The public property hands the user enums; that must stay so.
    user_callback: Any = lambda *args: seen.append(repr(args[3]))  # noqa: E731
    setattr(server_ctx, "_msg_callback", user_callback)  # noqa: B010
    client_ctx = pki_module.client_context(pki.ca_path, pki.clients["untrusted"])

    serve_once(server_ctx, tls_client(client_ctx))

    assert "<_TLSContentType.HANDSHAKE: 22>" in seen
    attrs = dict(telemetry.span("server").attributes or {})
    assert attrs[A.TLS_CLIENT_HASH_SHA256] == pki.clients["untrusted"].sha256


@pytest.mark.parametrize(
    ("common_name", "expected"),
    [
        ("first\nsecond\r\x1b[31m", "CN=first\\x0asecond\\x0d\\x1b[31m"),
        ("J\u00fcrgen \u6771\u4eac", "CN=J\u00fcrgen \u6771\u4eac"),
        ("evil\u202etxt.exe", "CN=evil\\u202etxt.exe"),
        ("A" * 8192, "CN=" + "A" * 1021 + "...(+7171 chars)"),
    ],
    ids=["newline", "non_ascii", "bidi", "8kb"],
)
@pytest.mark.parametrize("trusted", [True, False], ids=["accepted", "rejected"])
def test_hostile_subjects_stay_one_escaped_capped_line(
    telemetry: Telemetry,
    pki: DemoPKI,
    tmp_path: Path,
    common_name: str,
    expected: str,
    trusted: bool,
) -> None:
    issuer = pki.ca if trusted else pki.untrusted_ca
    credential = issuer.issue("odd", common_name=common_name).write(tmp_path)
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    client_ctx = pki_module.client_context(pki.ca_path, credential)

    serve_once(server_ctx, tls_client(client_ctx))

    attrs = dict(telemetry.span("server").attributes or {})
    assert attrs[A.TLS_CLIENT_SUBJECT] == expected
    assert attrs[A.TLS_CLIENT_HASH_SHA256] == credential.sha256
    if not trusted:
        (log,) = [x for x in telemetry.logs() if x.attributes[A.MTLS_SIDE] == "server"]
        body = str(log.body)
        assert "\n" not in body and "\r" not in body and "\x1b" not in body
        assert expected in body


def test_exporter_traffic_is_not_recorded(
    pki: DemoPKI, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The OTLP exporter's own TLS connection produces no telemetry."""
    received: list[bytes] = []
    # requests lets these variables override the exporter's own CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)

    class Collector(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if self.headers.get("Content-Encoding") == "gzip":
                body = gzip.decompress(body)
            received.append(body)
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    collector_ctx = pki_module.server_context(
        pki.server, pki.ca_path, verify=ssl.CERT_NONE
    )
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Collector)
    httpd.socket = collector_ctx.wrap_socket(httpd.socket, server_side=True)
    port = httpd.server_address[1]

    def serve() -> None:
        # The collector stands in for another process: nothing it does is ours.
        token = otel_context.attach(
            otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True)
        )
        try:
            httpd.serve_forever(poll_interval=0.05)
        finally:
            otel_context.detach(token)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()

    memory = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(memory))
    exporter = OTLPSpanExporter(
        endpoint=f"https://localhost:{port}/v1/traces",
        certificate_file=str(pki.ca_path),
        timeout=5,
    )
    tracer_provider.add_span_processor(BatchSpanProcessor(exporter))
    instrumentor = SSLInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider)

    try:
        _pair(pki, "valid", V13)
        assert tracer_provider.force_flush(10_000)
        _pair(pki, "valid", V12)
        assert tracer_provider.force_flush(10_000)
    finally:
        instrumentor.uninstrument()
        tracer_provider.shutdown()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)

    # Four handshake spans of the application, none of the exporter's own.
    spans = memory.get_finished_spans()
    ports = {(s.attributes or {}).get(A.SERVER_PORT) for s in spans}
    assert len(spans) == 4
    assert port not in ports
    assert len(received) >= 1
    assert b"TLS server handshake" in b"".join(received)


class _Broken(Exception):
    pass


class _BrokenInstrument:
    def add(self, *args: Any, **kwargs: Any) -> None:
        raise _Broken("counter")

    def record(self, *args: Any, **kwargs: Any) -> None:
        raise _Broken("histogram")


class _BrokenMeter:
    def create_counter(self, *args: Any, **kwargs: Any) -> _BrokenInstrument:
        return _BrokenInstrument()

    def create_histogram(self, *args: Any, **kwargs: Any) -> _BrokenInstrument:
        return _BrokenInstrument()


class _BrokenMeterProvider:
    def get_meter(self, *args: Any, **kwargs: Any) -> _BrokenMeter:
        return _BrokenMeter()


class _BrokenSpanProcessor(SimpleSpanProcessor):
    def on_start(self, *args: Any, **kwargs: Any) -> None:
        raise _Broken("span processor")


class _BrokenLogProcessor:
    def on_emit(self, *args: Any, **kwargs: Any) -> None:
        raise _Broken("log processor")

    emit = on_emit

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 0) -> bool:
        return True


def _outcomes(pki: DemoPKI) -> list[tuple[str, str, bytes, bytes]]:
    seen = []
    for version in (V13, V12):
        for name in ("valid", "expired", "untrusted", "none"):
            result = _pair(pki, name, version)
            seen.append(
                (
                    repr(result.client),
                    repr(result.server),
                    result.client_data,
                    result.server_data,
                )
            )
    return seen


def _without_lines(outcomes: list[tuple[str, str, bytes, bytes]]) -> list[Any]:
    # The C source line inside OpenSSL messages differs between the read and
    # handshake code paths, not between runs; keep everything else.
    return [
        tuple(item.split(" (_ssl.c")[0] for item in o[:2]) + o[2:] for o in outcomes
    ]


def test_broken_pipeline_changes_no_handshake(
    pki: DemoPKI, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _outcomes(pki)

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(_BrokenSpanProcessor(InMemorySpanExporter()))
    logger_provider = LoggerProvider()
    broken: Any = _BrokenLogProcessor()
    logger_provider.add_log_record_processor(broken)

    def broken_note(*args: Any) -> None:
        raise _Broken("message callback")

    instrumentor = SSLInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider,
        meter_provider=_BrokenMeterProvider(),
        logger_provider=logger_provider,
    )
    try:
        with caplog.at_level(logging.WARNING, logger="otel_mtls"):
            broken = _outcomes(pki)
            monkeypatch.setattr(instrumentor_module, "_note_message", broken_note)
            broken_callback = _outcomes(pki)
    finally:
        instrumentor.uninstrument()

    assert _without_lines(broken) == _without_lines(plain)
    assert _without_lines(broken_callback) == _without_lines(plain)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "handshakes are unaffected" in warnings[0].getMessage()


def test_metrics_count_exactly_and_carry_no_identity(
    telemetry: Telemetry, pki: DemoPKI
) -> None:
    for _ in range(3):
        _pair(pki, "untrusted", V13)
    for _ in range(2):
        _pair(pki, "valid", V12)
    _pair(pki, "none", V12)

    counts = telemetry.counts()
    server_unknown_ca = (
        (A.MTLS_FAILURE_REASON, "unknown_ca"),
        (A.MTLS_SIDE, "server"),
        (A.MTLS_OUTCOME, "failure"),
        (A.TLS_PROTOCOL_VERSION, "1.3"),
    )
    assert counts[tuple(sorted(server_unknown_ca))] == 3
    server_ok = (
        (A.MTLS_SIDE, "server"),
        (A.MTLS_OUTCOME, "success"),
        (A.TLS_PROTOCOL_VERSION, "1.2"),
    )
    assert counts[tuple(sorted(server_ok))] == 2
    no_cert = (
        (A.MTLS_FAILURE_REASON, "no_client_certificate"),
        (A.MTLS_SIDE, "server"),
        (A.MTLS_OUTCOME, "failure"),
        (A.TLS_PROTOCOL_VERSION, "1.2"),
    )
    assert counts[tuple(sorted(no_cert))] == 1
    assert sum(counts.values()) == 12

    durations = telemetry.counts(A.METRIC_HANDSHAKE_DURATION)
    assert sum(durations.values()) == 12
    for key in list(counts) + list(durations):
        assert {name for name, _ in key} <= set(A.METRIC_ATTRIBUTES)


def test_success_logs_and_chain_pem_are_opt_in(pki: DemoPKI) -> None:
    with instrumented(log_success=True, capture_chain_pem=True) as collected:
        _pair(pki, "valid", V13)

    server = dict(collected.span("server").attributes or {})
    chain = server[A.TLS_CLIENT_CERTIFICATE_CHAIN]
    assert isinstance(chain, tuple)
    assert chain[0] == ssl.DER_cert_to_PEM_cert(pki.clients["valid"].der)
    logs = collected.logs()
    assert len(logs) == 2
    assert {str(log.severity_text) for log in logs} == {"INFO"}


def test_configuration_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PYTHON_MTLS_LOG_SUCCESS", "true")
    monkeypatch.setenv("OTEL_PYTHON_MTLS_MAX_NAME_LENGTH", "64")
    monkeypatch.setenv("OTEL_PYTHON_MTLS_CERT_CACHE_SIZE", "not-a-number")

    resolved = config.resolve({"max_name_length": 128})

    assert resolved.log_success is True
    assert resolved.max_name_length == 128
    assert resolved.cert_cache_size == 1024
    assert resolved.capture_rejected_certificates is True
    assert config.resolve({}, environ={}).log_success is False


@pytest.mark.parametrize(
    ("keyword", "value", "expected"),
    [
        ("log_success", "false", False),
        ("log_success", "yes", True),
        ("log_success", "maybe", False),
        ("max_name_length", -5, 1024),
        ("max_name_length", 0, 1024),
        ("max_name_length", "abc", 1024),
        ("max_name_length", "64", 64),
        ("max_san_count", True, 32),
    ],
)
def test_keyword_values_are_checked_like_the_environment(
    keyword: str, value: object, expected: object, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="otel_mtls.config"):
        resolved = config.resolve({keyword: value}, environ={})

    assert getattr(resolved, keyword) == expected
    rejected = [r.getMessage() for r in caplog.records]
    kind = "true or false" if isinstance(expected, bool) else "a positive integer"
    if str(value) in ("maybe", "-5", "0", "abc", "True"):
        assert rejected == [
            f"ignoring the keyword argument {keyword}: expected {kind}, "
            f"got {value!r}; using the default {expected!r}"
        ]
    else:
        assert rejected == []


def test_capture_can_be_switched_off(pki: DemoPKI) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    with instrumented(capture_rejected_certificates=False) as collected:
        client_ctx = pki_module.client_context(pki.ca_path, pki.clients["untrusted"])
        serve_once(server_ctx, tls_client(client_ctx))

    attrs = dict(collected.span("server").attributes or {})
    assert _MSG_CALLBACK.__get__(server_ctx) is None
    assert attrs[A.MTLS_FAILURE_REASON] == "unknown_ca"
    assert A.TLS_CLIENT_HASH_SHA256 not in attrs


@pytest.fixture
def parse_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    calls: list[bytes] = []
    original = certs.parse_der

    def counting(der: bytes, *args: Any) -> certs.CertInfo:
        calls.append(der)
        return original(der, *args)

    monkeypatch.setattr(certs, "parse_der", counting)
    yield calls


def test_each_certificate_is_parsed_once(
    parse_calls: list[bytes], telemetry: Telemetry, pki: DemoPKI
) -> None:
    for _ in range(5):
        _pair(pki, "valid", V13)
        _pair(pki, "untrusted", V12)

    assert len(telemetry.spans()) == 20
    assert sorted(parse_calls) == sorted(
        {pki.clients["valid"].der, pki.clients["untrusted"].der, pki.server.der}
    )
