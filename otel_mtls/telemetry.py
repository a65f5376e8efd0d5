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
import time
from dataclasses import dataclass
from typing import Any, Optional

from opentelemetry import trace
from opentelemetry._logs import LogRecord, SeverityNumber, get_logger
from opentelemetry.context import Context
from opentelemetry.metrics import CallbackOptions, Observation, get_meter
from opentelemetry.trace import SpanKind, Status, StatusCode

from otel_mtls import attributes as A
from otel_mtls.certs import Attributes
from otel_mtls.config import Config
from otel_mtls.expiry import ExpiryRegistry
from otel_mtls.tracking import (
    KIND_ADDRESS,
    KIND_FINGERPRINT,
    KIND_UNKNOWN,
    Crossing,
    FailureTracker,
    LogLimiter,
    Suppressed,
)
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
        self._init_monitoring(meter)

    def record(self, outcome: Outcome) -> None:
        """Emit the span, the metrics and the log record of one handshake."""
        # TODO(#2): a span and two measurements per side keep the one-process
        # handshake benchmark near 0.8 of plain, against a target of 0.95.
        span_context: Optional[Context] = None

        try:
            span_context = self._span(outcome)
        except Exception as exc:  # noqa: BLE001 - telemetry must not break TLS
            self.contained("span", exc)

        try:
            self._metrics(outcome)
        except Exception as exc:  # noqa: BLE001
            self.contained("metrics", exc)

        try:
            self._monitor(outcome, span_context)
        except Exception as exc:  # noqa: BLE001
            self.contained("monitoring", exc)

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
        if failed and not self._admit_log(outcome):
            return

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

    # -- per-client tracking, log flood control, certificate expiry ---------------

    def _init_monitoring(self, meter: Any) -> None:
        config = self.config
        self._tracker = FailureTracker(
            config.failure_threshold, config.failure_window, config.max_tracked_clients
        )
        self._limiter = LogLimiter(
            config.failure_log_limit,
            config.failure_log_interval,
            config.max_tracked_clients,
        )
        self.expiry = ExpiryRegistry(
            config.expiry_max_certificates, config.expiry_max_age
        )
        self._alerts = meter.create_counter(
            A.METRIC_EXCESSIVE_FAILURES,
            unit="{client}",
            description="Clients that crossed the failure threshold, by key kind.",
        )
        self._evictions = meter.create_counter(
            A.METRIC_TRACKING_EVICTIONS,
            unit="{client}",
            description="Tracked clients forgotten to keep memory bounded.",
        )
        self._suppressed = meter.create_counter(
            A.METRIC_LOGS_SUPPRESSED,
            unit="{record}",
            description="Failure log records held back by flood control.",
        )
        try:
            meter.create_observable_gauge(
                A.METRIC_TIME_TO_EXPIRY,
                callbacks=[self._observe_expiry],
                unit="s",
                description="Seconds until expiry of served, presented and peer "
                "certificates.",
            )
        except Exception as exc:  # noqa: BLE001 - a broken meter must not stop us
            self.contained("expiry", exc)

    def _monitor(self, outcome: Outcome, span_context: Optional[Context]) -> None:
        """Feed the tracker (failed server handshakes) or the expiry registry."""
        if not outcome.failed:
            self.expiry.note_handshake(outcome.side, outcome.attributes)
            # A handshake with no record of its own still closes ended intervals.
            self._emit_suppressed(self._limiter.due())
            return

        if outcome.side != "server":
            return

        attrs = outcome.attributes
        fingerprint = attrs.get(A.TLS_CLIENT_HASH_SHA256)
        address = attrs.get(A.CLIENT_ADDRESS)
        crossings, evicted = self._tracker.failure(
            fingerprint if isinstance(fingerprint, str) else None,
            address if isinstance(address, str) else None,
            str(attrs.get(A.MTLS_FAILURE_REASON, "other")),
        )

        for kind, count in evicted.items():
            self._evictions.add(count, {A.MTLS_TRACKING_KEY_KIND: kind})

        for crossing in crossings:
            self._alerts.add(1, {A.MTLS_TRACKING_KEY_KIND: crossing.kind})
            self._otel_logger.emit(_excessive_record(crossing, span_context))

    def _admit_log(self, outcome: Outcome) -> bool:
        """Flood control: whether this failure's log record may be emitted."""
        kind, attribute, key = _log_key(outcome)
        allowed, due = self._limiter.admit(kind, attribute, key)
        self._emit_suppressed(due)

        if not allowed:
            self._suppressed.add(1, {A.MTLS_SIDE: outcome.side})

        return allowed

    def _emit_suppressed(self, due: list[Suppressed]) -> None:
        for summary in due:
            self._otel_logger.emit(_suppressed_record(summary))

    def flush_suppressed(self) -> None:
        """Report every pending count of suppressed records now (at shutdown)."""
        try:
            self._emit_suppressed(self._limiter.flush())
        except Exception as exc:  # noqa: BLE001
            self.contained("monitoring", exc)

    def _observe_expiry(self, options: CallbackOptions) -> list[Observation]:
        try:
            return [
                Observation(seconds, attrs) for seconds, attrs in self.expiry.observe()
            ]
        except Exception as exc:  # noqa: BLE001
            self.contained("expiry", exc)
            return []


def _log_key(outcome: Outcome) -> tuple[str, str, str]:
    """Flood control's key: the peer's fingerprint, else its address."""
    attrs = outcome.attributes
    if outcome.side == "server":
        candidates = (
            (KIND_FINGERPRINT, A.TLS_CLIENT_HASH_SHA256),
            (KIND_ADDRESS, A.CLIENT_ADDRESS),
        )
    else:
        candidates = (
            (KIND_FINGERPRINT, A.TLS_SERVER_HASH_SHA256),
            (KIND_ADDRESS, A.NETWORK_PEER_ADDRESS),
        )

    for kind, attribute in candidates:
        value = attrs.get(attribute)
        if isinstance(value, str) and value:
            return kind, attribute, value

    return KIND_UNKNOWN, "", KIND_UNKNOWN


def _key_attributes(kind: str, attribute: str, key: str) -> dict[str, Any]:
    # The key goes in its usual attribute, so redaction.yaml treats it as usual.
    attrs: dict[str, Any] = {A.MTLS_TRACKING_KEY_KIND: kind}
    if attribute:
        attrs[attribute] = key

    return attrs


def _excessive_record(crossing: Crossing, context: Optional[Context]) -> LogRecord:
    attribute = (
        A.TLS_CLIENT_HASH_SHA256
        if crossing.kind == KIND_FINGERPRINT
        else A.CLIENT_ADDRESS
    )
    attrs = _key_attributes(crossing.kind, attribute, crossing.key)
    attrs[A.MTLS_SIDE] = "server"
    attrs[A.MTLS_TRACKING_FAILURES] = crossing.count
    attrs[A.MTLS_TRACKING_WINDOW] = int(crossing.window)
    attrs[A.MTLS_TRACKING_REASONS] = list(crossing.reasons)

    return LogRecord(
        timestamp=time.time_ns(),
        context=context,
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        body="excessive mTLS authentication failures",
        attributes=attrs,
        event_name=A.EVENT_EXCESSIVE_FAILURES,
    )


def _suppressed_record(summary: Suppressed) -> LogRecord:
    attrs = _key_attributes(summary.kind, summary.attribute, summary.key)
    attrs[A.MTLS_LOG_SUPPRESSED] = summary.count
    attrs[A.MTLS_LOG_INTERVAL] = int(summary.interval)

    return LogRecord(
        timestamp=time.time_ns(),
        severity_number=SeverityNumber.WARN,
        severity_text="WARN",
        body=f"{summary.count} mTLS handshake failure records suppressed",
        attributes=attrs,
        event_name=A.EVENT_FAILURES_SUPPRESSED,
    )
