"""Servers for the probe tests, started as subprocesses by ``test_probe``.

``python tests/probe_targets.py werkzeug ...`` serves a WSGI app with Werkzeug
over mTLS, instrumented by hand when ``--otlp`` is given, checking client
certificates against a CRL when ``--crl`` is given, and writes its port to
``--port-file`` once it listens. ``app`` is a minimal ASGI app for uvicorn.
"""

from __future__ import annotations

import argparse
import ssl
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from pathlib import Path
from typing import Any

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
StartResponse = Callable[[str, list[tuple[str, str]]], Any]

# Export quickly: the probe waits for the records with a deadline.
_EXPORT_DELAY_MS = 100


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers every HTTP request with 200 ``ok``."""
    if scope["type"] != "http":
        return

    headers = [(b"content-type", b"text/plain")]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"ok"})


def wsgi_app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _instrument(endpoint: str) -> None:
    # Imported here: the ASGI app above must stay cheap to import for uvicorn.
    from opentelemetry.exporter.otlp.proto.http._log_exporter import (  # noqa: PLC0415
        OTLPLogExporter,
    )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )
    from opentelemetry.sdk._logs import LoggerProvider  # noqa: PLC0415
    from opentelemetry.sdk._logs.export import (  # noqa: PLC0415
        BatchLogRecordProcessor,
    )
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415

    from otel_mtls.ssl_instrumentor import SSLInstrumentor  # noqa: PLC0415

    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(
        BatchSpanProcessor(
            OTLPSpanExporter(endpoint=f"{endpoint}/v1/traces"),
            schedule_delay_millis=_EXPORT_DELAY_MS,
        )
    )
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(
        BatchLogRecordProcessor(
            OTLPLogExporter(endpoint=f"{endpoint}/v1/logs"),
            schedule_delay_millis=_EXPORT_DELAY_MS,
        )
    )
    SSLInstrumentor().instrument(
        tracer_provider=tracer_provider,
        meter_provider=MeterProvider(),
        logger_provider=logger_provider,
    )


def serve_werkzeug(args: argparse.Namespace) -> None:
    from werkzeug.serving import make_server  # noqa: PLC0415

    if args.otlp:
        _instrument(args.otlp)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(args.cert, args.key)
    context.load_verify_locations(cafile=args.ca)
    context.verify_mode = (
        ssl.CERT_OPTIONAL if args.verify == "optional" else ssl.CERT_REQUIRED
    )
    if args.crl:
        # Leaf checking only: the CRL covers the certificates the test CA issued,
        # and the chain check would also demand one for the root.
        context.load_verify_locations(cafile=args.crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF

    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True, ssl_context=context)
    args.port_file.write_text(str(server.port))
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("server", choices=["werkzeug"])
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument(
        "--verify", choices=["required", "optional"], default="required"
    )
    parser.add_argument("--otlp", default="")
    parser.add_argument("--crl", default="", help="a PEM CRL of the CA")
    parser.add_argument("--port-file", type=Path, required=True)
    serve_werkzeug(parser.parse_args())


if __name__ == "__main__":
    main()
