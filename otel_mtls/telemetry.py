"""Turning one settled handshake into a span, metrics and, on failure, a log record.

The recorder is the only place that talks to the OpenTelemetry API. Every call
into it from the TLS path is guarded: a broken exporter, processor or provider
costs a count in ``mtls.instrumentation.errors`` and one warning, never an
exception in the application or a changed handshake.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger
from opentelemetry.context import Context
from opentelemetry.metrics import get_meter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_mtls import attributes as A
from otel_mtls.certs import Attributes
from otel_mtls.config import Config
from otel_mtls.version import __version__

_logger = logging.getLogger(__name__)

_SCOPE = "otel_mtls"

# Bucket boundaries in seconds: a loopback handshake takes about a millisecond, a
# cross-region one a few hundred, a stalled one the socket timeout.
_DURATION_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


@dataclass
class Outcome:
    """A settled handshake, ready to be recorded."""

    side: str
    span_name: str
    parent: Optional[Context]
    start_ns: int
    end_ns: int
    attributes: Attributes
    failed: bool
    summary: str
    log_end_ns: Optional[int] = None


class Recorder:
    """Owns the tracer, instruments and logger of one ``instrument()`` call."""

    def __init__(
        self,
        config: Config,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        logger_provider: Any = None,
    ) -> None:
        self.config = config
        self._tracer = trace.get_tracer(
            _SCOPE, __version__, tracer_provider=tracer_provider
        )
        meter = get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._duration = meter.create_histogram(
            A.METRIC_HANDSHAKE_DURATION,
            unit="s",
            description="Duration of TLS handshakes.",
            explicit_bucket_boundaries_advisory=_DURATION_BUCKETS,
        )
        self._handshakes = meter.create_counter(
            A.METRIC_HANDSHAKES,
            unit="{handshake}",
            description="TLS handshake attempts, by side, outcome and reason.",
        )
        self._errors = meter.create_counter(
            A.METRIC_TELEMETRY_ERRORS,
            unit="{error}",
            description="Errors inside the instrumentation, contained.",
        )
        self._otel_logger = get_logger(
            _SCOPE, __version__, logger_provider=logger_provider
        )
        self._warned = False
        self._warn_lock = threading.Lock()

    def record(self, outcome: Outcome) -> None:
        """Emit the span, the metrics and the log record of one handshake."""
        span_context: Optional[Context] = None

        try:
            span_context = self._span(outcome)
        except Exception as exc:  # noqa: BLE001 - telemetry must not break TLS
            self.contained("span", exc)

        try:
            self._metrics(outcome)
        except Exception as exc:  # noqa: BLE001
            self.contained("metrics", exc)

        if outcome.failed or self.config.log_success:
            try:
                self._log(outcome, span_context)
            except Exception as exc:  # noqa: BLE001
                self.contained("log", exc)

    def _span(self, outcome: Outcome) -> Context:
        span = self._tracer.start_span(
            outcome.span_name,
            context=outcome.parent,
            kind=SpanKind.INTERNAL,
            attributes=outcome.attributes,
            start_time=outcome.start_ns,
        )

        if outcome.failed:
            span.set_status(Status(StatusCode.ERROR, outcome.summary))

        span.end(end_time=outcome.end_ns)
        return trace.set_span_in_context(span, outcome.parent)

    def _metrics(self, outcome: Outcome) -> None:
        source = outcome.attributes
        labels: dict[str, Any] = {
            name: source[name] for name in A.METRIC_ATTRIBUTES if name in source
        }
        seconds = max(outcome.end_ns - outcome.start_ns, 0) / 1e9

        self._handshakes.add(1, labels)
        self._duration.record(seconds, labels)

    def _log(self, outcome: Outcome, span_context: Optional[Context]) -> None:
        failed = outcome.failed
        record = LogRecord(
            timestamp=outcome.log_end_ns or outcome.end_ns,
            context=span_context,
            severity_number=SeverityNumber.WARN if failed else SeverityNumber.INFO,
            severity_text="WARN" if failed else "INFO",
            body=outcome.summary,
            attributes=outcome.attributes,
            event_name=A.EVENT_HANDSHAKE_FAILED
            if failed
            else A.EVENT_HANDSHAKE_SUCCEEDED,
        )
        self._otel_logger.emit(record)

    def contained(self, where: str, exc: BaseException) -> None:
        """Count an instrumentation error; warn once, then only at debug level."""
        # The counter itself may be what is broken.
        with contextlib.suppress(Exception):
            self._errors.add(1, {A.MTLS_INSTRUMENTATION_STAGE: where})

        with self._warn_lock:
            first = not self._warned
            self._warned = True

        if first:
            _logger.warning(
                "otel-mtls contained an error while recording telemetry (%s): %r; "
                "handshakes are unaffected, later errors are logged at DEBUG",
                where,
                exc,
            )
        else:
            _logger.debug("contained error in %s: %r", where, exc)
