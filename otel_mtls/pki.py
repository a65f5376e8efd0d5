"""A throw-away public key infrastructure for tests, benchmarks and the demo.

Everything here is generated in memory with ``cryptography`` and is only as safe as
the directory it is written to: the keys are unencrypted and the validity windows are
chosen for tests, not for production.

Example::

    ca = CertificateAuthority.create("test CA")
    server = ca.issue("server", san_dns=["localhost"], usage="server")
    client = ca.issue("client").write(tmp_path)
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import ipaddress
import os
import ssl
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Final, Union

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "Credential",
    "DemoPKI",
    "PrivateKey",
    "build_demo_pki",
    "client_context",
    "make_name",
    "server_context",
]

# A type alias is evaluated at import time, so it has to be typing.Union on 3.9.
PrivateKey = Union[ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey]

_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}
_USAGES: dict[str, tuple[x509.ObjectIdentifier, ...]] = {
    "client": (ExtendedKeyUsageOID.CLIENT_AUTH,),
    "server": (ExtendedKeyUsageOID.SERVER_AUTH,),
    "both": (ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH),
}
# RFC 5280's upper bound for a common name, which cryptography enforces by default.
_COMMON_NAME_MAX_BYTES = 64
_LEAF_BACKDATE = datetime.timedelta(hours=1)
_LEAF_LIFETIME = datetime.timedelta(days=30)
# CAs get a wide window so back- or forward-dated leaves still nest inside it.
_CA_BACKDATE = datetime.timedelta(days=365)
_CA_LIFETIME = datetime.timedelta(days=3650)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


@contextlib.contextmanager
def _long_names_allowed() -> Iterator[None]:
    """Silence cryptography's warning about over-long name attributes.

    cryptography warns for every such attribute it builds, whether built here
    with validation off or while parsing a certificate's subject, and test suites
    that turn warnings into errors would fail on names that are long on purpose.
    Like any ``catch_warnings`` block this is not thread-safe, so it is kept short.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings(
            "ignore", message="Attribute's length", category=UserWarning
        )
        yield


def make_name(common_name: str) -> x509.Name:
    """Build a subject holding only ``common_name``, of any length.

    Names longer than RFC 5280 allows are kept on purpose: they exercise how the
    instrumentation copes with hostile certificates.
    """
    if len(common_name.encode("utf-8")) <= _COMMON_NAME_MAX_BYTES:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    with _long_names_allowed():
        attribute = x509.NameAttribute(
            NameOID.COMMON_NAME, common_name, _validate=False
        )

    return x509.Name([attribute])


def _generate_key(key_type: str, rsa_bits: int) -> PrivateKey:
    if key_type == "ec":
        return ec.generate_private_key(ec.SECP256R1())
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=rsa_bits)
    raise ValueError(f"key_type must be 'ec' or 'rsa', not {key_type!r}")


def _hash_algorithm(hash_alg: str) -> hashes.HashAlgorithm:
    try:
        return _HASHES[hash_alg]()
    except KeyError:
        raise ValueError(
            f"hash_alg must be one of {sorted(_HASHES)}, not {hash_alg!r}"
        ) from None


def _key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _sha256_hex(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest().upper()


def _sign(
    builder: x509.CertificateBuilder, key: PrivateKey, algorithm: hashes.HashAlgorithm
) -> x509.Certificate:
    if isinstance(algorithm, hashes.SHA1):
        # cryptography refuses to build SHA-1 certificates; weak-signature probes
        # need one, so it is signed with SHA-256 and then re-signed.
        return _resign_sha1(builder.sign(key, hashes.SHA256()), key)

    return builder.sign(key, algorithm)  # type: ignore[arg-type]


# The AlgorithmIdentifier DER of the SHA-1 signature algorithms (RFC 3279).
_SHA1_WITH_RSA: Final = bytes.fromhex("300d06092a864886f70d0101050500")
_ECDSA_WITH_SHA1: Final = bytes.fromhex("300906072a8648ce3d0401")


def _der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])

    body = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _der(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + _der_length(len(content)) + content


def _der_children(data: bytes) -> list[bytes]:
    """The TLVs inside one constructed DER value (whole TLVs, not contents)."""
    header = 2 + (data[1] & 0x7F if data[1] & 0x80 else 0)
    children, pos = [], header
    while pos < len(data):
        first = data[pos + 1]
        size, skip = first, 2
        if first & 0x80:
            count = first & 0x7F
            size = int.from_bytes(data[pos + 2 : pos + 2 + count], "big")
            skip = 2 + count
        children.append(data[pos : pos + skip + size])
        pos += skip + size

    return children


def _resign_sha1(cert: x509.Certificate, key: PrivateKey) -> x509.Certificate:
    """The same certificate, with its signature algorithm and signature in SHA-1.

    The TBSCertificate names the signature algorithm too (RFC 5280 4.1.2.3), so
    it is rebuilt with the SHA-1 identifier before being signed.
    """
    tbs_parts = _der_children(cert.tbs_certificate_bytes)
    index = 2 if tbs_parts[0][0] == 0xA0 else 1
    rsa_key = isinstance(key, rsa.RSAPrivateKey)
    algorithm = _SHA1_WITH_RSA if rsa_key else _ECDSA_WITH_SHA1
    tbs_parts[index] = algorithm
    tbs = _der(0x30, b"".join(tbs_parts))
    sha1 = hashes.SHA1()  # noqa: S303 - a weak signature is the point here

    if isinstance(key, rsa.RSAPrivateKey):
        signature = key.sign(tbs, padding.PKCS1v15(), sha1)
    else:
        signature = key.sign(tbs, ec.ECDSA(sha1))

    der = _der(0x30, tbs + algorithm + _der(0x03, b"\x00" + signature))
    return x509.load_der_x509_certificate(der)


def _subject_alternative_name(
    san_dns: Sequence[str], san_ips: Sequence[str], san_emails: Sequence[str]
) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(dns) for dns in san_dns]
    names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in san_ips)
    names.extend(x509.RFC822Name(email) for email in san_emails)
    return names


@dataclass(frozen=True)
class Credential:
    """A certificate chain and its private key, in PEM, optionally on disk.

    ``cert_pem`` holds the leaf first, then the intermediates a peer needs to build
    the path to the root (never the root itself).
    """

    name: str
    cert_pem: bytes
    key_pem: bytes
    cert_path: Path | None = None
    key_path: Path | None = None

    @cached_property
    def certificate(self) -> x509.Certificate:
        """The leaf certificate."""
        return x509.load_pem_x509_certificates(self.cert_pem)[0]

    @property
    def der(self) -> bytes:
        """The leaf certificate in DER."""
        return self.certificate.public_bytes(serialization.Encoding.DER)

    @property
    def sha256(self) -> str:
        """Upper-case hex SHA-256 of the leaf DER, as ``tls.*.hash.sha256`` has it."""
        return _sha256_hex(self.der)

    @property
    def subject(self) -> str:
        """The leaf subject as an RFC 4514 string."""
        with _long_names_allowed():
            return self.certificate.subject.rfc4514_string()

    @property
    def serial_hex(self) -> str:
        """The leaf serial number in upper-case hex."""
        return format(self.certificate.serial_number, "X")

    def write(self, directory: Path) -> Credential:
        """Write ``<name>.crt.pem`` and ``<name>.key.pem`` into ``directory``.

        Returns:
            A copy of this credential with ``cert_path`` and ``key_path`` set.
        """
        directory.mkdir(parents=True, exist_ok=True)
        cert_path = directory / f"{self.name}.crt.pem"
        key_path = directory / f"{self.name}.key.pem"

        cert_path.write_bytes(self.cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as key_file:
            key_file.write(self.key_pem)
        # The mode given to os.open does not apply to a file that already existed.
        key_path.chmod(0o600)

        return dataclasses.replace(self, cert_path=cert_path, key_path=key_path)


class CertificateAuthority:
    """A root or intermediate CA that issues leaf credentials and CRLs."""

    def __init__(
        self,
        cert: x509.Certificate,
        key: PrivateKey,
        parent: CertificateAuthority | None = None,
    ) -> None:
        self.cert = cert
        self.key = key
        self.parent = parent
        with _long_names_allowed():
            self.subject = cert.subject
        self.cert_pem = _cert_pem(cert)
        self.sha256 = _sha256_hex(cert.public_bytes(serialization.Encoding.DER))
        self._crl_number = 0

    @classmethod
    def create(
        cls,
        common_name: str,
        *,
        key_type: str = "ec",
        rsa_bits: int = 2048,
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        parent: CertificateAuthority | None = None,
    ) -> CertificateAuthority:
        """Create a self-signed root, or an intermediate signed by ``parent``.

        The validity defaults to a year in the past through ten years ahead.
        """
        now = _now()
        key = _generate_key(key_type, rsa_bits)
        subject = make_name(common_name)
        constraints = x509.BasicConstraints(ca=True, path_length=None)
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())

        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _CA_BACKDATE)
            .not_valid_after(not_after or now + _CA_LIFETIME)
            .add_extension(constraints, critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(ski, critical=False)
        )

        if parent is None:
            builder = builder.issuer_name(subject).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            signing_key = key
        else:
            builder = builder.issuer_name(parent.subject).add_extension(
                parent._authority_key_identifier(), critical=False
            )
            signing_key = parent.key

        cert = _sign(builder, signing_key, hashes.SHA256())
        return cls(cert, key, parent)

    @property
    def chain_pem(self) -> bytes:
        """This CA and its ancestors, excluding the self-signed root, in PEM."""
        chain = b""
        authority: CertificateAuthority | None = self
        while authority is not None and authority.parent is not None:
            chain += authority.cert_pem
            authority = authority.parent
        return chain

    def write(self, path: Path) -> Path:
        """Write this CA's certificate in PEM to ``path`` and return the path."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.cert_pem)
        return path

    def issue(
        self,
        name: str,
        *,
        common_name: str | None = None,
        subject: x509.Name | None = None,
        san_dns: Sequence[str] = (),
        san_ips: Sequence[str] = (),
        san_emails: Sequence[str] = (),
        usage: str = "client",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        key_type: str = "ec",
        rsa_bits: int = 2048,
        hash_alg: str = "sha256",
        include_chain: bool = True,
    ) -> Credential:
        """Issue a leaf credential.

        Args:
            name: Names the credential and its files; the default common name.
            common_name: Common name of the subject, of any length.
            subject: A complete subject; wins over ``common_name``.
            san_dns: DNS names for the subject alternative name.
            san_ips: IP addresses for the subject alternative name.
            san_emails: E-mail addresses for the subject alternative name.
            usage: ``"client"``, ``"server"`` or ``"both"``: the extended key usage.
            not_before: Start of validity; an hour ago by default.
            not_after: End of validity; thirty days from now by default.
            key_type: ``"ec"`` (P-256, fast) or ``"rsa"``.
            rsa_bits: RSA modulus size.
            hash_alg: ``"sha256"``, ``"sha384"``, ``"sha512"`` or ``"sha1"``.
            include_chain: Append the intermediates between this CA and the root.

        Raises:
            ValueError: An unknown option, or a hash the installed cryptography
                refuses to sign with (SHA-1 on recent versions).
        """
        if usage not in _USAGES:
            raise ValueError(f"usage must be one of {sorted(_USAGES)}, not {usage!r}")
        algorithm = _hash_algorithm(hash_alg)
        now = _now()
        key = _generate_key(key_type, rsa_bits)

        if subject is None:
            subject = make_name(common_name if common_name is not None else name)
        constraints = x509.BasicConstraints(ca=False, path_length=None)
        key_usage = _leaf_key_usage(encipherment=isinstance(key, rsa.RSAPrivateKey))
        purposes = x509.ExtendedKeyUsage(list(_USAGES[usage]))
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before or now - _LEAF_BACKDATE)
            .not_valid_after(not_after or now + _LEAF_LIFETIME)
            .add_extension(constraints, critical=True)
            .add_extension(key_usage, critical=True)
            .add_extension(purposes, critical=False)
            .add_extension(ski, critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )

        alternative_names = _subject_alternative_name(san_dns, san_ips, san_emails)
        if alternative_names:
            # RFC 5280 4.2.1.6: critical when the subject is empty.
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alternative_names),
                critical=len(subject) == 0,
            )

        cert = _sign(builder, self.key, algorithm)
        cert_pem = _cert_pem(cert)
        if include_chain:
            cert_pem += self.chain_pem
        return Credential(name=name, cert_pem=cert_pem, key_pem=_key_pem(key))

    def crl(
        self,
        revoked: Sequence[Credential],
        *,
        last_update: datetime.datetime | None = None,
        next_update: datetime.datetime | None = None,
    ) -> bytes:
        """A PEM CRL signed by this CA that lists the leaves of ``revoked``.

        ``last_update`` defaults to an hour ago and ``next_update`` to a day ahead.
        """
        now = _now()
        last_update = last_update or now - _LEAF_BACKDATE
        next_update = next_update or now + datetime.timedelta(days=1)
        self._crl_number += 1

        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.subject)
            .last_update(last_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(self._crl_number), critical=False)
            .add_extension(self._authority_key_identifier(), critical=False)
        )
        for credential in revoked:
            entry = (
                x509.RevokedCertificateBuilder()
                .serial_number(credential.certificate.serial_number)
                .revocation_date(last_update)
                .build()
            )
            builder = builder.add_revoked_certificate(entry)

        crl = builder.sign(self.key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.PEM)

    def _authority_key_identifier(self) -> x509.AuthorityKeyIdentifier:
        ski = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski.value)


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )


def _leaf_key_usage(*, encipherment: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass
class DemoPKI:
    """The credentials the demo and the tests use, written to ``directory``.

    ``clients`` holds, in this order: ``valid``, ``expired``, ``not_yet_valid``,
    ``untrusted`` (issued by ``untrusted_ca``) and ``server_only`` (extended key
    usage serverAuth only), each of which the server's verification should treat
    differently.
    """

    directory: Path
    ca: CertificateAuthority
    untrusted_ca: CertificateAuthority
    ca_path: Path
    untrusted_ca_path: Path
    server: Credential
    clients: dict[str, Credential]


def build_demo_pki(directory: Path, key_type: str = "ec") -> DemoPKI:
    """Create the demo CAs, server and client credentials as files in ``directory``.

    The server certificate is for ``localhost`` and ``127.0.0.1``. ``key_type`` is
    ``ec`` (P-256, the default: fast) or ``rsa`` (2048 bits), for every key.
    """
    now = _now()
    day = datetime.timedelta(days=1)
    ca = CertificateAuthority.create("otel-mtls demo CA", key_type=key_type)
    untrusted_ca = CertificateAuthority.create(
        "otel-mtls untrusted CA", key_type=key_type
    )

    def issue(issuer: CertificateAuthority, name: str, **options: Any) -> Credential:
        return issuer.issue(name, key_type=key_type, **options)

    server = issue(
        ca,
        "server",
        common_name="localhost",
        san_dns=["localhost"],
        san_ips=["127.0.0.1"],
        usage="server",
    )
    clients = {
        "valid": issue(ca, "client-valid", common_name="demo-client-valid"),
        "expired": issue(
            ca,
            "client-expired",
            common_name="demo-client-expired",
            not_before=now - 30 * day,
            not_after=now - day,
        ),
        "not_yet_valid": issue(
            ca,
            "client-not-yet-valid",
            common_name="demo-client-not-yet-valid",
            not_before=now + day,
            not_after=now + 30 * day,
        ),
        "untrusted": issue(
            untrusted_ca, "client-untrusted", common_name="demo-client-untrusted"
        ),
        "server_only": issue(
            ca,
            "client-server-only",
            common_name="demo-client-server-only",
            usage="server",
        ),
    }

    return DemoPKI(
        directory=directory,
        ca=ca,
        untrusted_ca=untrusted_ca,
        ca_path=ca.write(directory / "ca.crt.pem"),
        untrusted_ca_path=untrusted_ca.write(directory / "untrusted-ca.crt.pem"),
        server=server.write(directory),
        clients={role: cred.write(directory) for role, cred in clients.items()},
    )


def _pin_version(context: ssl.SSLContext, version: ssl.TLSVersion | None) -> None:
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version


def _load_credential(context: ssl.SSLContext, credential: Credential) -> None:
    if credential.cert_path is None or credential.key_path is None:
        # ssl can only load a certificate chain from files.
        raise ValueError(
            f"credential {credential.name!r} has no files; call write() first"
        )
    context.load_cert_chain(credential.cert_path, credential.key_path)


def server_context(
    server: Credential,
    ca_pem_path: Path,
    *,
    verify: ssl.VerifyMode = ssl.CERT_REQUIRED,
    version: ssl.TLSVersion | None = None,
) -> ssl.SSLContext:
    """A server context presenting ``server`` and trusting clients of the CA file.

    ``version``, when given, is both the minimum and the maximum TLS version.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    _load_credential(context, server)
    context.load_verify_locations(cafile=ca_pem_path)
    context.verify_mode = verify
    _pin_version(context, version)
    return context


def client_context(
    ca_pem_path: Path,
    credential: Credential | None,
    *,
    version: ssl.TLSVersion | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """A client context trusting the CA file and presenting ``credential``, if any.

    ``version``, when given, is both the minimum and the maximum TLS version.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = check_hostname
    context.load_verify_locations(cafile=ca_pem_path)
    if credential is not None:
        _load_credential(context, credential)
    _pin_version(context, version)
    return context
