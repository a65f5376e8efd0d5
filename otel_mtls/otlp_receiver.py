"""A minimal OTLP/HTTP receiver, so that the probe can see what a target records.

It accepts protobuf exports on ``/v1/logs`` and ``/v1/traces`` (gzip or not),
keeps the handshake failure log records and the server handshake spans, and
answers every export with an empty success response. Metrics are accepted and
dropped. It is a test instrument, not a collector: everything is held in memory,
bounded by ``max_records``.
"""

from __future__ import annotations

import gzip
import logging
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Optional, Union

from opentelemetry.proto.collector.logs.v1 import logs_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

from otel_mtls import attributes as A

_logger = logging.getLogger(__name__)

# An export larger than this is refused: the probe's targets send a few records.
_MAX_BODY: Final = 16 * 1024 * 1024

Value = Union[str, bool, int, float, list[object], None]


@dataclass(frozen=True)
class Record:
    """One received log record or span that may describe a handshake."""

    kind: str
    name: str
    attributes: dict[str, Value]


def _value(value: AnyValue) -> Value:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(item) for item in value.array_value.values]
    if which is None or which in {"kvlist_value", "bytes_value"}:
        return None

    found: Value = getattr(value, which)
    return found


def _attributes(items: Iterable[KeyValue]) -> dict[str, Value]:
    return {item.key: _value(item.value) for item in items}


def decode_logs(body: bytes) -> list[Record]:
    """The log records of an ``ExportLogsServiceRequest``, by event name."""
    request = logs_service_pb2.ExportLogsServiceRequest()
    request.ParseFromString(body)
    return [
        Record("log", record.event_name, _attributes(record.attributes))
        for resource in request.resource_logs
        for scope in resource.scope_logs
        for record in scope.log_records
    ]


def decode_spans(body: bytes) -> list[Record]:
    """The spans of an ``ExportTraceServiceRequest``."""
    request = trace_service_pb2.ExportTraceServiceRequest()
    request.ParseFromString(body)
    return [
        Record("span", span.name, _attributes(span.attributes))
        for resource in request.resource_spans
        for scope in resource.scope_spans
        for span in scope.spans
    ]


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY:
            self._answer(HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return

        body = self.rfile.read(length)
        if self.headers.get("Content-Encoding", "").lower() == "gzip":
            body = gzip.decompress(body)

        try:
            self.server.receiver.accept(self.path, body)
        except Exception:  # a bad export must not stop the probe
            _logger.warning("undecodable export on %s", self.path, exc_info=True)
            self._answer(HTTPStatus.BAD_REQUEST)
            return

        self._answer(HTTPStatus.OK)

    def _answer(self, status: HTTPStatus) -> None:
        # An empty body is a valid, empty Export*ServiceResponse.
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        _logger.debug("receiver: " + format, *args)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: OtlpReceiver


class OtlpReceiver:
    """Receives OTLP/HTTP on ``host:port`` in a background thread until closed.

    Example::

        with OtlpReceiver("127.0.0.1", 0) as receiver:
            ... point the target at receiver.endpoint ...
            records = receiver.records()
    """

    def __init__(self, host: str, port: int, max_records: int = 100_000) -> None:
        self._server = _Server((host, port), _Handler)
        self._server.receiver = self
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._max_records = max_records
        self._thread: Optional[threading.Thread] = None

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{text}]" if ":" in text else text
        return f"http://{shown}:{port}"

    def accept(self, path: str, body: bytes) -> None:
        """Decode one export sent to ``path`` and keep what it carries."""
        if path.endswith("/v1/logs"):
            found = decode_logs(body)
        elif path.endswith("/v1/traces"):
            found = decode_spans(body)
        else:
            return

        with self._lock:
            room = self._max_records - len(self._records)
            self._records.extend(found[: max(room, 0)])

    def records(self) -> list[Record]:
        with self._lock:
            return list(self._records)

    def start(self) -> OtlpReceiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otel-mtls-otlp-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_failure(record: Record) -> bool:
    """A failure log record, or a server handshake span that ended in failure."""
    if record.kind == "log":
        return record.name == A.EVENT_HANDSHAKE_FAILED

    return (
        record.name == A.SPAN_SERVER_HANDSHAKE
        and record.attributes.get(A.MTLS_OUTCOME) == "failure"
    )


def is_server_handshake(record: Record) -> bool:
    return record.kind == "span" and record.name == A.SPAN_SERVER_HANDSHAKE


def find(
    records: Sequence[Record], client_port: int, sha256: Optional[str]
) -> list[Record]:
    """The records of the handshake from ``client_port`` with this certificate.

    Without a certificate, the record must carry no fingerprint either.
    """
    return [
        record
        for record in records
        if record.attributes.get(A.CLIENT_PORT) == client_port
        and record.attributes.get(A.TLS_CLIENT_HASH_SHA256) == sha256
    ]
