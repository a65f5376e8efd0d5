"""``otel-mtls probe``: does an mTLS endpoint refuse bad client certificates?

The probe makes a battery of client credentials on the fly, connects with each to
the one address the user named, over each TLS version asked for, and reports
whether the server accepted or refused it, with the alert and the time taken.
With ``--expect-telemetry`` it also receives the target's OTLP export and matches
every attempt to the record the target emitted, by certificate fingerprint and
client port; an attempt without a record is a logging gap.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import json
import logging
import re
import socket
import ssl
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Optional, TextIO

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from otel_mtls import attributes as A
from otel_mtls import otlp_receiver
from otel_mtls.certs import safe_text
from otel_mtls.pki import CertificateAuthority, Credential, PrivateKey

_logger = logging.getLogger(__name__)

_DAY: Final = datetime.timedelta(days=1)
_TIMEOUT: Final = 5.0
_TELEMETRY_POLL: Final = 0.1
# Logs and spans leave the target in separate batches: once every attempt has one
# record, the rest of its records may still be a batch behind.
_TELEMETRY_SETTLE: Final = 0.5
_LONG_SUBJECT_LENGTH: Final = 4096
_HOSTILE_SUBJECT: Final = "probe-injection\nFAKE LOG LINE: accepted\r\x1b[31m\x07"
# A recorded subject longer than this was not capped: by default the
# instrumentation caps names at 1024 characters (max_name_length) plus a marker.
MAX_RECORDED_SUBJECT: Final = 1100
# C0 controls, DEL and C1 controls: any of them raw in a record can forge or
# hide log lines in a terminal or a line-based log store.
_RAW_CONTROL: Final = re.compile("[\x00-\x1f\x7f-\x9f]")

TLS_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

# Credential names, in the order they are tried. Only ``valid`` should pass.
CREDENTIALS: Final = (
    "none",
    "self_signed",
    "unknown_ca",
    "control_characters",
    "long_subject",
    "valid",
    "expired",
    "not_yet_valid",
    "server_only",
    "revoked",
    "incomplete_chain",
    "weak_key",
    "sha1_signature",
)
NEEDS_ISSUER: Final = frozenset(
    {
        "valid",
        "expired",
        "not_yet_valid",
        "server_only",
        "incomplete_chain",
        "weak_key",
        "sha1_signature",
    }
)
HOSTILE_NAMES: Final = frozenset({"control_characters", "long_subject"})
CONTROL: Final = "valid"
# The expected outcome of a hostile name from the user's CA: it is otherwise
# valid, so the server may accept it; what matters is how it is recorded.
EITHER: Final = "accepted or refused"


@dataclass(frozen=True)
class Target:
    """The one address the probe may connect to."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else self.host_port

    @property
    def host_port(self) -> str:
        return f"{self.host}:{self.port}"


def parse_target(text: str) -> Target:
    """``HOST:PORT`` or ``[V6]:PORT``.

    Raises:
        ValueError: No port, or a port out of range.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected HOST:PORT, not {text!r}")

    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")

    return Target(host.strip("[]"), port)


@dataclass(frozen=True)
class Probe:
    """One credential to try: None for no certificate."""

    name: str
    credential: Optional[Credential]
    description: str
    weak: bool = False
    expect: str = "refused"

    @property
    def sha256(self) -> Optional[str]:
        return self.credential.sha256 if self.credential is not None else None


@dataclass(frozen=True)
class Skipped:
    """A credential the probe could not make here, and why."""

    name: str
    note: str


@dataclass
class Attempt:
    """One connection and what came of it."""

    credential: str
    tls_version: str
    expected: str
    outcome: str = "error"
    alert: Optional[str] = None
    detail: str = ""
    duration_ms: float = 0.0
    client_port: Optional[int] = None
    sha256: Optional[str] = None
    telemetry: Optional[str] = None
    records: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    escaping: Optional[str] = None
    escaping_detail: str = ""

    @property
    def problem(self) -> Optional[str]:
        """Why this attempt fails the probe, or None."""
        if self.outcome == "error":
            return f"could not connect: {self.detail}"
        if self.expected not in {self.outcome, EITHER}:
            if self.expected == "refused":
                return f"bad credential {self.credential!r} was accepted"
            return "the control credential was refused"
        if self.telemetry == "gap":
            return "no matching record in the target's telemetry"
        if self.escaping == "not escaped":
            return f"record not escaped: {self.escaping_detail}"

        return None

    def as_json(self) -> dict[str, object]:
        return {
            "credential": self.credential,
            "tls_version": self.tls_version,
            "expected": self.expected,
            "outcome": self.outcome,
            "alert": self.alert,
            "detail": self.detail,
            "duration_ms": round(self.duration_ms, 2),
            "client_port": self.client_port,
            "sha256": self.sha256,
            "telemetry": self.telemetry,
            "records": self.records,
            "reasons": self.reasons,
            "escaping": self.escaping,
            "escaping_detail": self.escaping_detail,
            "problem": self.problem,
        }


@dataclass
class Options:
    """What the user asked for."""

    target: Target
    versions: Sequence[str] = ("1.2", "1.3")
    issuer_cert: Optional[Path] = None
    issuer_key: Optional[Path] = None
    revoked_cert: Optional[Path] = None
    revoked_key: Optional[Path] = None
    server_ca: Optional[Path] = None
    sni: Optional[str] = None
    alpn: Sequence[str] = ()
    rate: float = 10.0
    max_attempts: int = 100
    only: Sequence[str] = ()
    expect_telemetry: Optional[tuple[str, int]] = None
    telemetry_wait: float = 15.0
    connect_timeout: float = _TIMEOUT


# --- credentials -------------------------------------------------------------


def _load_issuer(cert_path: Path, key_path: Path) -> CertificateAuthority:
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, PrivateKey.__args__):  # type: ignore[attr-defined]
        raise ValueError(f"{key_path}: only EC and RSA issuer keys are supported")

    return CertificateAuthority(cert, key)


def _load_revoked(cert_path: Path, key_path: Path) -> Credential:
    """The user's revoked credential, checked here so that a bad file fails early.

    Raises:
        ValueError: No PEM certificate, or an unreadable or encrypted key.
    """
    cert_pem = cert_path.read_bytes()
    key_pem = key_path.read_bytes()
    x509.load_pem_x509_certificates(cert_pem)
    try:
        serialization.load_pem_private_key(key_pem, password=None)
    except TypeError as exc:
        raise ValueError(f"{key_path}: encrypted keys are not supported") from exc

    return Credential("revoked", cert_pem, key_pem)


# Credentials OpenSSL refuses to load at its default security level; the probe
# presents them on purpose.
_WEAK: Final = frozenset({"weak_key", "sha1_signature"})


def _issued(
    issuer: CertificateAuthority,
    name: str,
    description: str,
    expect: str = "refused",
    **options: object,
) -> Callable[[], Probe]:
    def make() -> Probe:
        credential = issuer.issue(name, **options)  # type: ignore[arg-type]
        return Probe(
            name,
            credential,
            description,
            weak=name in _WEAK,
            expect=expect,
        )

    return make


def _hostile(
    issuer: Optional[CertificateAuthority], unknown: CertificateAuthority
) -> dict[str, Callable[[], Probe]]:
    # From the user's CA the names are otherwise valid and may be accepted: the
    # test is then that the record carries them escaped. From the throw-away CA
    # the server must refuse them, and its failure record must escape them too.
    authority, source, expect = (
        (unknown, "throw-away CA", "refused")
        if issuer is None
        else (issuer, "test CA", EITHER)
    )
    return {
        "control_characters": _issued(
            authority,
            "control_characters",
            f"subject with a newline and control characters ({source})",
            expect,
            common_name=_HOSTILE_SUBJECT,
        ),
        "long_subject": _issued(
            authority,
            "long_subject",
            f"{_LONG_SUBJECT_LENGTH}-character subject ({source})",
            expect,
            common_name="L" * _LONG_SUBJECT_LENGTH,
        ),
    }


def _incomplete_chain(issuer: CertificateAuthority) -> Probe:
    intermediate = CertificateAuthority.create(
        "otel-mtls probe intermediate", parent=issuer
    )
    credential = intermediate.issue("incomplete_chain", include_chain=False)
    return Probe(
        "incomplete_chain",
        credential,
        "issued by an intermediate of the test CA, sent without the intermediate",
    )


def _recipes(
    issuer: Optional[CertificateAuthority], revoked: Optional[Credential]
) -> dict[str, Callable[[], Probe]]:
    now = datetime.datetime.now(datetime.timezone.utc)
    unknown = CertificateAuthority.create("otel-mtls probe unknown CA")
    recipes: dict[str, Callable[[], Probe]] = {
        "none": lambda: Probe("none", None, "no client certificate"),
        "self_signed": _self_signed,
        "unknown_ca": _issued(unknown, "unknown_ca", "issued by a throw-away CA"),
        **_hostile(issuer, unknown),
    }
    if revoked is not None:
        recipes["revoked"] = lambda: Probe(
            "revoked", revoked, "revoked in the user's PKI (--revoked-cert)"
        )
    if issuer is None:
        return recipes

    recipes.update(
        {
            "valid": _issued(issuer, "valid", "valid, from the test CA (control)"),
            "expired": _issued(
                issuer,
                "expired",
                "expired yesterday",
                not_before=now - 30 * _DAY,
                not_after=now - _DAY,
            ),
            "not_yet_valid": _issued(
                issuer,
                "not_yet_valid",
                "valid from tomorrow",
                not_before=now + _DAY,
                not_after=now + 30 * _DAY,
            ),
            "server_only": _issued(
                issuer,
                "server_only",
                "extended key usage serverAuth only",
                usage="server",
            ),
            "incomplete_chain": lambda: _incomplete_chain(issuer),
            "weak_key": _issued(
                issuer, "weak_key", "RSA 1024-bit key", key_type="rsa", rsa_bits=1024
            ),
            "sha1_signature": _issued(
                issuer, "sha1_signature", "signed with SHA-1", hash_alg="sha1"
            ),
        }
    )
    return recipes


def _self_signed() -> Probe:
    authority = CertificateAuthority.create("otel-mtls probe self-signed")
    credential = Credential(
        "self_signed",
        authority.cert_pem,
        authority.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )
    return Probe("self_signed", credential, "self-signed")


def build_probes(
    options: Options, directory: Path
) -> tuple[list[Probe], list[Skipped]]:
    """Make the selected credentials, written to ``directory``."""
    issuer = None
    if options.issuer_cert is not None and options.issuer_key is not None:
        issuer = _load_issuer(options.issuer_cert, options.issuer_key)
    revoked = None
    if options.revoked_cert is not None and options.revoked_key is not None:
        revoked = _load_revoked(options.revoked_cert, options.revoked_key)

    recipes = _recipes(issuer, revoked)
    probes, skipped = [], []
    for name in CREDENTIALS:
        if options.only and name not in options.only:
            continue

        recipe = recipes.get(name)
        if recipe is None:
            needs = "revoked" if name == "revoked" else "issuer"
            skipped.append(Skipped(name, f"needs --{needs}-cert and --{needs}-key"))
            continue

        try:
            probe = recipe()
        except (ValueError, TypeError) as exc:
            # A credential the installed libraries cannot make is reported, not
            # silently dropped.
            note = f"could not be made here: {exc}"
            skipped.append(Skipped(name, safe_text(note, 300)))
            continue

        if probe.credential is not None:
            probe = dataclasses.replace(
                probe, credential=probe.credential.write(directory)
            )
        probes.append(probe)

    return probes, skipped


# --- attempts ----------------------------------------------------------------


class RateLimiter:
    """At most ``rate`` starts per second, measured on the monotonic clock."""

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next: Optional[float] = None

    def wait(self) -> None:
        now = self._clock()
        if self._next is not None and now < self._next:
            self._sleep(self._next - now)
            now = self._clock()

        self._next = max(now, self._next or now) + self._interval


def _context(options: Options, probe: Probe, version: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = context.maximum_version = TLS_VERSIONS[version]

    if options.server_ca is not None:
        context.load_verify_locations(cafile=options.server_ca)
    else:
        # Without --server-ca the server is not verified, and the output says so.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

    if probe.weak:
        # OpenSSL's default security level refuses to load a 1024-bit key; the
        # probe presents it on purpose.
        context.set_ciphers("DEFAULT:@SECLEVEL=0")

    credential = probe.credential
    if credential is not None and credential.cert_path and credential.key_path:
        context.load_cert_chain(credential.cert_path, credential.key_path)
    if options.alpn:
        context.set_alpn_protocols(list(options.alpn))

    return context


def _alert(exc: BaseException) -> Optional[str]:
    # OpenSSL names a received alert in its reason, e.g. TLSV1_ALERT_UNKNOWN_CA
    # or TLSV13_ALERT_CERTIFICATE_REQUIRED.
    reason = getattr(exc, "reason", None)
    if not isinstance(reason, str) or "_ALERT_" not in reason:
        return None

    return reason.split("_ALERT_", 1)[1].lower()


def _server_hostname(options: Options) -> Optional[str]:
    if options.sni:
        return options.sni

    try:
        ipaddress.ip_address(options.target.host)
    except ValueError:
        return options.target.host

    return None if options.server_ca is None else options.target.host


def _verdict_after_handshake(tls: ssl.SSLSocket, options: Options) -> str:
    """Send a minimal request and read once: TLS 1.3 servers refuse only now."""
    host = options.sni or options.target.host
    request = f"GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    tls.sendall(request.encode("ascii", "replace"))
    data = tls.recv(64)
    if not data:
        raise ConnectionResetError("closed by the server after the handshake")

    first = data.split(b"\r\n", 1)[0]
    return safe_text(first.decode("latin-1"), 120)


def attempt_once(options: Options, probe: Probe, version: str) -> Attempt:
    """One connection with ``probe``'s credential over ``version``."""
    expected = "accepted" if probe.name == CONTROL else probe.expect
    attempt = Attempt(probe.name, version, expected, sha256=probe.sha256)
    context = _context(options, probe, version)
    started = time.monotonic()

    try:
        with socket.create_connection(
            (options.target.host, options.target.port), timeout=options.connect_timeout
        ) as raw:
            # Read before the handshake: a refused handshake closes the socket.
            attempt.client_port = raw.getsockname()[1]
            attempt.outcome = "refused"
            with context.wrap_socket(
                raw, server_hostname=_server_hostname(options)
            ) as tls:
                attempt.detail = "handshake completed"
                attempt.detail = _verdict_after_handshake(tls, options)
                attempt.outcome = "accepted"
    except ssl.SSLCertVerificationError as exc:
        # The probe itself refused the server: no verdict on the client side.
        attempt.outcome = "error"
        attempt.detail = f"server certificate: {exc.verify_message}"
    except socket.timeout:
        if attempt.detail == "handshake completed":
            # A refusal comes at once; silence means the server kept the
            # connection with this certificate and just did not answer the request.
            attempt.outcome = "accepted"
            attempt.detail = "handshake completed, no answer before the timeout"
        else:
            # A server that stalls the handshake gives no verdict on the credential.
            attempt.outcome = "error"
            attempt.detail = "timed out during the handshake"
    except OSError as exc:
        attempt.alert = _alert(exc)
        attempt.detail = safe_text(f"{type(exc).__name__}: {exc}", 300)
        if attempt.client_port is None:
            attempt.outcome = "error"

    attempt.duration_ms = (time.monotonic() - started) * 1000
    return attempt


def _progress(out: Optional[TextIO], done: int, total: int, label: str) -> None:
    if out is None:
        return

    out.write(f"\r\x1b[K[{done}/{total}] {label}")
    if done == total:
        out.write("\r\x1b[K")
    out.flush()


def run_attempts(
    options: Options, probes: Sequence[Probe], progress: Optional[TextIO] = None
) -> tuple[list[Attempt], int]:
    """Every probe over every version, rate-limited and capped.

    Returns the attempts made and how many were left out by ``max_attempts``.
    """
    plan = [(probe, version) for version in options.versions for probe in probes]
    limiter = RateLimiter(options.rate)
    attempts: list[Attempt] = []

    for probe, version in plan[: options.max_attempts]:
        limiter.wait()
        _progress(progress, len(attempts), len(plan), f"TLS {version} {probe.name}")
        attempts.append(attempt_once(options, probe, version))
        _logger.debug("%s", attempts[-1])

    _progress(progress, len(plan), len(plan), "")
    return attempts, max(len(plan) - options.max_attempts, 0)


# --- telemetry ---------------------------------------------------------------


def subject_problem(subject: str) -> Optional[str]:
    """Why a recorded ``tls.client.subject`` is unsafe to log, or None."""
    raw = _RAW_CONTROL.search(subject)
    if raw is not None:
        return f"raw control character U+{ord(raw.group()):04X} in the subject"
    if len(subject) > MAX_RECORDED_SUBJECT:
        return f"subject of {len(subject)} characters, not capped"

    return None


def _check_escaping(attempt: Attempt, records: Sequence[otlp_receiver.Record]) -> None:
    attempt.escaping = "no subject"
    for record in records:
        value = record.attributes.get(A.TLS_CLIENT_SUBJECT)
        if value is None:
            continue

        problem = subject_problem(str(value))
        if problem is not None:
            attempt.escaping = "not escaped"
            attempt.escaping_detail = (
                f"{record.kind}:{record.name or 'unnamed'}: {problem}"
            )
            return
        attempt.escaping = "escaped"


def _match(attempt: Attempt, records: Sequence[otlp_receiver.Record]) -> bool:
    if attempt.client_port is None:
        return True

    found = otlp_receiver.find(records, attempt.client_port, attempt.sha256)
    if attempt.outcome == "refused":
        found = [r for r in found if otlp_receiver.is_failure(r)]
    else:
        found = [r for r in found if otlp_receiver.is_server_handshake(r)]
    if not found:
        return False

    attempt.records = sorted({f"{r.kind}:{r.name or 'unnamed'}" for r in found})
    reasons = {r.attributes.get(A.MTLS_FAILURE_REASON) for r in found}
    attempt.reasons = sorted(str(reason) for reason in reasons if reason is not None)
    if attempt.credential in HOSTILE_NAMES:
        _check_escaping(attempt, found)
    return True


def match_telemetry(
    attempts: Sequence[Attempt], receiver: otlp_receiver.OtlpReceiver, wait: float
) -> None:
    """Mark each attempt matched or a gap, waiting at most ``wait`` seconds."""
    pending = [a for a in attempts if a.outcome != "error"]
    deadline = time.monotonic() + wait

    while True:
        records = receiver.records()
        pending = [a for a in pending if not _match(a, records)]
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(_TELEMETRY_POLL)

    matched = [a for a in attempts if a.outcome != "error" and a not in pending]
    settle = min(_TELEMETRY_SETTLE, deadline - time.monotonic())
    if matched and settle > 0:
        # Only lists the late records (and checks their subjects): each of these
        # attempts is matched already.
        time.sleep(settle)
        records = receiver.records()
        for attempt in matched:
            _match(attempt, records)

    for attempt in attempts:
        if attempt.outcome != "error":
            attempt.telemetry = "gap" if attempt in pending else "matched"


# --- reports -----------------------------------------------------------------


@dataclass
class Report:
    target: Target
    server_verification: str
    attempts: list[Attempt]
    skipped: list[Skipped]
    not_run: int
    telemetry: Optional[str]

    @property
    def problems(self) -> list[Attempt]:
        return [a for a in self.attempts if a.problem is not None]

    def as_json(self) -> dict[str, object]:
        return {
            "target": str(self.target),
            "server_verification": self.server_verification,
            "telemetry": self.telemetry,
            "attempts": [a.as_json() for a in self.attempts],
            "skipped": [{"credential": s.name, "note": s.note} for s in self.skipped],
            "not_run": self.not_run,
            "summary": {
                "attempts": len(self.attempts),
                "accepted": sum(a.outcome == "accepted" for a in self.attempts),
                "refused": sum(a.outcome == "refused" for a in self.attempts),
                "gaps": sum(a.telemetry == "gap" for a in self.attempts),
                "not_escaped": sum(a.escaping == "not escaped" for a in self.attempts),
                "problems": len(self.problems),
            },
        }


def _telemetry_cell(attempt: Attempt) -> str:
    if attempt.escaping in {"escaped", "not escaped"}:
        return f"{attempt.telemetry}, {attempt.escaping}"

    return attempt.telemetry or "-"


def print_table(report: Report, out: TextIO) -> None:
    print(f"Target: {report.target}", file=out)
    print(f"Server certificate: {report.server_verification}", file=out)
    if report.telemetry:
        print(f"Telemetry: {report.telemetry}", file=out)
    print(file=out)

    header = ("TLS", "credential", "result", "alert", "ms", "port", "telemetry")
    rows = [
        (
            a.tls_version,
            a.credential,
            a.outcome,
            a.alert or "-",
            f"{a.duration_ms:.1f}",
            str(a.client_port or "-"),
            _telemetry_cell(a),
        )
        for a in report.attempts
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip(), file=out
        )

    for skipped in report.skipped:
        print(f"skipped {skipped.name}: {skipped.note}", file=out)
    if report.not_run:
        print(f"{report.not_run} attempt(s) not run: --max-attempts reached", file=out)

    print(file=out)
    for attempt in report.problems:
        print(
            f"PROBLEM TLS {attempt.tls_version} {attempt.credential}: "
            f"{attempt.problem}",
            file=out,
        )
    count = len(report.attempts)
    verdict = (
        "no problems" if not report.problems else f"{len(report.problems)} problem(s)"
    )
    print(f"{count} attempts, {verdict}.", file=out)


def write_junit(report: Report, path: Path) -> None:
    """One testcase per attempt; a failure when the attempt is a problem."""
    suite = ET.Element(
        "testsuite",
        name="otel-mtls probe",
        tests=str(len(report.attempts)),
        failures=str(len(report.problems)),
        skipped=str(len(report.skipped)),
    )
    for attempt in report.attempts:
        case = ET.SubElement(
            suite,
            "testcase",
            classname=f"probe.{report.target.host_port}.tls{attempt.tls_version}",
            name=attempt.credential,
            time=f"{attempt.duration_ms / 1000:.3f}",
        )
        if attempt.problem is not None:
            failure = ET.SubElement(case, "failure", message=attempt.problem)
            failure.text = json.dumps(attempt.as_json())
    for skipped in report.skipped:
        case = ET.SubElement(suite, "testcase", classname="probe", name=skipped.name)
        ET.SubElement(case, "skipped", message=skipped.note)

    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


# --- the command -------------------------------------------------------------


def parse_telemetry_address(text: str) -> tuple[str, int]:
    """``otlp:HOST:PORT`` to the address the probe's receiver listens on.

    Raises:
        ValueError: Another scheme, or no port.
    """
    scheme, _, rest = text.partition(":")
    if scheme != "otlp" or not rest:
        raise ValueError(f"expected otlp:HOST:PORT, not {text!r}")

    target = parse_target(rest)
    return target.host, target.port


def _probe_and_match(
    options: Options, probes: Sequence[Probe], progress: Optional[TextIO]
) -> tuple[list[Attempt], int, Optional[str]]:
    if options.expect_telemetry is None:
        attempts, not_run = run_attempts(options, probes, progress)
        return attempts, not_run, None

    host, port = options.expect_telemetry
    with otlp_receiver.OtlpReceiver(host, port) as receiver:
        attempts, not_run = run_attempts(options, probes, progress)
        match_telemetry(attempts, receiver, options.telemetry_wait)
        where = f"OTLP/HTTP received on {receiver.endpoint}"

    return attempts, not_run, where


def probe(options: Options, progress: Optional[TextIO] = None) -> Report:
    """Make the credentials, try each, and match the telemetry when asked."""
    verification = (
        f"verified against {options.server_ca}"
        if options.server_ca is not None
        else "NOT verified (no --server-ca given)"
    )

    with tempfile.TemporaryDirectory(prefix="otel-mtls-probe-") as directory:
        probes, skipped = build_probes(options, Path(directory))
        attempts, not_run, telemetry = _probe_and_match(options, probes, progress)

    return Report(options.target, verification, attempts, skipped, not_run, telemetry)


def run(
    options: Options,
    *,
    as_json: bool = False,
    junit: Optional[Path] = None,
    out: Optional[TextIO] = None,
) -> int:
    """Run the probe and print the report; 1 when any attempt is a problem."""
    stream = out or sys.stdout
    progress = sys.stderr if sys.stderr.isatty() else None
    report = probe(options, progress)

    if as_json:
        print(json.dumps(report.as_json(), indent=2), file=stream)
    else:
        print_table(report, stream)
    if junit is not None:
        write_junit(report, junit)

    return 1 if report.problems else 0
