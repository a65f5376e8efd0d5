"""The parsers that see peer-controlled bytes: malformed input never escapes."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otel_mtls import certs, tlsmsg
from otel_mtls.pki import DemoPKI


def _entry(der: bytes, tls13: bool) -> bytes:
    body = len(der).to_bytes(3, "big") + der
    return body + b"\x00\x00" if tls13 else body


def _message(ders: list[bytes], tls13: bool, context: bytes = b"") -> bytes:
    entries = b"".join(_entry(der, tls13) for der in ders)
    body = len(entries).to_bytes(3, "big") + entries
    if tls13:
        body = bytes([len(context)]) + context + body
    return bytes([tlsmsg.HS_CERTIFICATE]) + len(body).to_bytes(3, "big") + body


@pytest.mark.parametrize("tls13", [False, True], ids=["tls12", "tls13"])
def test_real_chains_parse_in_order(pki: DemoPKI, tls13: bool) -> None:
    chain = [pki.clients["valid"].der, pki.server.der]

    assert tlsmsg.parse_certificate_message(_message(chain, tls13), tls13) == chain
    assert tlsmsg.parse_certificate_message(_message([], tls13), tls13) == []


def test_the_other_layout_is_a_fallback(pki: DemoPKI) -> None:
    chain = [pki.clients["valid"].der]
    message = _message(chain, tls13=True, context=b"\x01\x02")

    assert tlsmsg.parse_any_certificate_message(message, 0x0303) == chain


def test_chains_are_capped(pki: DemoPKI) -> None:
    chain = [pki.clients["valid"].der] * (tlsmsg.MAX_CERTIFICATES + 10)

    parsed = tlsmsg.parse_certificate_message(_message(chain, False), False)

    assert len(parsed) == tlsmsg.MAX_CERTIFICATES


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"", "truncated"),
        (b"\x0b\x00\x00", "truncated"),
        (b"\x01\x00\x00\x00", "not a Certificate message"),
        (b"\x0b\x00\x00\x05\x00\x00\x09\x00\x00", "does not match"),
        (b"\x0b\x00\x00\x06\x00\x00\x03\x00\x00\x00", "empty certificate entry"),
        (b"\x0b\x00\x00\x07\x00\x00\x04\x00\x00\x09\xff", "truncated"),
    ],
)
def test_malformed_messages_say_what_is_wrong(data: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        tlsmsg.parse_certificate_message(data, tls13=False)


@settings(max_examples=400, deadline=None)
@given(data=st.binary(max_size=2048), version=st.sampled_from([0x0303, 0x0304]))
def test_any_bytes_give_certificates_or_a_value_error(
    data: bytes, version: int
) -> None:
    try:
        parsed = tlsmsg.parse_any_certificate_message(data, version)
    except ValueError:
        return

    assert all(isinstance(item, bytes) and item for item in parsed)
    assert len(parsed) <= tlsmsg.MAX_CERTIFICATES


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=4096))
def test_any_der_gives_attributes_or_a_recorded_parse_error(data: bytes) -> None:
    info = certs.parse_der(data, 1024, 32)

    digest = hashlib.sha256(data).hexdigest().upper()
    assert info.sha256 == digest
    attrs = info.attributes("client")
    assert attrs["tls.client.hash.sha256"] == digest
    if info.parse_error:
        assert digest in info.parse_error
        assert "tls.client.subject" not in attrs


def test_truncated_real_certificate_is_a_parse_error(pki: DemoPKI) -> None:
    der = pki.clients["valid"].der
    info = certs.parse_der(der[: len(der) // 2], 1024, 32)

    assert info.parse_error.endswith(f"(sha256={info.sha256})")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("plain", "plain"),
        ("a\nb\r\tc", "a\\x0ab\\x0d\\x09c"),
        ("\x1b[2J", "\\x1b[2J"),
        ("\u202eexe.txt", "\\u202eexe.txt"),
        ("\u2028", "\\u2028"),
        ("\ud800", "\\ud800"),
        ("x" * 10, "xxxx...(+6 chars)"),
    ],
)
def test_safe_text_escapes_and_caps(text: str, expected: str) -> None:
    assert certs.safe_text(text, 4 if len(text) == 10 else 100) == expected


def test_alert_names() -> None:
    assert tlsmsg.alert_name(48) == "unknown_ca"
    assert tlsmsg.alert_name(116) == "certificate_required"
    assert tlsmsg.alert_name(250) == "alert_250"
    assert tlsmsg.alert_from_openssl_reason("TLSV1_ALERT_UNKNOWN_CA") == "unknown_ca"
    assert tlsmsg.alert_from_openssl_reason("CERTIFICATE_VERIFY_FAILED") is None
