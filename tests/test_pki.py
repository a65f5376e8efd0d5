"""The test PKI: certificate contents, files, and real handshakes over loopback."""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
import ssl
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import verification
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from otel_mtls.pki import (
    CertificateAuthority,
    Credential,
    DemoPKI,
    build_demo_pki,
    client_context,
    make_name,
    server_context,
)

_TIMEOUT = 10.0
_TLS12 = ssl.TLSVersion.TLSv1_2
_TLS13 = ssl.TLSVersion.TLSv1_3
_DER = serialization.Encoding.DER


@pytest.fixture(scope="session")
def demo(tmp_path_factory: pytest.TempPathFactory) -> DemoPKI:
    return build_demo_pki(tmp_path_factory.mktemp("pki"))


@dataclass
class _Outcome:
    server_error: OSError | None = None
    client_error: OSError | None = None
    peer_cert: dict[str, Any] | None = None
    client_received: bytes = b""


def _serve_once(
    listener: socket.socket, context: ssl.SSLContext, outcome: _Outcome
) -> None:
    try:
        conn, _ = listener.accept()
    except OSError as exc:
        outcome.server_error = exc
        return

    # wrap_socket detaches conn, so closing conn afterwards only matters when
    # wrapping itself fails.
    with conn:
        conn.settimeout(_TIMEOUT)
        tls = context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with tls:
            try:
                tls.do_handshake()
                outcome.peer_cert = tls.getpeercert()
                tls.sendall(b"ok")
            except OSError as exc:
                outcome.server_error = exc


def _handshake(
    server: ssl.SSLContext, client: ssl.SSLContext, hostname: str = "localhost"
) -> _Outcome:
    """One connection over 127.0.0.1; the server side runs in a thread."""
    outcome = _Outcome()

    with socket.create_server(("127.0.0.1", 0)) as listener:
        listener.settimeout(_TIMEOUT)
        thread = threading.Thread(
            target=_serve_once, args=(listener, server, outcome), daemon=True
        )
        thread.start()
        address = listener.getsockname()[:2]
        try:
            with socket.create_connection(address, timeout=_TIMEOUT) as raw:
                tls = client.wrap_socket(raw, server_hostname=hostname)
                with tls:
                    # Under TLS 1.3 the client learns of a rejection only on read.
                    outcome.client_received = tls.recv(2)
        except OSError as exc:
            outcome.client_error = exc
        thread.join(_TIMEOUT)

    assert not thread.is_alive()
    return outcome


def _peer_common_names(peer: dict[str, Any] | None) -> list[str]:
    assert peer is not None
    return [
        value for rdn in peer["subject"] for key, value in rdn if key == "commonName"
    ]


def _names(cert: x509.Certificate) -> tuple[x509.Name, x509.Name]:
    """Subject and issuer of ``cert``."""
    # cryptography warns while parsing a name longer than RFC 5280 allows.
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Attribute's length", category=UserWarning
        )
        return cert.subject, cert.issuer


def _subject(cert: x509.Certificate) -> x509.Name:
    return _names(cert)[0]


def _common_name(cert: x509.Certificate) -> object:
    return _subject(cert).get_attributes_for_oid(NameOID.COMMON_NAME)[0].value


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def test_credential_fingerprint_subject_and_serial(demo: DemoPKI) -> None:
    valid = demo.clients["valid"]

    der = valid.certificate.public_bytes(_DER)
    assert valid.der == der
    assert valid.sha256 == hashlib.sha256(der).hexdigest().upper()
    assert len(valid.sha256) == 64
    assert ":" not in valid.sha256
    assert valid.subject == "CN=demo-client-valid"
    assert valid.serial_hex == format(valid.certificate.serial_number, "X")
    assert int(valid.serial_hex, 16) == valid.certificate.serial_number


def test_write_sets_paths_and_restricts_the_key(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("write CA")
    credential = ca.issue("alice")

    written = credential.write(tmp_path / "out")

    assert credential.cert_path is None
    assert written.cert_path == tmp_path / "out" / "alice.crt.pem"
    assert written.key_path == tmp_path / "out" / "alice.key.pem"
    assert written.cert_path.read_bytes() == credential.cert_pem
    assert written.key_path.read_bytes() == credential.key_pem
    assert credential.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    if sys.platform != "win32":
        assert written.key_path.stat().st_mode & 0o777 == 0o600


def test_write_tightens_an_existing_key_file(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("write CA")
    key_path = tmp_path / "bob.key.pem"
    key_path.write_bytes(b"old")
    key_path.chmod(0o644)

    written = ca.issue("bob").write(tmp_path)

    assert written.key_path == key_path
    assert key_path.read_bytes() == written.key_pem
    if sys.platform != "win32":
        assert key_path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("usage", "purposes"),
    [
        ("client", [ExtendedKeyUsageOID.CLIENT_AUTH]),
        ("server", [ExtendedKeyUsageOID.SERVER_AUTH]),
        ("both", [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
    ],
)
@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_leaf_extensions(
    usage: str, purposes: list[x509.ObjectIdentifier], key_type: str
) -> None:
    ca = CertificateAuthority.create("extensions CA")

    cert = ca.issue("leaf", usage=usage, key_type=key_type).certificate
    extensions = cert.extensions

    assert extensions.get_extension_for_class(x509.ExtendedKeyUsage).value == (
        x509.ExtendedKeyUsage(purposes)
    )
    constraints = extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert not constraints.value.ca
    key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.digital_signature
    assert key_usage.key_encipherment is (key_type == "rsa")
    assert not key_usage.key_cert_sign
    aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert aki.key_identifier == ca_ski.value.digest
    ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    assert cert.issuer == ca.cert.subject
    assert cert.signature_hash_algorithm is not None
    assert cert.signature_hash_algorithm.name == "sha256"


@pytest.mark.parametrize("key_type", ["ec", "rsa"])
def test_ca_extensions(key_type: str) -> None:
    ca = CertificateAuthority.create("root", key_type=key_type)

    extensions = ca.cert.extensions

    assert extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    key_usage = extensions.get_extension_for_class(x509.KeyUsage).value
    assert key_usage.key_cert_sign
    assert key_usage.crl_sign
    assert ca.cert.issuer == ca.cert.subject
    assert ca.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert ca.sha256 == hashlib.sha256(ca.cert.public_bytes(_DER)).hexdigest().upper()
    assert ca.chain_pem == b""


def test_default_leaf_validity() -> None:
    before = _now()
    cert = CertificateAuthority.create("validity CA").issue("leaf").certificate
    after = _now()

    hour = datetime.timedelta(hours=1)
    month = datetime.timedelta(days=30)
    second = datetime.timedelta(seconds=1)
    assert before - hour - second <= cert.not_valid_before_utc <= after - hour
    assert before + month - second <= cert.not_valid_after_utc <= after + month


def test_server_chain_verifies_with_cryptography(demo: DemoPKI) -> None:
    builder = verification.PolicyBuilder().store(verification.Store([demo.ca.cert]))

    for name in (
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ):
        verifier = builder.time(_now()).build_server_verifier(name)
        chain = verifier.verify(demo.server.certificate, [])
        assert chain == [demo.server.certificate, demo.ca.cert]


def test_client_with_san_verifies_with_cryptography(demo: DemoPKI) -> None:
    client = demo.ca.issue("mailer", san_emails=["mailer@example.com"])
    builder = verification.PolicyBuilder().store(verification.Store([demo.ca.cert]))

    verified = (
        builder.time(_now()).build_client_verifier().verify(client.certificate, [])
    )

    assert verified.subjects == [x509.RFC822Name("mailer@example.com")]


def test_untrusted_server_fails_cryptography_verification(demo: DemoPKI) -> None:
    stranger = demo.untrusted_ca.issue(
        "stranger", san_dns=["localhost"], usage="server"
    )
    builder = verification.PolicyBuilder().store(verification.Store([demo.ca.cert]))
    verifier = builder.time(_now()).build_server_verifier(x509.DNSName("localhost"))

    with pytest.raises(verification.VerificationError):
        verifier.verify(stranger.certificate, [])


def test_intermediate_chain(tmp_path: Path) -> None:
    root = CertificateAuthority.create("root CA")
    intermediate = CertificateAuthority.create("issuing CA", parent=root)
    server = intermediate.issue("server", san_dns=["localhost"], usage="server").write(
        tmp_path
    )
    bare = intermediate.issue("bare", include_chain=False)
    root_path = root.write(tmp_path / "root.crt.pem")

    chain = x509.load_pem_x509_certificates(server.cert_pem)
    assert chain == [server.certificate, intermediate.cert]
    assert len(x509.load_pem_x509_certificates(bare.cert_pem)) == 1
    assert intermediate.chain_pem == intermediate.cert_pem
    assert intermediate.cert.issuer == root.cert.subject

    builder = verification.PolicyBuilder().store(verification.Store([root.cert]))
    verifier = builder.time(_now()).build_server_verifier(x509.DNSName("localhost"))
    assert verifier.verify(chain[0], chain[1:]) == [*chain, root.cert]

    # The server sends the intermediate, so a client trusting only the root connects.
    outcome = _handshake(
        server_context(server, root_path, verify=ssl.CERT_NONE),
        client_context(root_path, None),
    )
    assert outcome.client_error is None
    assert outcome.server_error is None
    assert outcome.client_received == b"ok"


def test_demo_pki_layout(demo: DemoPKI) -> None:
    assert list(demo.clients) == [
        "valid",
        "expired",
        "not_yet_valid",
        "untrusted",
        "server_only",
    ]
    assert demo.ca_path.read_bytes() == demo.ca.cert_pem
    assert demo.untrusted_ca_path.read_bytes() == demo.untrusted_ca.cert_pem
    assert _common_name(demo.ca.cert) == "otel-mtls demo CA"
    assert _common_name(demo.untrusted_ca.cert) == "otel-mtls untrusted CA"

    for role, credential in demo.clients.items():
        expected = "demo-client-" + role.replace("_", "-")
        assert _common_name(credential.certificate) == expected
        assert credential.cert_path is not None
        assert credential.cert_path.parent == demo.directory
        assert credential.key_path is not None
        assert credential.key_path.is_file()

    server = demo.server.certificate
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    assert san.value.get_values_for_type(x509.DNSName) == ["localhost"]
    assert san.value.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1")
    ]
    assert _common_name(server) == "localhost"

    now = _now()
    expired = demo.clients["expired"].certificate
    assert expired.not_valid_after_utc < now
    not_yet_valid = demo.clients["not_yet_valid"].certificate
    assert not_yet_valid.not_valid_before_utc > now
    untrusted = demo.clients["untrusted"].certificate
    assert untrusted.issuer == demo.untrusted_ca.cert.subject
    eku = demo.clients["server_only"].certificate.extensions.get_extension_for_class(
        x509.ExtendedKeyUsage
    )
    assert list(eku.value) == [ExtendedKeyUsageOID.SERVER_AUTH]


@pytest.mark.parametrize("version", [_TLS12, _TLS13])
def test_valid_client_is_accepted(demo: DemoPKI, version: ssl.TLSVersion) -> None:
    outcome = _handshake(
        server_context(demo.server, demo.ca_path, version=version),
        client_context(demo.ca_path, demo.clients["valid"], version=version),
    )

    assert outcome.server_error is None
    assert outcome.client_error is None
    assert outcome.client_received == b"ok"
    assert _peer_common_names(outcome.peer_cert) == ["demo-client-valid"]


def test_client_reaches_server_by_ip(demo: DemoPKI) -> None:
    outcome = _handshake(
        server_context(demo.server, demo.ca_path),
        client_context(demo.ca_path, demo.clients["valid"]),
        hostname="127.0.0.1",
    )

    assert outcome.client_error is None
    assert outcome.client_received == b"ok"


@pytest.mark.parametrize(
    ("role", "verify_code"),
    [
        ("untrusted", 20),  # unable to get local issuer certificate
        ("expired", 10),  # certificate has expired
        ("not_yet_valid", 9),  # certificate is not yet valid
        ("server_only", 26),  # unsupported certificate purpose
    ],
)
def test_bad_clients_are_rejected(demo: DemoPKI, role: str, verify_code: int) -> None:
    # Pinned to TLS 1.2 so the server's verdict surfaces inside its handshake.
    outcome = _handshake(
        server_context(demo.server, demo.ca_path, version=_TLS12),
        client_context(demo.ca_path, demo.clients[role], version=_TLS12),
    )

    assert isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert outcome.server_error.verify_code == verify_code
    assert isinstance(outcome.client_error, ssl.SSLError)
    assert outcome.peer_cert is None


def test_client_without_certificate_is_rejected(demo: DemoPKI) -> None:
    outcome = _handshake(
        server_context(demo.server, demo.ca_path, version=_TLS12),
        client_context(demo.ca_path, None, version=_TLS12),
    )

    assert isinstance(outcome.server_error, ssl.SSLError)
    assert not isinstance(outcome.server_error, ssl.SSLCertVerificationError)
    assert isinstance(outcome.client_error, ssl.SSLError)


def test_server_name_is_checked(demo: DemoPKI) -> None:
    outcome = _handshake(
        server_context(demo.server, demo.ca_path, verify=ssl.CERT_NONE),
        client_context(demo.ca_path, None),
        hostname="elsewhere.test",
    )

    assert isinstance(outcome.client_error, ssl.SSLCertVerificationError)
    assert outcome.client_error.verify_code == 62  # hostname mismatch


def test_hostname_check_can_be_disabled(demo: DemoPKI) -> None:
    context = client_context(demo.ca_path, None, check_hostname=False)

    outcome = _handshake(
        server_context(demo.server, demo.ca_path, verify=ssl.CERT_NONE),
        context,
        hostname="elsewhere.test",
    )

    assert context.verify_mode == ssl.CERT_REQUIRED
    assert outcome.client_error is None
    assert outcome.client_received == b"ok"


@pytest.mark.parametrize(
    "common_name",
    [
        pytest.param("line one\nline two", id="newline"),
        pytest.param("Zoë Ångström 测试 🔐", id="non-ascii"),
        pytest.param("x" * 8192, id="8kb"),
    ],
)
def test_unusual_common_names_round_trip(
    demo: DemoPKI, tmp_path: Path, common_name: str
) -> None:
    credential = demo.ca.issue("odd", common_name=common_name).write(tmp_path)
    assert credential.cert_path is not None
    assert credential.key_path is not None

    loaded = x509.load_pem_x509_certificate(credential.cert_path.read_bytes())
    assert _common_name(loaded) == common_name
    assert credential.subject == _subject(loaded).rfc4514_string()
    ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(
        credential.cert_path, credential.key_path
    )

    outcome = _handshake(
        server_context(demo.server, demo.ca_path),
        client_context(demo.ca_path, credential),
    )
    assert outcome.server_error is None
    assert _peer_common_names(outcome.peer_cert) == [common_name]


def test_long_named_authority_issues(tmp_path: Path) -> None:
    long_name = "authority " * 20
    root = CertificateAuthority.create(long_name)
    intermediate = CertificateAuthority.create(long_name + "2", parent=root)

    leaf = intermediate.issue("leaf")

    assert _common_name(root.cert) == long_name
    assert _names(leaf.certificate) == (make_name("leaf"), intermediate.subject)
    assert _names(intermediate.cert)[1] == root.subject
    assert x509.load_pem_x509_certificates(leaf.cert_pem)[1] == intermediate.cert


def test_subject_can_be_any_name(demo: DemoPKI) -> None:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc."),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "payments"),
            x509.NameAttribute(NameOID.COMMON_NAME, "svc+1"),
        ]
    )

    credential = demo.ca.issue("named", subject=subject, common_name="ignored")

    assert credential.certificate.subject == subject
    assert credential.subject == "CN=svc\\+1,OU=payments,O=Example\\, Inc."


def test_empty_subject_makes_san_critical(demo: DemoPKI) -> None:
    credential = demo.ca.issue("anonymous", subject=x509.Name([]), san_dns=["a.test"])

    extensions = credential.certificate.extensions
    assert extensions.get_extension_for_class(x509.SubjectAlternativeName).critical
    assert credential.subject == ""


def test_make_name_keeps_short_names_validated() -> None:
    assert make_name("short").rfc4514_string() == "CN=short"
    assert make_name("é" * 40).rfc4514_string() == "CN=" + "é" * 40

    with pytest.raises(ValueError, match="length"):
        x509.NameAttribute(NameOID.COMMON_NAME, "x" * 65)


def test_crl_lists_the_revoked_serial(demo: DemoPKI, tmp_path: Path) -> None:
    revoked = demo.ca.issue("revoked").write(tmp_path)
    kept = demo.ca.issue("kept").write(tmp_path)
    last_update = _now() - datetime.timedelta(minutes=5)
    next_update = _now() + datetime.timedelta(hours=2)

    pem = demo.ca.crl([revoked], last_update=last_update, next_update=next_update)
    crl = x509.load_pem_x509_crl(pem)

    assert crl.is_signature_valid(demo.ca.key.public_key())
    assert crl.issuer == demo.ca.cert.subject
    assert crl.last_update_utc == last_update.replace(microsecond=0)
    assert crl.next_update_utc == next_update.replace(microsecond=0)
    entry = crl.get_revoked_certificate_by_serial_number(
        revoked.certificate.serial_number
    )
    assert entry is not None
    assert format(entry.serial_number, "X") == revoked.serial_hex
    assert (
        crl.get_revoked_certificate_by_serial_number(kept.certificate.serial_number)
        is None
    )
    assert len(crl) == 1

    # OpenSSL honours it too: the revoked client fails with "certificate revoked".
    crl_path = tmp_path / "ca.crl.pem"
    crl_path.write_bytes(demo.ca.crl([revoked]))
    results = {}
    for credential in (revoked, kept):
        server = server_context(demo.server, demo.ca_path, version=_TLS12)
        server.load_verify_locations(cafile=crl_path)
        server.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        results[credential.name] = _handshake(
            server, client_context(demo.ca_path, credential, version=_TLS12)
        )
    rejected = results["revoked"].server_error
    assert isinstance(rejected, ssl.SSLCertVerificationError)
    assert rejected.verify_code == 23
    assert results["kept"].server_error is None


def test_crl_numbers_increase(demo: DemoPKI) -> None:
    ca = CertificateAuthority.create("numbering CA")

    numbers = [
        x509.load_pem_x509_crl(ca.crl([]))
        .extensions.get_extension_for_class(x509.CRLNumber)
        .value.crl_number
        for _ in range(3)
    ]

    assert numbers == [1, 2, 3]


@pytest.mark.parametrize("key_type", ["rsa", "ec"])
def test_sha1_signed_certificates_verify_with_the_issuer_key(key_type: str) -> None:
    authority = CertificateAuthority.create("sha1 test CA", key_type=key_type)
    credential = authority.issue("weak", hash_alg="sha1", key_type=key_type)

    cert = credential.certificate
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA1)
    public_key = authority.cert.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(
            cert.signature,
            cert.tbs_certificate_bytes,
            padding.PKCS1v15(),
            hashes.SHA1(),
        )
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA1())
        )


@pytest.mark.parametrize("hash_alg", ["sha384", "sha512"])
def test_other_hashes(demo: DemoPKI, hash_alg: str) -> None:
    credential = demo.ca.issue("strong", hash_alg=hash_alg)

    algorithm = credential.certificate.signature_hash_algorithm
    assert algorithm is not None
    assert algorithm.name == hash_alg


def test_unknown_options_raise(demo: DemoPKI) -> None:
    with pytest.raises(ValueError, match="key_type must be"):
        demo.ca.issue("bad", key_type="dsa")
    with pytest.raises(ValueError, match="usage must be"):
        demo.ca.issue("bad", usage="email")
    with pytest.raises(ValueError, match="hash_alg must be"):
        demo.ca.issue("bad", hash_alg="md5")
    with pytest.raises(ValueError, match="key_type must be"):
        CertificateAuthority.create("bad", key_type="ed448")


def test_contexts(demo: DemoPKI) -> None:
    server = server_context(
        demo.server, demo.ca_path, verify=ssl.CERT_OPTIONAL, version=_TLS13
    )
    client = client_context(demo.ca_path, demo.clients["valid"], version=_TLS12)
    default = client_context(demo.ca_path, None)

    assert server.verify_mode == ssl.CERT_OPTIONAL
    assert server.minimum_version == server.maximum_version == _TLS13
    assert client.minimum_version == client.maximum_version == _TLS12
    assert client.check_hostname
    assert default.maximum_version == ssl.TLSVersion.MAXIMUM_SUPPORTED


def test_contexts_need_written_credentials(demo: DemoPKI) -> None:
    in_memory = Credential("memory", demo.server.cert_pem, demo.server.key_pem)

    with pytest.raises(ValueError, match="write"):
        server_context(in_memory, demo.ca_path)
    with pytest.raises(ValueError, match="write"):
        client_context(demo.ca_path, in_memory)
