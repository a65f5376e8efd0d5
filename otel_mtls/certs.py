"""Certificates to attributes: parsed once per distinct DER, escaped, capped.

Whatever a peer puts in its certificate reaches spans and logs, so every string
taken from a certificate is escaped here (control characters, bidirectional
overrides, lone surrogates) and capped in length, and SANs are capped in count.
A certificate that cannot be parsed still yields its SHA-256 and the reason.
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import logging
import re
import ssl
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Callable, Final, Union

from cryptography import x509

from otel_mtls import attributes as A

_logger = logging.getLogger(__name__)

# cryptography warns when it reads a name longer than X.520 allows, once per
# access. Such names are exactly what hostile peers send, and they are recorded
# (capped) here; the warning is silenced only where this module reads them.
warnings.filterwarnings(
    "ignore",
    message="Attribute's length must be",
    category=UserWarning,
    module=re.escape(__name__),
)

AttrValue = Union[str, bool, int, float, Sequence[str]]
Attributes = dict[str, AttrValue]

# C0 and C1 controls, DEL, bidirectional embeddings, overrides and isolates, the
# line and paragraph separators, and lone surrogates: anything that could break a
# log line or make a name display as something it is not.
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code <= 0xFF:
        return f"\\x{code:02x}"

    return f"\\u{code:04x}"


def safe_text(value: str, limit: int) -> str:
    """Escape unsafe characters, then cap the length with a visible marker."""
    escaped = _UNSAFE.sub(_escape_char, value)
    if len(escaped) <= limit:
        return escaped

    dropped = len(escaped) - limit
    return f"{escaped[:limit]}...(+{dropped} chars)"


def sha256_hex(der: bytes) -> str:
    """The OpenTelemetry form of a certificate hash: upper-case hex, no colons."""
    return hashlib.sha256(der).hexdigest().upper()


def _iso(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def _not_before(cert: x509.Certificate) -> datetime.datetime:
    # cryptography 42 added the timezone-aware accessors; older names warn.
    return cert.not_valid_before_utc


def _not_after(cert: x509.Certificate) -> datetime.datetime:
    return cert.not_valid_after_utc


def _name(name: x509.Name, limit: int) -> str:
    try:
        text = name.rfc4514_string()
    except Exception as exc:  # noqa: BLE001 - hostile names must not escape
        text = f"<unprintable name: {type(exc).__name__}>"

    return safe_text(text, limit)


def _general_name(entry: x509.GeneralName, limit: int) -> str:
    if isinstance(entry, x509.DNSName):
        text = f"DNS:{entry.value}"
    elif isinstance(entry, x509.IPAddress):
        text = f"IP:{entry.value}"
    elif isinstance(entry, x509.RFC822Name):
        text = f"email:{entry.value}"
    elif isinstance(entry, x509.UniformResourceIdentifier):
        text = f"URI:{entry.value}"
    elif isinstance(entry, x509.DirectoryName):
        text = f"dirName:{entry.value.rfc4514_string()}"
    elif isinstance(entry, x509.RegisteredID):
        text = f"RID:{entry.value.dotted_string}"
    elif isinstance(entry, x509.OtherName):
        text = f"otherName:{entry.type_id.dotted_string}"
    else:
        text = f"unknown:{type(entry).__name__}"

    return safe_text(text, limit)


def _sans(cert: x509.Certificate, limit: int, count: int) -> list[str]:
    try:
        extension = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return []

    names = list(extension.value)
    rendered = [_general_name(entry, limit) for entry in names[:count]]
    if len(names) > count:
        rendered.append(f"...(+{len(names) - count} more)")

    return rendered


@dataclass(frozen=True)
class CertInfo:
    """What the package records about one certificate."""

    sha256: str
    subject: str = ""
    issuer: str = ""
    serial: str = ""
    not_before: str = ""
    not_after: str = ""
    sans: tuple[str, ...] = ()
    parse_error: str = ""
    not_after_epoch: float = 0.0
    _by_side: dict[str, Attributes] = field(default_factory=dict, compare=False)

    def attributes(self, side: str) -> Attributes:
        """The span attributes for this certificate as the ``side`` certificate.

        ``side`` is ``client`` or ``server``: whose certificate it is, not who
        records it, as in the semantic conventions.
        """
        cached = self._by_side.get(side)
        if cached is not None:
            return cached

        attrs: Attributes = {f"tls.{side}.hash.sha256": self.sha256}
        if self.parse_error:
            attrs[A.MTLS_PARSE_ERROR] = self.parse_error
        else:
            attrs[f"tls.{side}.subject"] = self.subject
            attrs[f"tls.{side}.issuer"] = self.issuer
            attrs[f"tls.{side}.not_before"] = self.not_before
            attrs[f"tls.{side}.not_after"] = self.not_after
            attrs[f"mtls.{side}.serial_number"] = self.serial
            if self.sans:
                attrs[f"mtls.{side}.alternative_names"] = list(self.sans)

        self._by_side[side] = attrs
        return attrs

    def identity(self, side: str) -> Attributes:
        """The short form (subject, hash, expiry) for the local certificate."""
        attrs: Attributes = {f"tls.{side}.hash.sha256": self.sha256}
        if not self.parse_error:
            attrs[f"tls.{side}.subject"] = self.subject
            attrs[f"tls.{side}.not_after"] = self.not_after

        return attrs


def parse_der(der: bytes, max_name_length: int, max_san_count: int) -> CertInfo:
    """Parse one DER certificate; never raises, a failure is recorded instead."""
    digest = sha256_hex(der)

    try:
        cert = x509.load_der_x509_certificate(der)
        not_after = _not_after(cert)
        return CertInfo(
            sha256=digest,
            subject=_name(cert.subject, max_name_length),
            issuer=_name(cert.issuer, max_name_length),
            serial=format(cert.serial_number, "X"),
            not_before=_iso(_not_before(cert)),
            not_after=_iso(not_after),
            sans=tuple(_sans(cert, max_name_length, max_san_count)),
            not_after_epoch=not_after.timestamp(),
        )
    except Exception as exc:  # noqa: BLE001 - hostile input must not escape
        reason = safe_text(f"{type(exc).__name__}: {exc}", 256)
        _logger.debug("certificate %s could not be parsed: %s", digest, reason)
        return CertInfo(sha256=digest, parse_error=f"{reason} (sha256={digest})")


def make_cache(
    size: int, max_name_length: int, max_san_count: int
) -> Callable[[bytes], CertInfo]:
    """A bounded, thread-safe cache from DER bytes to parsed certificates.

    ``functools.lru_cache`` keys on the DER itself, so a hit costs a hash of the
    bytes and a comparison, cheaper than the SHA-256 a miss computes.
    """

    @functools.lru_cache(maxsize=size)
    def lookup(der: bytes) -> CertInfo:
        return parse_der(der, max_name_length, max_san_count)

    return lookup


def chain_pem(chain: Sequence[bytes]) -> list[str]:
    """A chain of DER certificates as PEM strings, for the opt-in chain attribute."""
    return [ssl.DER_cert_to_PEM_cert(der) for der in chain]
