"""Every attribute, metric and event name the package emits, in one registry.

Names defined by the OpenTelemetry semantic conventions are used as they are. Facts
the conventions do not name (serial numbers, SANs, failure reasons, alerts) live
under the package's own ``mtls.`` namespace, so they can never collide with a
future convention. The documentation's reference table is generated from
``REGISTRY``, and a test fails when the code emits a name missing from it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

# Semantic-convention attributes (tls.* is at Development stability upstream).
TLS_PROTOCOL_NAME: Final = "tls.protocol.name"
TLS_PROTOCOL_VERSION: Final = "tls.protocol.version"
TLS_CIPHER: Final = "tls.cipher"
TLS_ESTABLISHED: Final = "tls.established"
TLS_RESUMED: Final = "tls.resumed"
TLS_NEXT_PROTOCOL: Final = "tls.next_protocol"

TLS_CLIENT_SUBJECT: Final = "tls.client.subject"
TLS_CLIENT_ISSUER: Final = "tls.client.issuer"
TLS_CLIENT_HASH_SHA256: Final = "tls.client.hash.sha256"
TLS_CLIENT_NOT_BEFORE: Final = "tls.client.not_before"
TLS_CLIENT_NOT_AFTER: Final = "tls.client.not_after"
TLS_CLIENT_CERTIFICATE_CHAIN: Final = "tls.client.certificate_chain"

TLS_SERVER_SUBJECT: Final = "tls.server.subject"
TLS_SERVER_ISSUER: Final = "tls.server.issuer"
TLS_SERVER_HASH_SHA256: Final = "tls.server.hash.sha256"
TLS_SERVER_NOT_BEFORE: Final = "tls.server.not_before"
TLS_SERVER_NOT_AFTER: Final = "tls.server.not_after"
TLS_SERVER_CERTIFICATE_CHAIN: Final = "tls.server.certificate_chain"

SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
CLIENT_ADDRESS: Final = "client.address"
CLIENT_PORT: Final = "client.port"
NETWORK_PEER_ADDRESS: Final = "network.peer.address"
NETWORK_PEER_PORT: Final = "network.peer.port"
NETWORK_LOCAL_ADDRESS: Final = "network.local.address"
NETWORK_LOCAL_PORT: Final = "network.local.port"
NETWORK_TRANSPORT: Final = "network.transport"
ERROR_TYPE: Final = "error.type"

# The package's own namespace.
MTLS_SIDE: Final = "mtls.handshake.side"
MTLS_OUTCOME: Final = "mtls.handshake.outcome"
MTLS_LAZY: Final = "mtls.handshake.lazy"
MTLS_API: Final = "mtls.handshake.api"
MTLS_LATE_FAILURE: Final = "mtls.handshake.late_failure"
MTLS_FAILURE_REASON: Final = "mtls.failure.reason"
MTLS_FAILURE_DETAIL: Final = "mtls.failure.detail"
MTLS_VERIFY_CODE: Final = "mtls.verify.code"
MTLS_VERIFY_MESSAGE: Final = "mtls.verify.message"
MTLS_OPENSSL_REASON: Final = "mtls.openssl.reason"
MTLS_ALERT_SENT: Final = "mtls.alert.sent"
MTLS_ALERT_RECEIVED: Final = "mtls.alert.received"
MTLS_CLIENT_CERT_REQUESTED: Final = "mtls.client_certificate.requested"
MTLS_CLIENT_CERT_PRESENTED: Final = "mtls.client_certificate.presented"
MTLS_PEER_CERT_SOURCE: Final = "mtls.peer_certificate.source"
MTLS_PARSE_ERROR: Final = "mtls.certificate.parse_error"
MTLS_INSTRUMENTATION_STAGE: Final = "mtls.instrumentation.stage"

MTLS_CLIENT_SERIAL: Final = "mtls.client.serial_number"
MTLS_CLIENT_SANS: Final = "mtls.client.alternative_names"
MTLS_CLIENT_CHAIN_LENGTH: Final = "mtls.client.chain_length"
MTLS_SERVER_SERIAL: Final = "mtls.server.serial_number"
MTLS_SERVER_SANS: Final = "mtls.server.alternative_names"
MTLS_SERVER_CHAIN_LENGTH: Final = "mtls.server.chain_length"

# Metrics.
METRIC_HANDSHAKE_DURATION: Final = "mtls.handshake.duration"
METRIC_HANDSHAKES: Final = "mtls.handshakes"
METRIC_TELEMETRY_ERRORS: Final = "mtls.instrumentation.errors"

# Events (the event name of each log record the package emits).
EVENT_HANDSHAKE_FAILED: Final = "mtls.handshake.failed"
EVENT_HANDSHAKE_SUCCEEDED: Final = "mtls.handshake.succeeded"

# Per-client failure tracking, log flood control and certificate expiry.
MTLS_TRACKING_KEY_KIND: Final = "mtls.tracking.key_kind"
MTLS_TRACKING_FAILURES: Final = "mtls.tracking.failures"
MTLS_TRACKING_WINDOW: Final = "mtls.tracking.window"
MTLS_TRACKING_REASONS: Final = "mtls.tracking.reasons"
MTLS_LOG_SUPPRESSED: Final = "mtls.log.suppressed"
MTLS_LOG_INTERVAL: Final = "mtls.log.interval"
MTLS_CERTIFICATE_ROLE: Final = "mtls.certificate.role"
METRIC_EXCESSIVE_FAILURES: Final = "mtls.client.excessive_failure_alerts"
METRIC_TRACKING_EVICTIONS: Final = "mtls.tracking.evictions"
METRIC_LOGS_SUPPRESSED: Final = "mtls.log.suppressed_records"
METRIC_TIME_TO_EXPIRY: Final = "mtls.certificate.time_to_expiry"
EVENT_EXCESSIVE_FAILURES: Final = "mtls.client.excessive_failures"
EVENT_FAILURES_SUPPRESSED: Final = "mtls.handshake.failures_suppressed"

# Span names, in the style of the .NET TLS handshake spans.
SPAN_SERVER_HANDSHAKE: Final = "TLS server handshake"
SPAN_CLIENT_HANDSHAKE: Final = "TLS client handshake"


@dataclass(frozen=True)
class Definition:
    """One emitted name, as it appears in the reference documentation."""

    name: str
    kind: str
    type: str
    description: str
    semconv: bool = False
    example: str = ""


def _attr(name: str, typ: str, description: str, example: str = "") -> Definition:
    semconv = not name.startswith("mtls.")
    return Definition(name, "attribute", typ, description, semconv, example)


def _cert_attributes(side: str) -> list[Definition]:
    who = "client" if side == "client" else "server"
    return [
        _attr(
            f"tls.{side}.subject",
            "string",
            f"Subject of the {who} certificate, RFC 4514, control characters "
            "escaped, capped in length.",
            "CN=alice,O=Example",
        ),
        _attr(
            f"tls.{side}.issuer",
            "string",
            f"Issuer of the {who} certificate, RFC 4514, escaped and capped.",
            "CN=Example CA",
        ),
        _attr(
            f"tls.{side}.hash.sha256",
            "string",
            f"SHA-256 of the {who} certificate's DER, upper-case hex, no colons.",
            "3F0A...9C",
        ),
        _attr(
            f"tls.{side}.not_before",
            "string",
            f"Start of the {who} certificate's validity, ISO 8601 UTC.",
            "2026-01-01T00:00:00Z",
        ),
        _attr(
            f"tls.{side}.not_after",
            "string",
            f"End of the {who} certificate's validity, ISO 8601 UTC.",
            "2027-01-01T00:00:00Z",
        ),
        _attr(
            f"tls.{side}.certificate_chain",
            "string[]",
            f"The {who} chain as PEM, leaf first. Only with capture_chain_pem.",
        ),
        _attr(
            f"mtls.{side}.serial_number",
            "string",
            f"Serial number of the {who} certificate, upper-case hex.",
            "1A2B3C",
        ),
        _attr(
            f"mtls.{side}.alternative_names",
            "string[]",
            f"Subject alternative names of the {who} certificate, typed, "
            "escaped, count-capped.",
            "DNS:api.example.com",
        ),
        _attr(
            f"mtls.{side}.chain_length",
            "int",
            f"Number of certificates in the {who} chain as seen.",
            "2",
        ),
    ]


REGISTRY: Final[tuple[Definition, ...]] = (
    _attr(TLS_PROTOCOL_NAME, "string", "Always `tls`.", "tls"),
    _attr(TLS_PROTOCOL_VERSION, "string", "Negotiated TLS version.", "1.3"),
    _attr(TLS_CIPHER, "string", "Negotiated cipher suite.", "TLS_AES_256_GCM_SHA384"),
    _attr(
        TLS_ESTABLISHED,
        "boolean",
        "Whether the connection was established and confirmed.",
        "true",
    ),
    _attr(TLS_RESUMED, "boolean", "Whether the session was resumed.", "false"),
    _attr(TLS_NEXT_PROTOCOL, "string", "Negotiated ALPN protocol.", "http/1.1"),
    *_cert_attributes("client"),
    *_cert_attributes("server"),
    _attr(SERVER_ADDRESS, "string", "Server host name or address.", "127.0.0.1"),
    _attr(SERVER_PORT, "int", "Server port.", "8443"),
    _attr(CLIENT_ADDRESS, "string", "Client address.", "127.0.0.1"),
    _attr(CLIENT_PORT, "int", "Client port.", "50412"),
    _attr(NETWORK_PEER_ADDRESS, "string", "Address of the other end.", "127.0.0.1"),
    _attr(NETWORK_PEER_PORT, "int", "Port of the other end.", "50412"),
    _attr(NETWORK_LOCAL_ADDRESS, "string", "Local address.", "127.0.0.1"),
    _attr(NETWORK_LOCAL_PORT, "int", "Local port.", "8443"),
    _attr(NETWORK_TRANSPORT, "string", "Always `tcp`.", "tcp"),
    _attr(
        ERROR_TYPE,
        "string",
        "Fully qualified class of the exception that ended the handshake.",
        "ssl.SSLCertVerificationError",
    ),
    _attr(MTLS_SIDE, "string", "Role of this process: `client` or `server`.", "server"),
    _attr(
        MTLS_OUTCOME,
        "string",
        "`success`, `failure`, or `unconfirmed` (a TLS 1.3 client closed before "
        "the server's verdict could be read).",
        "failure",
    ),
    _attr(
        MTLS_LAZY,
        "boolean",
        "The handshake ran implicitly inside the first read or write.",
        "true",
    ),
    _attr(
        MTLS_API,
        "string",
        "`socket` (SSLSocket) or `bio` (SSLObject, as asyncio uses).",
        "socket",
    ),
    _attr(
        MTLS_LATE_FAILURE,
        "boolean",
        "TLS 1.3: the handshake returned, and the peer's rejection arrived later.",
        "true",
    ),
    _attr(
        MTLS_FAILURE_REASON,
        "string",
        "Stable failure reason from a closed set (see Failure classification).",
        "unknown_ca",
    ),
    _attr(
        MTLS_FAILURE_DETAIL,
        "string",
        "The exception message, escaped and capped.",
        "[SSL: CERTIFICATE_VERIFY_FAILED] ...",
    ),
    _attr(MTLS_VERIFY_CODE, "int", "OpenSSL X509_V_ERR code.", "20"),
    _attr(
        MTLS_VERIFY_MESSAGE,
        "string",
        "OpenSSL verify message.",
        "unable to get local issuer certificate",
    ),
    _attr(
        MTLS_OPENSSL_REASON,
        "string",
        "OpenSSL reason code of the error.",
        "TLSV1_ALERT_UNKNOWN_CA",
    ),
    _attr(MTLS_ALERT_SENT, "string", "TLS alert this side sent.", "unknown_ca"),
    _attr(
        MTLS_ALERT_RECEIVED,
        "string",
        "TLS alert this side received.",
        "certificate_required",
    ),
    _attr(
        MTLS_CLIENT_CERT_REQUESTED,
        "boolean",
        "The server asked for a client certificate.",
        "true",
    ),
    _attr(
        MTLS_CLIENT_CERT_PRESENTED,
        "boolean",
        "The client sent a non-empty certificate.",
        "true",
    ),
    _attr(
        MTLS_PEER_CERT_SOURCE,
        "string",
        "Where the peer certificate came from: `verified` (the stdlib), "
        "`handshake_message` (the Certificate message of a rejected handshake) "
        "or `unverified_chain`.",
        "handshake_message",
    ),
    _attr(
        MTLS_PARSE_ERROR,
        "string",
        "Why a certificate could not be parsed, with its SHA-256.",
        "invalid DER (sha256=...)",
    ),
    _attr(
        MTLS_INSTRUMENTATION_STAGE,
        "string",
        "Only on `mtls.instrumentation.errors`: where the contained error arose.",
        "span",
    ),
    Definition(
        METRIC_HANDSHAKE_DURATION,
        "metric",
        "histogram (s)",
        "Handshake duration, by side, outcome, reason and protocol version.",
    ),
    Definition(
        METRIC_HANDSHAKES,
        "metric",
        "counter",
        "Handshake attempts, by side, outcome, reason and protocol version.",
    ),
    Definition(
        METRIC_TELEMETRY_ERRORS,
        "metric",
        "counter",
        "Errors inside the instrumentation itself, contained and counted, by "
        "`mtls.instrumentation.stage`.",
    ),
    Definition(
        EVENT_HANDSHAKE_FAILED,
        "event",
        "log record (WARN)",
        "One per failed handshake, with the span's attributes and trace context.",
    ),
    Definition(
        EVENT_HANDSHAKE_SUCCEEDED,
        "event",
        "log record (INFO)",
        "One per successful handshake; only with log_success.",
    ),
    _attr(
        MTLS_TRACKING_KEY_KIND,
        "string",
        "What a tracked client is keyed by: `fingerprint` (its certificate's "
        "SHA-256, in `tls.client.hash.sha256`), `address` (in `client.address`), "
        "or, for suppressed log records, `unknown`.",
        "fingerprint",
    ),
    _attr(
        MTLS_TRACKING_FAILURES,
        "int",
        "Failures of the key within the window when it crossed the threshold.",
        "6",
    ),
    _attr(
        MTLS_TRACKING_WINDOW,
        "int",
        "Length in seconds of the window the failures were counted over.",
        "60",
    ),
    _attr(
        MTLS_TRACKING_REASONS,
        "string[]",
        "The failure reasons among the failures that crossed the threshold.",
        "unknown_ca",
    ),
    _attr(
        MTLS_LOG_SUPPRESSED,
        "int",
        "Failure log records of the key held back during the interval.",
        "40",
    ),
    _attr(
        MTLS_LOG_INTERVAL,
        "int",
        "Length in seconds of the log rate-limiting interval.",
        "60",
    ),
    _attr(
        MTLS_CERTIFICATE_ROLE,
        "string",
        "Only on `mtls.certificate.time_to_expiry`: `served` (this server's own), "
        "`presented` (this client's own) or `peer` (the other end's).",
        "served",
    ),
    Definition(
        METRIC_EXCESSIVE_FAILURES,
        "metric",
        "counter",
        "Clients that crossed the failure threshold, by "
        "`mtls.tracking.key_kind` only: identities stay in the log record.",
    ),
    Definition(
        METRIC_TRACKING_EVICTIONS,
        "metric",
        "counter",
        "Tracked clients forgotten to keep memory bounded, by "
        "`mtls.tracking.key_kind`.",
    ),
    Definition(
        METRIC_LOGS_SUPPRESSED,
        "metric",
        "counter",
        "Failure log records held back by log flood control, by `mtls.handshake.side`.",
    ),
    Definition(
        METRIC_TIME_TO_EXPIRY,
        "metric",
        "gauge (s)",
        "Seconds until a certificate expires (negative once expired), by "
        "`mtls.certificate.role` and `tls.server.hash.sha256` (served) or "
        "`tls.client.hash.sha256` (presented; peer by side). One series per "
        "certificate: bounded by expiry_max_certificates plus watched contexts.",
    ),
    Definition(
        EVENT_EXCESSIVE_FAILURES,
        "event",
        "log record (WARN)",
        "A client crossed the failure threshold: once per key and window, with "
        "the key, count, window and reasons.",
    ),
    Definition(
        EVENT_FAILURES_SUPPRESSED,
        "event",
        "log record (WARN)",
        "How many failure log records of one key flood control held back in an "
        "interval, with the key.",
    ),
)

REGISTERED_NAMES: Final[frozenset[str]] = frozenset(d.name for d in REGISTRY)

# Attributes allowed on metrics: none carry a certificate identity (cardinality).
METRIC_ATTRIBUTES: Final = (
    MTLS_SIDE,
    MTLS_OUTCOME,
    MTLS_FAILURE_REASON,
    TLS_PROTOCOL_VERSION,
)
