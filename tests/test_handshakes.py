"""Real handshakes over loopback, blocking sockets: every path, every local reason."""

from __future__ import annotations

import datetime
import socket
import ssl
import sys
import threading
from pathlib import Path
from typing import Any, Optional

import pytest
from opentelemetry.trace import StatusCode

from otel_mtls import attributes as A
from otel_mtls import pki as pki_module
from otel_mtls.pki import Credential, DemoPKI

from .conftest import (
    TIMEOUT,
    Client,
    Result,
    Telemetry,
    instrumented,
    serve_once,
    tls_client,
)

# A failed client handshake shows the server's chain through the stdlib from 3.10
# on; before that only the message callback (capture_client_messages) can.
HAS_UNVERIFIED_CHAIN = sys.version_info >= (3, 10)

V13 = ssl.TLSVersion.TLSv1_3
V12 = ssl.TLSVersion.TLSv1_2

# credential -> (server reason, verify code, alert the server sends per version)
EXPECTED: dict[str, tuple[Optional[str], Optional[int], dict[ssl.TLSVersion, str]]] = {
    "valid": (None, None, {}),
    "expired": (
        "certificate_expired",
        10,
        {V13: "certificate_expired", V12: "certificate_expired"},
    ),
    "not_yet_valid": (
        "certificate_not_yet_valid",
        9,
        {V13: "bad_certificate", V12: "bad_certificate"},
    ),
    "untrusted": ("unknown_ca", 20, {V13: "unknown_ca", V12: "unknown_ca"}),
    "server_only": (
        "unsupported_purpose",
        26,
        {V13: "unsupported_certificate", V12: "unsupported_certificate"},
    ),
    "none": (
        "no_client_certificate",
        None,
        {V13: "certificate_required", V12: "handshake_failure"},
    ),
}


def _credential(pki: DemoPKI, name: str) -> Optional[Credential]:
    return None if name == "none" else pki.clients[name]


@pytest.mark.parametrize("version", [V13, V12], ids=["tls13", "tls12"])
@pytest.mark.parametrize("mode", ["eager", "explicit", "lazy"])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_server_records_each_client_credential(
    telemetry: Telemetry,
    pki: DemoPKI,
    name: str,
    mode: str,
    version: ssl.TLSVersion,
) -> None:
    credential = _credential(pki, name)
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=version)
    client_ctx = pki_module.client_context(pki.ca_path, credential, version=version)

    result = serve_once(server_ctx, tls_client(client_ctx), mode=mode)

    reason, verify_code, alerts = EXPECTED[name]
    span = telemetry.span("server")
    attrs = dict(span.attributes or {})

    assert span.name == "TLS server handshake"
    assert attrs[A.CLIENT_ADDRESS] == "127.0.0.1"
    assert attrs[A.CLIENT_PORT] == result.client_port
    if mode == "lazy":
        assert attrs[A.MTLS_LAZY] is True
    else:
        assert A.MTLS_LAZY not in attrs
    assert attrs[A.MTLS_CLIENT_CERT_REQUESTED] is True

    if credential is not None:
        # The certificate is recorded whether it was accepted or rejected.
        assert attrs[A.TLS_CLIENT_HASH_SHA256] == credential.sha256
        assert attrs[A.TLS_CLIENT_SUBJECT] == credential.subject
        assert attrs[A.MTLS_CLIENT_SERIAL] == credential.serial_hex
        assert attrs[A.TLS_CLIENT_ISSUER] == (
            "CN=otel-mtls untrusted CA"
            if name == "untrusted"
            else "CN=otel-mtls demo CA"
        )
        assert attrs[A.MTLS_CLIENT_CERT_PRESENTED] is True
    else:
        assert A.TLS_CLIENT_HASH_SHA256 not in attrs
        assert attrs[A.MTLS_CLIENT_CERT_PRESENTED] is False

    if reason is None:
        assert result.server == "ok" and result.client_data == b"pong"
        assert attrs[A.MTLS_OUTCOME] == "success"
        assert attrs[A.TLS_ESTABLISHED] is True
        assert attrs[A.TLS_PROTOCOL_VERSION] == ("1.3" if version == V13 else "1.2")
        assert attrs[A.MTLS_PEER_CERT_SOURCE] == "verified"
        assert span.status.status_code is StatusCode.UNSET
        assert telemetry.logs() == []
        return

    assert isinstance(result.server, ssl.SSLError)
    assert attrs[A.TLS_PROTOCOL_VERSION] == ("1.3" if version == V13 else "1.2")
    assert attrs[A.MTLS_OUTCOME] == "failure"
    assert attrs[A.TLS_ESTABLISHED] is False
    assert attrs[A.MTLS_FAILURE_REASON] == reason
    assert attrs.get(A.MTLS_VERIFY_CODE) == verify_code
    assert attrs[A.MTLS_ALERT_SENT] == alerts[version]
    assert attrs[A.ERROR_TYPE] == (
        "ssl.SSLCertVerificationError" if verify_code else "ssl.SSLError"
    )
    assert span.status.status_code is StatusCode.ERROR
    if credential is not None:
        assert attrs[A.MTLS_PEER_CERT_SOURCE] == "handshake_message"

    logs = [log for log in telemetry.logs() if log.attributes[A.MTLS_SIDE] == "server"]
    assert len(logs) == 1
    log = logs[0]
    assert log.severity_text == "WARN"
    assert log.attributes[A.MTLS_FAILURE_REASON] == reason
    assert log.trace_id == span.context.trace_id
    assert log.span_id == span.context.span_id
    assert "\n" not in str(log.body)
    assert str(log.body).startswith(f"TLS server handshake failed: {reason}")


@pytest.mark.parametrize("observed", [False, True], ids=["default", "messages"])
@pytest.mark.parametrize("version", [V13, V12], ids=["tls13", "tls12"])
@pytest.mark.parametrize("name", [n for n in EXPECTED if n != "valid"])
def test_client_learns_its_certificate_was_rejected(
    pki: DemoPKI, name: str, version: ssl.TLSVersion, observed: bool
) -> None:
    with instrumented(capture_client_messages=observed) as telemetry:
        _client_rejected(telemetry, pki, name, version, observed)


def _client_rejected(
    telemetry: Telemetry,
    pki: DemoPKI,
    name: str,
    version: ssl.TLSVersion,
    observed: bool,
) -> None:
    credential = _credential(pki, name)
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=version)
    client_ctx = pki_module.client_context(pki.ca_path, credential, version=version)

    result = serve_once(server_ctx, tls_client(client_ctx), mode="explicit")

    _, _, alerts = EXPECTED[name]
    span = telemetry.span("client")
    attrs = dict(span.attributes or {})

    assert isinstance(result.client, ssl.SSLError)
    assert span.name == "TLS client handshake localhost"
    assert attrs[A.MTLS_FAILURE_REASON] == "peer_rejected_certificate"
    assert attrs[A.MTLS_ALERT_RECEIVED] == alerts[version]
    if observed or HAS_UNVERIFIED_CHAIN or version == V13:
        assert attrs[A.TLS_SERVER_HASH_SHA256] == pki.server.sha256
    assert attrs[A.SERVER_PORT] == result.port
    if observed:
        assert attrs[A.MTLS_CLIENT_CERT_PRESENTED] is (credential is not None)
        assert attrs[A.MTLS_CLIENT_CERT_REQUESTED] is True
    else:
        # Without the messages, the certificate shown is the one configured.
        assert A.MTLS_CLIENT_CERT_PRESENTED not in attrs
        assert A.MTLS_CLIENT_CERT_REQUESTED not in attrs
    if credential is not None:
        assert attrs[A.TLS_CLIENT_HASH_SHA256] == credential.sha256
        assert attrs[A.TLS_CLIENT_SUBJECT] == credential.subject

    # TLS 1.3: the handshake returned and the alert came with the first read.
    assert attrs.get(A.MTLS_LATE_FAILURE, False) is (version == V13)


@pytest.mark.parametrize("observed", [False, True], ids=["default", "messages"])
@pytest.mark.parametrize("version", [V13, V12], ids=["tls13", "tls12"])
def test_client_records_rejected_server_certificate(
    pki: DemoPKI, version: ssl.TLSVersion, observed: bool
) -> None:
    if not observed and sys.version_info < (3, 10):
        pytest.skip("the unverified chain needs Python 3.10; 3.9 needs messages")
    with instrumented(capture_client_messages=observed) as telemetry:
        _server_rejected(telemetry, pki, version, observed)


def _server_rejected(
    telemetry: Telemetry, pki: DemoPKI, version: ssl.TLSVersion, observed: bool
) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=version)
    # The client trusts only the other CA, so it rejects the server.
    client_ctx = pki_module.client_context(
        pki.untrusted_ca_path, pki.clients["valid"], version=version
    )

    result = serve_once(server_ctx, tls_client(client_ctx))

    client = dict(telemetry.span("client").attributes or {})
    server = dict(telemetry.span("server").attributes or {})

    assert isinstance(result.client, ssl.SSLCertVerificationError)
    assert client[A.MTLS_FAILURE_REASON] == "unknown_ca"
    # OpenSSL completes the server's chain from its trust store, so the client
    # sees the (untrusted, self-signed) demo root in the chain: code 19.
    assert client[A.MTLS_VERIFY_CODE] == 19
    assert client[A.MTLS_SERVER_CHAIN_LENGTH] == 2
    assert client[A.TLS_SERVER_HASH_SHA256] == pki.server.sha256
    assert client[A.TLS_SERVER_SUBJECT] == "CN=localhost"
    assert client[A.MTLS_SERVER_SERIAL] == pki.server.serial_hex
    assert client[A.MTLS_SERVER_SANS] == ("DNS:localhost", "IP:127.0.0.1")
    if observed:
        assert client[A.MTLS_PEER_CERT_SOURCE] == "handshake_message"
        assert client[A.MTLS_ALERT_SENT] == "unknown_ca"
    else:
        assert client[A.MTLS_PEER_CERT_SOURCE] == "unverified_chain"
    assert server[A.MTLS_FAILURE_REASON] == "peer_rejected_certificate"
    assert server[A.MTLS_ALERT_RECEIVED] == "unknown_ca"


def test_hostname_mismatch(telemetry: Telemetry, pki: DemoPKI) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    client_ctx = pki_module.client_context(pki.ca_path, pki.clients["valid"])

    serve_once(server_ctx, tls_client(client_ctx, server_hostname="other.example"))

    attrs = dict(telemetry.span("client").attributes or {})
    assert attrs[A.MTLS_FAILURE_REASON] == "hostname_mismatch"
    assert attrs[A.MTLS_VERIFY_CODE] == 62
    assert attrs[A.SERVER_ADDRESS] == "other.example"
    if HAS_UNVERIFIED_CHAIN:
        assert attrs[A.TLS_SERVER_HASH_SHA256] == pki.server.sha256


def _crl_context(pki: DemoPKI, crl_file: Optional[Path]) -> ssl.SSLContext:
    ctx = pki_module.server_context(pki.server, pki.ca_path)
    ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
    if crl_file is not None:
        ctx.load_verify_locations(cafile=str(crl_file))
    return ctx


@pytest.mark.parametrize(
    ("case", "reason", "code"),
    [
        ("revoked", "certificate_revoked", 23),
        ("no_crl", "crl_unavailable", 3),
        ("expired_crl", "crl_expired", 12),
    ],
)
def test_crl_reasons(
    telemetry: Telemetry,
    pki: DemoPKI,
    tmp_path: Path,
    case: str,
    reason: str,
    code: int,
) -> None:
    revoked = pki.ca.issue("revoked", common_name="revoked-client").write(tmp_path)
    now = datetime.datetime.now(datetime.timezone.utc)
    crl_file: Optional[Path] = None
    if case == "revoked":
        crl_file = tmp_path / "crl.pem"
        crl_file.write_bytes(pki.ca.crl([revoked]))
    elif case == "expired_crl":
        crl_file = tmp_path / "crl.pem"
        crl_file.write_bytes(
            pki.ca.crl(
                [],
                last_update=now - datetime.timedelta(days=3),
                next_update=now - datetime.timedelta(days=1),
            )
        )

    client_ctx = pki_module.client_context(pki.ca_path, revoked)
    serve_once(_crl_context(pki, crl_file), tls_client(client_ctx))

    attrs = dict(telemetry.span("server").attributes or {})
    assert attrs[A.MTLS_FAILURE_REASON] == reason
    assert attrs[A.MTLS_VERIFY_CODE] == code
    assert attrs[A.TLS_CLIENT_HASH_SHA256] == revoked.sha256
    assert attrs[A.MTLS_CLIENT_SERIAL] == revoked.serial_hex


def test_protocol_mismatch(telemetry: Telemetry, pki: DemoPKI) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=V13)
    client_ctx = pki_module.client_context(pki.ca_path, pki.clients["valid"])
    client_ctx.maximum_version = V12

    serve_once(server_ctx, tls_client(client_ctx))

    server = dict(telemetry.span("server").attributes or {})
    client = dict(telemetry.span("client").attributes or {})
    assert server[A.MTLS_FAILURE_REASON] == "protocol_mismatch"
    assert server[A.MTLS_ALERT_SENT] == "protocol_version"
    assert client[A.MTLS_FAILURE_REASON] == "protocol_mismatch"
    assert client[A.MTLS_ALERT_RECEIVED] == "protocol_version"


def test_no_shared_cipher(telemetry: Telemetry, pki: DemoPKI) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=V12)
    server_ctx.set_ciphers("ECDHE-ECDSA-AES128-GCM-SHA256")
    client_ctx = pki_module.client_context(
        pki.ca_path, pki.clients["valid"], version=V12
    )
    client_ctx.set_ciphers("ECDHE-ECDSA-AES256-GCM-SHA384")

    serve_once(server_ctx, tls_client(client_ctx))

    server = dict(telemetry.span("server").attributes or {})
    client = dict(telemetry.span("client").attributes or {})
    assert server[A.MTLS_FAILURE_REASON] == "no_shared_cipher"
    assert server[A.MTLS_OPENSSL_REASON] == "NO_SHARED_CIPHER"
    assert client[A.MTLS_FAILURE_REASON] == "no_shared_cipher"
    assert client[A.MTLS_ALERT_RECEIVED] == "handshake_failure"


def _raw_client(payload: bytes) -> Client:
    def run(port: int, result: Result) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            result.client_port = raw.getsockname()[1]
            if payload:
                raw.sendall(payload)
            return b""

    return run


@pytest.mark.parametrize("mode", ["eager", "lazy"])
@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("plain_http", "not_tls"),
        ("connect_close", "no_client_hello"),
        ("hello_then_close", "connection_closed"),
    ],
)
def test_abandoned_and_foreign_connections(
    telemetry: Telemetry, pki: DemoPKI, case: str, reason: str, mode: str
) -> None:
    payload = b""
    if case == "plain_http":
        payload = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n"
    elif case == "hello_then_close":
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        ctx = pki_module.client_context(pki.ca_path, pki.clients["valid"])
        obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        payload = outgoing.read()
        telemetry.clear()

    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    result = serve_once(server_ctx, _raw_client(payload), mode=mode)

    attrs = dict(telemetry.span("server").attributes or {})
    assert attrs[A.MTLS_FAILURE_REASON] == reason
    assert attrs[A.CLIENT_PORT] == result.client_port


def test_timeout(telemetry: Telemetry, pki: DemoPKI) -> None:
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)

    def silent(port: int, result: Result) -> bytes:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as raw:
            result.client_port = raw.getsockname()[1]
            raw.settimeout(2.0)
            # Say nothing until the server gives up, then see it close.
            return raw.recv(10)

    serve_once(server_ctx, silent, mode="explicit", server_timeout=0.2)

    attrs = dict(telemetry.span("server").attributes or {})
    assert attrs[A.MTLS_FAILURE_REASON] == "timeout"


def test_tls13_client_reading_first_is_confirmed_by_that_read(
    telemetry: Telemetry, pki: DemoPKI
) -> None:
    """A lazy client whose first call is a read learns the verdict in it."""
    server_ctx = pki_module.server_context(pki.server, pki.ca_path)
    client_ctx = pki_module.client_context(pki.ca_path, pki.clients["valid"])
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)

    def banner_server() -> None:
        raw, _ = listener.accept()
        raw.settimeout(TIMEOUT)
        with server_ctx.wrap_socket(raw, server_side=True) as tls:
            tls.sendall(b"banner")
            tls.recv(1)

    thread = threading.Thread(target=banner_server, daemon=True)
    thread.start()
    raw = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
    with client_ctx.wrap_socket(
        raw, server_hostname="localhost", do_handshake_on_connect=False
    ) as tls:
        assert tls.recv(6) == b"banner"
        # Recorded now, while the connection is still open.
        attrs = dict(telemetry.span("client").attributes or {})
        tls.sendall(b"x")

    thread.join(TIMEOUT)
    listener.close()
    assert attrs[A.MTLS_OUTCOME] == "success"
    assert attrs[A.TLS_ESTABLISHED] is True
    assert attrs[A.MTLS_LAZY] is True
    assert attrs[A.TLS_SERVER_HASH_SHA256] == pki.server.sha256


@pytest.mark.parametrize(
    ("options", "code"),
    [
        ({"hash_alg": "sha1"}, 68),
        ({"key_type": "rsa", "rsa_bits": 1024}, 66),
    ],
    ids=["sha1_signature", "rsa_1024"],
)
def test_weak_client_certificates(
    telemetry: Telemetry,
    pki: DemoPKI,
    tmp_path: Path,
    options: dict[str, Any],
    code: int,
) -> None:
    credential = pki.ca.issue("weak", **options).write(tmp_path)
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=V12)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.load_verify_locations(pki.ca_path)
    # The client presents the weak certificate on purpose.
    client_ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    client_ctx.load_cert_chain(str(credential.cert_path), str(credential.key_path))

    serve_once(server_ctx, tls_client(client_ctx))

    attrs = dict(telemetry.span("server").attributes or {})
    assert attrs[A.MTLS_FAILURE_REASON] == "weak_certificate"
    assert attrs[A.MTLS_VERIFY_CODE] == code
    assert attrs[A.TLS_CLIENT_HASH_SHA256] == credential.sha256
