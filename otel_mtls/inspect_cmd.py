"""``otel-mtls inspect``: what the package would record about certificate files.

Each certificate goes through the same parser the instrumentation uses
(``certs.parse_der``), so the subject and issuer shown are escaped and capped
exactly as they would reach spans and logs. Chains are checked for order (each
certificate's issuer is the next one's subject) and every certificate for expiry.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import logging
import re
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Optional, TextIO

from cryptography import x509

from otel_mtls.certs import CertInfo, parse_der, safe_text
from otel_mtls.config import Config

_logger = logging.getLogger(__name__)

_PEM_BLOCK: Final = re.compile(
    rb"-----BEGIN CERTIFICATE-----\s*(.*?)\s*-----END CERTIFICATE-----", re.DOTALL
)
_DAY: Final = 86400.0
# Certificates that expire sooner than this are reported as a warning.
EXPIRY_WARNING_DAYS: Final = 30

# Severities of findings, as ``doctor`` prints them.
WARN: Final = "WARN"
FAIL: Final = "FAIL"


@dataclass(frozen=True)
class Finding:
    """One problem with a certificate file."""

    severity: str
    message: str


@dataclass
class Inspected:
    """One certificate of a file: what would be recorded, and its validity."""

    index: int
    info: CertInfo
    days_left: Optional[float]
    not_yet_valid: bool

    def as_json(self, side: str) -> dict[str, object]:
        attributes = {
            name: list(value) if isinstance(value, (list, tuple)) else value
            for name, value in self.info.attributes(side).items()
        }
        return {
            "index": self.index,
            "attributes": attributes,
            "days_left": None if self.days_left is None else round(self.days_left, 2),
            "expired": self.days_left is not None and self.days_left < 0,
            "not_yet_valid": self.not_yet_valid,
        }


@dataclass
class InspectedFile:
    """A file, the certificates found in it, and what is wrong with them."""

    path: str
    certificates: list[Inspected] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)

    def as_json(self, side: str) -> dict[str, object]:
        return {
            "path": self.path,
            "certificates": [cert.as_json(side) for cert in self.certificates],
            "findings": [
                {"severity": f.severity, "message": f.message} for f in self.findings
            ],
        }


def read_certificates(data: bytes) -> list[bytes]:
    """The DER of each certificate in ``data``: PEM blocks, else one DER blob.

    Raises:
        ValueError: A PEM block is not valid base64.
    """
    if b"-----BEGIN" not in data:
        return [data] if data else []

    blocks = []
    for match in _PEM_BLOCK.finditer(data):
        try:
            blocks.append(base64.b64decode(match.group(1), validate=False))
        except binascii.Error as exc:
            raise ValueError(f"invalid base64 in a PEM block: {exc}") from exc

    return blocks


def _load(der: bytes) -> Optional[x509.Certificate]:
    try:
        # Over-long names are what hostile certificates carry; the warning about
        # them is noise here, parse_der already records them capped.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return x509.load_der_x509_certificate(der)
    except ValueError:
        return None


def _name_text(name: x509.Name, limit: int) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return safe_text(name.rfc4514_string(), limit)


def _chain_findings(
    certificates: Sequence[Optional[x509.Certificate]], limit: int
) -> list[Finding]:
    findings = []
    for index in range(len(certificates) - 1):
        current, following = certificates[index], certificates[index + 1]
        if current is None or following is None:
            continue

        if current.issuer != following.subject:
            findings.append(
                Finding(
                    FAIL,
                    f"chain order: certificate {index} was issued by "
                    f"'{_name_text(current.issuer, limit)}', but certificate "
                    f"{index + 1} is '{_name_text(following.subject, limit)}'",
                )
            )

    return findings


def _validity_findings(cert: Inspected) -> list[Finding]:
    label = f"certificate {cert.index} ({cert.info.subject or cert.info.sha256})"
    if cert.info.parse_error:
        return [Finding(FAIL, f"{label}: cannot be parsed: {cert.info.parse_error}")]

    if cert.not_yet_valid:
        return [Finding(FAIL, f"{label}: not valid before {cert.info.not_before}")]

    if cert.days_left is None:
        return []

    if cert.days_left < 0:
        return [
            Finding(
                FAIL,
                f"{label}: expired {-cert.days_left:.0f} days ago "
                f"({cert.info.not_after})",
            )
        ]

    if cert.days_left < EXPIRY_WARNING_DAYS:
        return [
            Finding(
                WARN,
                f"{label}: expires in {cert.days_left:.1f} days "
                f"({cert.info.not_after})",
            )
        ]

    return []


def inspect_file(path: Path, now: Optional[datetime.datetime] = None) -> InspectedFile:
    """Read, parse and audit one file; an unreadable file becomes a finding."""
    moment = now or datetime.datetime.now(datetime.timezone.utc)
    limits = Config()
    result = InspectedFile(path=safe_text(str(path), 4096))

    try:
        ders = read_certificates(path.read_bytes())
    except (OSError, ValueError) as exc:
        result.findings.append(Finding(FAIL, f"cannot read: {exc}"))
        return result

    if not ders:
        result.findings.append(Finding(FAIL, "no certificate found"))
        return result

    loaded = [_load(der) for der in ders]
    for index, (der, cert) in enumerate(zip(ders, loaded)):
        info = parse_der(der, limits.max_name_length, limits.max_san_count)
        days_left = None
        not_yet_valid = False
        if cert is not None:
            days_left = (info.not_after_epoch - moment.timestamp()) / _DAY
            not_yet_valid = cert.not_valid_before_utc > moment
        result.certificates.append(Inspected(index, info, days_left, not_yet_valid))

    for inspected in result.certificates:
        result.findings.extend(_validity_findings(inspected))
    result.findings.extend(_chain_findings(loaded, limits.max_name_length))

    _logger.debug("%s: %d certificates", path, len(result.certificates))
    return result


def _print_text(files: Sequence[InspectedFile], side: str, out: TextIO) -> None:
    for inspected in files:
        print(
            f"{inspected.path}: {len(inspected.certificates)} certificate(s)", file=out
        )

        for cert in inspected.certificates:
            print(f"  [{cert.index}]", file=out)
            for name, value in cert.info.attributes(side).items():
                shown = ", ".join(value) if isinstance(value, (list, tuple)) else value
                print(f"    {name}: {shown}", file=out)
            if cert.days_left is not None:
                state = "expired" if cert.days_left < 0 else "days left"
                print(f"    {state}: {abs(cert.days_left):.1f}", file=out)

        for finding in inspected.findings:
            print(f"  {finding.severity}: {finding.message}", file=out)
        if not inspected.findings:
            print("  OK: no findings", file=out)


def run(
    paths: Sequence[Path],
    *,
    as_json: bool = False,
    side: str = "client",
    out: Optional[TextIO] = None,
) -> int:
    """Inspect ``paths``; 1 when any finding is a failure, else 0."""
    stream = out or sys.stdout
    files = [inspect_file(path) for path in paths]

    if as_json:
        document = {"files": [f.as_json(side) for f in files]}
        print(json.dumps(document, indent=2), file=stream)
    else:
        _print_text(files, side, stream)

    failed = any(f.severity == FAIL for item in files for f in item.findings)
    return 1 if failed else 0
