"""A client that fails too often, for the end-to-end test of the pipeline.

``python -m tests.offender DIRECTORY`` starts an instrumented mTLS server on
127.0.0.1 that exports over OTLP/HTTP to ``OTEL_EXPORTER_OTLP_ENDPOINT``, connects
to it ``--failures`` times with a certificate from a CA the server does not trust
and once with a valid one, flushes the telemetry, and prints one JSON object: the
fingerprints of the untrusted client, the valid client and the server.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import threading
from pathlib import Path

from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import (
    OTLPMetricExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from otel_mtls import expiry
from otel_mtls.certs import sha256_hex
from otel_mtls.pki import Credential, build_demo_pki, client_context, server_context
from otel_mtls.ssl_instrumentor import SSLInstrumentor

TIMEOUT = 5.0


def _fingerprint(credential: Credential) -> str:
    return sha256_hex(ssl.PEM_cert_to_DER_cert(credential.cert_pem.decode()))


def _serve(listener: socket.socket, context: ssl.SSLContext, count: int) -> None:
    for _ in range(count):
        raw, _ = listener.accept()
        raw.settimeout(TIMEOUT)
        try:
            with context.wrap_socket(raw, server_side=True) as tls:
                tls.recv(64)
                tls.sendall(b"pong")
        except (OSError, ssl.SSLError):
            # Rejected clients are the point; the telemetry has recorded them.
            raw.close()


def _connect(port: int, context: ssl.SSLContext) -> None:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    try:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"ping")
            tls.recv(64)
    except (OSError, ssl.SSLError):
        pass
    finally:
        raw.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("directory", type=Path)
    parser.add_argument("--failures", type=int, default=8)
    args = parser.parse_args()

    resource = Resource.create()
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(SimpleSpanProcessor(OTLPSpanExporter()))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(
        SimpleLogRecordProcessor(OTLPLogExporter())
    )
    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(), export_interval_millis=3_600_000
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])

    instrumentor = SSLInstrumentor()
    instrumentor.instrument(
        tracer_provider=tracer_provider,
        meter_provider=meter_provider,
        logger_provider=logger_provider,
    )

    pki = build_demo_pki(args.directory)
    offender = pki.untrusted_ca.issue("offender").write(args.directory)
    valid = pki.clients["valid"]
    server = server_context(pki.server, pki.ca_path)
    expiry.watch_context(server)
    # TLS 1.2: the client learns of its rejection in the handshake itself.
    rejected = client_context(pki.ca_path, offender, version=ssl.TLSVersion.TLSv1_2)
    accepted = client_context(pki.ca_path, valid)

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(TIMEOUT)
        port = listener.getsockname()[1]
        thread = threading.Thread(
            target=_serve, args=(listener, server, args.failures + 1), daemon=True
        )
        thread.start()
        for _ in range(args.failures):
            _connect(port, rejected)
        _connect(port, accepted)
        thread.join(TIMEOUT * 2)

    # The metric reader exports on shutdown: the gauge is observed then.
    meter_provider.shutdown()
    tracer_provider.shutdown()
    logger_provider.shutdown()
    instrumentor.uninstrument()

    print(
        json.dumps(
            {
                "offender": _fingerprint(offender),
                "valid": _fingerprint(valid),
                "server": _fingerprint(pki.server),
            }
        )
    )


if __name__ == "__main__":
    main()
