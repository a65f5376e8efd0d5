"""Failure classification: from an exception and what the handshake showed, a reason.

The reason is a stable name from the closed set ``REASONS``; dashboards and alerts
key on it, so a name never changes meaning. The evidence used, in order: the
OpenSSL verify code of a certificate verification error, the alert this side
sent or received (seen in the handshake messages, else named in OpenSSL's
reason), OpenSSL's reason code, then the exception class.
"""

from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from typing import Final, Optional

from otel_mtls import tlsmsg


@dataclass(frozen=True)
class Reason:
    """One failure reason, as documented."""

    name: str
    description: str
    typical_cause: str


UNKNOWN_CA: Final = "unknown_ca"
CERTIFICATE_EXPIRED: Final = "certificate_expired"
CERTIFICATE_NOT_YET_VALID: Final = "certificate_not_yet_valid"
CERTIFICATE_REVOKED: Final = "certificate_revoked"
CRL_UNAVAILABLE: Final = "crl_unavailable"
CRL_EXPIRED: Final = "crl_expired"
BAD_SIGNATURE: Final = "bad_signature"
WEAK_CERTIFICATE: Final = "weak_certificate"
CERTIFICATE_INVALID: Final = "certificate_invalid"
UNSUPPORTED_PURPOSE: Final = "unsupported_purpose"
HOSTNAME_MISMATCH: Final = "hostname_mismatch"
NO_CLIENT_CERTIFICATE: Final = "no_client_certificate"
PEER_REJECTED_CERTIFICATE: Final = "peer_rejected_certificate"
PROBABLY_REJECTED: Final = "client_certificate_probably_rejected"
PROTOCOL_MISMATCH: Final = "protocol_mismatch"
NOT_TLS: Final = "not_tls"
NO_SHARED_CIPHER: Final = "no_shared_cipher"
CONNECTION_CLOSED: Final = "connection_closed"
NO_CLIENT_HELLO: Final = "no_client_hello"
TIMEOUT: Final = "timeout"
OTHER: Final = "other"

REASONS: Final[tuple[Reason, ...]] = (
    Reason(
        UNKNOWN_CA,
        "The certificate does not chain to a trusted CA (verify codes 2, 18, 19, "
        "20, 21, 27).",
        "A client certificate from another PKI, a self-signed certificate, or a "
        "missing intermediate.",
    ),
    Reason(
        CERTIFICATE_EXPIRED,
        "A certificate in the chain is past its not_after (verify code 10).",
        "A client that was not renewed; a clock far ahead.",
    ),
    Reason(
        CERTIFICATE_NOT_YET_VALID,
        "A certificate in the chain is before its not_before (verify code 9).",
        "A certificate issued with a future start; a clock behind.",
    ),
    Reason(
        CERTIFICATE_REVOKED,
        "The certificate is listed as revoked (verify code 23).",
        "A revoked credential still in use, or stolen.",
    ),
    Reason(
        CRL_UNAVAILABLE,
        "CRL checking is on and no CRL was found for an issuer (verify code 3).",
        "VERIFY_CRL_CHECK_LEAF/CHAIN set without loading the CRL.",
    ),
    Reason(
        CRL_EXPIRED,
        "The CRL in use is past its nextUpdate or not yet valid (verify codes 11, 12).",
        "A CRL that is no longer refreshed.",
    ),
    Reason(
        BAD_SIGNATURE,
        "A signature in the chain does not verify (verify codes 7, 8).",
        "A tampered or forged certificate.",
    ),
    Reason(
        WEAK_CERTIFICATE,
        "A key too small or a signature digest too weak for OpenSSL's security "
        "level (verify codes 66, 67, 68).",
        "An RSA 1024 key, a SHA-1 signature.",
    ),
    Reason(
        CERTIFICATE_INVALID,
        "Any other verification failure; the verify code and message say which.",
        "Path length, name constraints, malformed extensions.",
    ),
    Reason(
        UNSUPPORTED_PURPOSE,
        "The certificate's extended key usage does not allow this role "
        "(verify code 26).",
        "A server-only certificate used as a client certificate.",
    ),
    Reason(
        HOSTNAME_MISMATCH,
        "The server certificate does not name the host connected to (verify "
        "codes 62, 64).",
        "Wrong SNI or address, a certificate for another host.",
    ),
    Reason(
        NO_CLIENT_CERTIFICATE,
        "The server required a client certificate and the client sent none.",
        "A client without credentials; a scanner.",
    ),
    Reason(
        PEER_REJECTED_CERTIFICATE,
        "The peer refused this side's certificate with an alert "
        "(`mtls.alert.received` names it). On TLS 1.3 clients this arrives at the "
        "first read after the handshake returned.",
        "Our client certificate is untrusted, expired or missing at the server.",
    ),
    Reason(
        PROBABLY_REJECTED,
        "Client: the server asked for a certificate, then closed the connection "
        "without an alert, during the handshake (TLS 1.2) or right after it, "
        "before sending any data (TLS 1.3): what asyncio servers do when they "
        "reject a certificate.",
        "Our client certificate was rejected by an asyncio-based server.",
    ),
    Reason(
        PROTOCOL_MISMATCH,
        "No TLS version in common, or a version refused.",
        "TLS 1.2-only client against a TLS 1.3-only server.",
    ),
    Reason(
        NOT_TLS,
        "The peer's bytes were not TLS records: plain HTTP, another protocol, "
        "an SSLv2 hello, garbage.",
        "http:// URL for an https:// endpoint; a scanner.",
    ),
    Reason(
        NO_SHARED_CIPHER,
        "No cipher suite or group in common.",
        "Restrictive cipher settings on one side.",
    ),
    Reason(
        CONNECTION_CLOSED,
        "The peer closed or reset the connection during the handshake.",
        "A peer that gave up, a middlebox, a crash.",
    ),
    Reason(
        NO_CLIENT_HELLO,
        "Server side: the connection closed before a complete ClientHello arrived.",
        "A TCP health check or a port scan; not an authentication failure.",
    ),
    Reason(
        TIMEOUT,
        "The handshake did not complete within the socket's timeout.",
        "A stalled peer or a slowloris-style attempt.",
    ),
    Reason(OTHER, "Anything else; `mtls.failure.detail` has the message.", "-"),
)

REASON_NAMES: Final = frozenset(reason.name for reason in REASONS)

_VERIFY_REASONS: Final[dict[int, str]] = {
    2: UNKNOWN_CA,
    18: UNKNOWN_CA,
    19: UNKNOWN_CA,
    20: UNKNOWN_CA,
    21: UNKNOWN_CA,
    27: UNKNOWN_CA,
    10: CERTIFICATE_EXPIRED,
    9: CERTIFICATE_NOT_YET_VALID,
    23: CERTIFICATE_REVOKED,
    3: CRL_UNAVAILABLE,
    11: CRL_EXPIRED,
    12: CRL_EXPIRED,
    7: BAD_SIGNATURE,
    8: BAD_SIGNATURE,
    66: WEAK_CERTIFICATE,
    67: WEAK_CERTIFICATE,
    68: WEAK_CERTIFICATE,
    26: UNSUPPORTED_PURPOSE,
    62: HOSTNAME_MISMATCH,
    64: HOSTNAME_MISMATCH,
}

_OPENSSL_REASONS: Final[dict[str, str]] = {
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": NO_CLIENT_CERTIFICATE,
    "NO_SHARED_CIPHER": NO_SHARED_CIPHER,
    "NO_SUITABLE_SIGNATURE_ALGORITHM": NO_SHARED_CIPHER,
    "NO_SHARED_GROUPS": NO_SHARED_CIPHER,
    "UNSUPPORTED_PROTOCOL": PROTOCOL_MISMATCH,
    "NO_PROTOCOLS_AVAILABLE": PROTOCOL_MISMATCH,
    "VERSION_TOO_LOW": PROTOCOL_MISMATCH,
    "VERSION_TOO_HIGH": PROTOCOL_MISMATCH,
    "TLSV1_ALERT_PROTOCOL_VERSION": PROTOCOL_MISMATCH,
    "HTTP_REQUEST": NOT_TLS,
    "HTTPS_PROXY_REQUEST": NOT_TLS,
    # Record-layer nonsense: the bytes were not TLS records at all.
    "WRONG_VERSION_NUMBER": NOT_TLS,
    "UNKNOWN_PROTOCOL": NOT_TLS,
    "PACKET_LENGTH_TOO_LONG": NOT_TLS,
    "RECORD_LENGTH_MISMATCH": NOT_TLS,
}

# OpenSSL's word for a peer that went away mid-handshake.
_EOF_REASON: Final = "UNEXPECTED_EOF_WHILE_READING"

_ALERT_REASONS: Final[dict[str, str]] = {
    "protocol_version": PROTOCOL_MISMATCH,
    "insufficient_security": NO_SHARED_CIPHER,
}


@dataclass(frozen=True)
class Evidence:
    """What the handshake messages showed, for the classifier."""

    side: str
    # None: not observed (the message callback did not see this handshake).
    client_hello_seen: Optional[bool] = None
    server_hello_seen: Optional[bool] = None
    certificate_requested: Optional[bool] = None
    alert_sent: Optional[str] = None
    alert_received: Optional[str] = None


@dataclass(frozen=True)
class Failure:
    """A classified failure."""

    reason: str
    error_type: str
    detail: str
    verify_code: Optional[int] = None
    verify_message: Optional[str] = None
    openssl_reason: Optional[str] = None
    alert_sent: Optional[str] = None
    alert_received: Optional[str] = None


def error_type(exc: BaseException) -> str:
    """Fully qualified exception class name, as ``error.type`` wants it."""
    cls = type(exc)
    module = cls.__module__
    if module == "builtins":
        return cls.__qualname__

    return f"{module}.{cls.__qualname__}"


def _closed(exc: BaseException) -> bool:
    return isinstance(
        exc,
        (
            ssl.SSLEOFError,
            ssl.SSLZeroReturnError,
            ConnectionResetError,
            ConnectionAbortedError,
            BrokenPipeError,
        ),
    )


def _by_alert(alert_received: str | None, evidence: Evidence) -> str | None:
    if alert_received is None:
        return None

    if alert_received in tlsmsg.CERTIFICATE_ALERTS:
        return PEER_REJECTED_CERTIFICATE

    if alert_received == "handshake_failure":
        return _handshake_failure(evidence)

    return _ALERT_REASONS.get(alert_received)


def _handshake_failure(evidence: Evidence) -> str | None:
    """The generic alert, read from how far the handshake had come.

    Before ServerHello it means nothing in common was found; after it, a TLS 1.2
    server sends it to refuse a missing client certificate.
    """
    if evidence.side == "client" and evidence.certificate_requested:
        return PEER_REJECTED_CERTIFICATE

    if evidence.server_hello_seen is False:
        return NO_SHARED_CIPHER

    if evidence.side == "client" and evidence.certificate_requested is None:
        return PEER_REJECTED_CERTIFICATE

    return None


def classify(exc: BaseException, evidence: Evidence) -> Failure:
    """Classify the exception that ended a handshake."""
    verify_code = getattr(exc, "verify_code", None)
    verify_message = getattr(exc, "verify_message", None)
    openssl_reason = getattr(exc, "reason", None)
    if not isinstance(openssl_reason, str):
        openssl_reason = None

    alert_received = evidence.alert_received or tlsmsg.alert_from_openssl_reason(
        openssl_reason
    )
    reason = _reason(exc, evidence, verify_code, openssl_reason, alert_received)

    return Failure(
        reason=reason,
        error_type=error_type(exc),
        detail=str(exc),
        verify_code=verify_code if isinstance(verify_code, int) else None,
        verify_message=verify_message if isinstance(verify_message, str) else None,
        openssl_reason=openssl_reason,
        alert_sent=evidence.alert_sent,
        alert_received=alert_received,
    )


def _reason(
    exc: BaseException,
    evidence: Evidence,
    verify_code: object,
    openssl_reason: str | None,
    alert_received: str | None,
) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError) and isinstance(verify_code, int):
        return _VERIFY_REASONS.get(verify_code, CERTIFICATE_INVALID)

    by_alert = _by_alert(alert_received, evidence)
    if by_alert is not None:
        return by_alert

    if openssl_reason in _OPENSSL_REASONS:
        return _OPENSSL_REASONS[openssl_reason]

    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TIMEOUT

    if (
        _closed(exc)
        or openssl_reason == _EOF_REASON
        or isinstance(exc, ssl.SSLSyscallError)
    ):
        return closed_reason(evidence)

    return OTHER


def closed_reason(evidence: Evidence) -> str:
    """The reason for a handshake the peer abandoned without an error message."""
    if evidence.side == "server" and evidence.client_hello_seen is False:
        return NO_CLIENT_HELLO

    if evidence.side == "client" and evidence.certificate_requested:
        # Asked for a certificate, then dropped: how asyncio servers refuse one.
        return PROBABLY_REJECTED

    if (
        evidence.side == "client"
        and evidence.certificate_requested is None
        and evidence.server_hello_seen
    ):
        # Unobserved, but past ServerHello: what remains for a server to object
        # to is the client's certificate (or its absence).
        return PROBABLY_REJECTED

    return CONNECTION_CLOSED
