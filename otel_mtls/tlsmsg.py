"""The TLS wire facts the package reads: Certificate messages and alert names.

The stdlib gives no access to a certificate that failed verification on the
server side, so the package reads the peer's Certificate handshake message (RFC
5246 section 7.4.2, RFC 8446 section 4.4.2) as OpenSSL hands it to the message
callback, already decrypted. The parser trusts nothing in it: every length is
checked against what is left, and it stops at ``MAX_CERTIFICATES`` entries.
"""

from __future__ import annotations

from typing import Final

CONTENT_ALERT: Final = 21
CONTENT_HANDSHAKE: Final = 22

HS_CLIENT_HELLO: Final = 1
HS_SERVER_HELLO: Final = 2
HS_CERTIFICATE: Final = 11
HS_CERTIFICATE_REQUEST: Final = 13
HS_FINISHED: Final = 20

TLS13_VERSION: Final = 0x0304

VERSION_NAMES: Final[dict[int, str]] = {
    0x0304: "1.3",
    0x0303: "1.2",
    0x0302: "1.1",
    0x0301: "1.0",
}

# A chain longer than this is hostile or broken; what follows is not recorded.
MAX_CERTIFICATES: Final = 16

# RFC 8446 section 6 and the IANA TLS Alerts registry.
ALERT_NAMES: Final[dict[int, str]] = {
    0: "close_notify",
    10: "unexpected_message",
    20: "bad_record_mac",
    21: "decryption_failed",
    22: "record_overflow",
    30: "decompression_failure",
    40: "handshake_failure",
    41: "no_certificate",
    42: "bad_certificate",
    43: "unsupported_certificate",
    44: "certificate_revoked",
    45: "certificate_expired",
    46: "certificate_unknown",
    47: "illegal_parameter",
    48: "unknown_ca",
    49: "access_denied",
    50: "decode_error",
    51: "decrypt_error",
    60: "export_restriction",
    70: "protocol_version",
    71: "insufficient_security",
    80: "internal_error",
    86: "inappropriate_fallback",
    90: "user_canceled",
    100: "no_renegotiation",
    109: "missing_extension",
    110: "unsupported_extension",
    111: "certificate_unobtainable",
    112: "unrecognized_name",
    113: "bad_certificate_status_response",
    114: "bad_certificate_hash_value",
    115: "unknown_psk_identity",
    116: "certificate_required",
    120: "no_application_protocol",
}

# Alerts by which a peer says it refused the certificate it was shown.
CERTIFICATE_ALERTS: Final = frozenset(
    {
        "bad_certificate",
        "unsupported_certificate",
        "certificate_revoked",
        "certificate_expired",
        "certificate_unknown",
        "unknown_ca",
        "access_denied",
        "certificate_required",
        "no_certificate",
    }
)


def alert_name(description: int) -> str:
    """Name of a TLS alert description, or ``alert_<n>`` for unassigned codes."""
    return ALERT_NAMES.get(description, f"alert_{description}")


def alert_from_openssl_reason(reason: str | None) -> str | None:
    """The alert named by an OpenSSL reason such as ``TLSV1_ALERT_UNKNOWN_CA``.

    OpenSSL names a received alert in its error reason; this is the fallback when
    the handshake messages were not observed.
    """
    if not reason:
        return None

    marker = "_ALERT_"
    index = reason.find(marker)
    if index < 0:
        return None

    return reason[index + len(marker) :].lower()


class _Reader:
    """Bounds-checked cursor over a handshake message."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, count: int) -> bytes:
        if count < 0 or count > self.remaining():
            raise ValueError(
                f"truncated: {count} bytes wanted at offset {self.pos}, "
                f"{self.remaining()} left"
            )

        chunk = self.data[self.pos : self.pos + count]
        self.pos += count
        return chunk

    def uint(self, width: int) -> int:
        return int.from_bytes(self.take(width), "big")


def parse_certificate_message(data: bytes, tls13: bool) -> list[bytes]:
    """Return the DER certificates of a Certificate handshake message, leaf first.

    ``data`` starts with the 4-byte handshake header, as the message callback
    delivers it. An empty list means the peer sent no certificate. Malformed input
    raises ``ValueError`` with what was wrong; nothing else escapes.
    """
    reader = _Reader(bytes(data))

    msg_type = reader.uint(1)
    if msg_type != HS_CERTIFICATE:
        raise ValueError(f"not a Certificate message (type {msg_type})")

    body_length = reader.uint(3)
    if body_length != reader.remaining():
        raise ValueError(
            f"message length {body_length} does not match {reader.remaining()}"
        )

    if tls13:
        context_length = reader.uint(1)
        reader.take(context_length)

    list_length = reader.uint(3)
    if list_length != reader.remaining():
        raise ValueError(
            f"certificate list length {list_length} does not match {reader.remaining()}"
        )

    certificates: list[bytes] = []

    while reader.remaining() and len(certificates) < MAX_CERTIFICATES:
        cert_length = reader.uint(3)
        if cert_length == 0:
            raise ValueError("empty certificate entry")

        certificates.append(reader.take(cert_length))

        if tls13:
            extensions_length = reader.uint(2)
            reader.take(extensions_length)

    return certificates


def parse_any_certificate_message(data: bytes, version: int) -> list[bytes]:
    """Parse with the layout of ``version``, then the other one.

    The version the callback reports for a handshake message is the record's,
    which is not always the negotiated one, so the other layout is a fallback.
    """
    tls13 = version == TLS13_VERSION

    try:
        return parse_certificate_message(data, tls13)
    except ValueError as first:
        try:
            return parse_certificate_message(data, not tls13)
        except ValueError:
            raise first from None
