"""``otel-mtls inspect`` on real generated certificate files."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from otel_mtls import attributes as A
from otel_mtls.cli import main
from otel_mtls.pki import CertificateAuthority

DAY = datetime.timedelta(days=1)


@pytest.fixture(scope="module")
def root() -> CertificateAuthority:
    return CertificateAuthority.create("inspect root")


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _inspect_json(
    capsys: pytest.CaptureFixture[str], *paths: Path
) -> tuple[int, dict[str, object]]:
    status = main(["inspect", "--json", *map(str, paths)])
    return status, json.loads(capsys.readouterr().out)


def _only_file(document: dict[str, object]) -> dict[str, object]:
    files = document["files"]
    assert isinstance(files, list)
    assert len(files) == 1
    item = files[0]
    assert isinstance(item, dict)
    return item


def test_newline_in_the_subject_is_escaped(
    capsys: pytest.CaptureFixture[str], root: CertificateAuthority, tmp_path: Path
) -> None:
    leaf = root.issue("hostile", common_name="alice\nFAKE LOG LINE\x1b[2J")
    path = tmp_path / "hostile.pem"
    path.write_bytes(leaf.cert_pem)

    status = main(["inspect", str(path)])
    out = capsys.readouterr().out

    assert status == 0
    assert "CN=alice\\x0aFAKE LOG LINE\\x1b[2J" in out
    assert "\x1b" not in out
    assert leaf.sha256 in out
    assert not any(line.startswith("FAKE") for line in out.splitlines())


def test_json_carries_the_recorded_attributes(
    capsys: pytest.CaptureFixture[str], root: CertificateAuthority, tmp_path: Path
) -> None:
    leaf = root.issue("json", common_name="json-client", san_dns=["a.example"])
    path = tmp_path / "json.pem"
    path.write_bytes(leaf.cert_pem)

    status, document = _inspect_json(capsys, path)

    assert status == 0
    item = _only_file(document)
    certificates = item["certificates"]
    assert isinstance(certificates, list)
    attributes = certificates[0]["attributes"]
    assert attributes[A.TLS_CLIENT_HASH_SHA256] == leaf.sha256
    assert attributes[A.TLS_CLIENT_SUBJECT] == "CN=json-client"
    assert attributes[A.MTLS_CLIENT_SANS] == ["DNS:a.example"]
    assert 29 < certificates[0]["days_left"] <= 30
    assert set(attributes) <= A.REGISTERED_NAMES


def test_expired_certificate_fails(
    capsys: pytest.CaptureFixture[str], root: CertificateAuthority, tmp_path: Path
) -> None:
    now = _now()
    leaf = root.issue("old", not_before=now - 20 * DAY, not_after=now - 3 * DAY)
    path = tmp_path / "old.pem"
    path.write_bytes(leaf.cert_pem)

    status, document = _inspect_json(capsys, path)

    assert status == 1
    item = _only_file(document)
    assert item["certificates"][0]["expired"] is True  # type: ignore[index]
    messages = [f["message"] for f in item["findings"]]  # type: ignore[attr-defined]
    assert any("expired 3 days ago" in message for message in messages), messages


def test_wrong_chain_order_is_named(
    capsys: pytest.CaptureFixture[str], root: CertificateAuthority, tmp_path: Path
) -> None:
    intermediate = CertificateAuthority.create("inspect intermediate", parent=root)
    leaf = intermediate.issue("leaf", include_chain=False)
    good = tmp_path / "good.pem"
    good.write_bytes(leaf.cert_pem + intermediate.cert_pem + root.cert_pem)
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(intermediate.cert_pem + leaf.cert_pem)

    assert main(["inspect", str(good)]) == 0
    capsys.readouterr()
    status = main(["inspect", str(wrong)])
    out = capsys.readouterr().out

    assert status == 1
    assert (
        "FAIL: chain order: certificate 0 was issued by 'CN=inspect root', "
        "but certificate 1 is 'CN=leaf'" in out
    )


def test_der_input(
    capsys: pytest.CaptureFixture[str], root: CertificateAuthority, tmp_path: Path
) -> None:
    leaf = root.issue("der", common_name="der-client")
    path = tmp_path / "leaf.der"
    path.write_bytes(leaf.certificate.public_bytes(serialization.Encoding.DER))

    status, document = _inspect_json(capsys, path)

    assert status == 0
    certificates = _only_file(document)["certificates"]
    assert isinstance(certificates, list)
    assert certificates[0]["attributes"][A.TLS_CLIENT_HASH_SHA256] == leaf.sha256


def test_unreadable_and_garbage_files_fail(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    garbage = tmp_path / "garbage.der"
    garbage.write_bytes(b"\x30\x03not a certificate")

    status = main(["inspect", str(garbage), str(tmp_path / "missing.pem")])
    out = capsys.readouterr().out

    assert status == 1
    assert "cannot be parsed" in out
    assert "cannot read" in out
