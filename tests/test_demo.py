"""``otel-mtls demo`` end to end: real handshakes, and what the server recorded.

Each test runs the whole demo (a local server on port 0, twelve client
connections), so these are loopback tests, not unit tests.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Optional

import pytest

from otel_mtls import attributes as A
from otel_mtls.cli import main
from otel_mtls.demo import OtlpTarget, otlp_targets

ROOT = Path(__file__).resolve().parent.parent

CREDENTIALS = ("valid", "expired", "not_yet_valid", "untrusted", "server_only", "none")

# What the server must record for each credential: reason and verify code, or
# None for an accepted handshake.
EXPECTED: dict[str, Optional[tuple[str, Optional[int]]]] = {
    "valid": None,
    "expired": ("certificate_expired", 10),
    "not_yet_valid": ("certificate_not_yet_valid", 9),
    "untrusted": ("unknown_ca", 20),
    "server_only": ("unsupported_purpose", 26),
    "none": ("no_client_certificate", None),
}

CERT_FILES = {
    "valid": "client-valid.crt.pem",
    "expired": "client-expired.crt.pem",
    "not_yet_valid": "client-not-yet-valid.crt.pem",
    "untrusted": "client-untrusted.crt.pem",
    "server_only": "client-server-only.crt.pem",
}


@pytest.fixture(autouse=True)
def _no_otlp(monkeypatch: pytest.MonkeyPatch) -> None:
    # A developer's own collector settings must not leak into these runs.
    for name in list(os.environ):
        if name.startswith("OTEL_EXPORTER_OTLP_"):
            monkeypatch.delenv(name)


def _sha256_of(path: Path) -> str:
    # Computed from the file, independently of the package's own code.
    der = ssl.PEM_cert_to_DER_cert(path.read_text(encoding="ascii"))
    return hashlib.sha256(der).hexdigest().upper()


def _mismatches(attempt: dict[str, object], fingerprints: dict[str, str]) -> list[str]:
    credential = str(attempt["credential"])
    server = attempt["server"]
    assert isinstance(server, dict), attempt
    expected = EXPECTED[credential]
    problems = []

    def differs(name: str, wanted: object) -> None:
        if server.get(name) != wanted:
            problems.append(f"{name}={server.get(name)!r}, expected {wanted!r}")

    differs(A.CLIENT_PORT, attempt["client_port"])
    differs(A.TLS_CLIENT_HASH_SHA256, fingerprints.get(credential))

    if expected is None:
        differs(A.MTLS_OUTCOME, "success")
        differs(A.TLS_PROTOCOL_VERSION, attempt["tls_version"])
        differs(A.MTLS_FAILURE_REASON, None)
        if not str(attempt["client_result"]).startswith("HTTP 200"):
            problems.append(f"client saw {attempt['client_result']!r}")
    else:
        reason, verify_code = expected
        differs(A.MTLS_OUTCOME, "failure")
        differs(A.MTLS_FAILURE_REASON, reason)
        differs(A.MTLS_VERIFY_CODE, verify_code)

    return problems


def test_json_records_the_exact_reason_per_attempt(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status = main(["demo", "--json", "--keep-dir", str(tmp_path)])
    out = capsys.readouterr().out

    assert status == 0
    attempts = [json.loads(line) for line in out.splitlines()]
    assert [(a["tls_version"], a["credential"]) for a in attempts] == [
        (version, credential)
        for version in ("1.3", "1.2")
        for credential in CREDENTIALS
    ]

    fingerprints = {
        name: _sha256_of(tmp_path / filename) for name, filename in CERT_FILES.items()
    }
    problems = {
        f"TLS {a['tls_version']} {a['credential']}": _mismatches(a, fingerprints)
        for a in attempts
    }
    assert {label: found for label, found in problems.items() if found} == {}

    for attempt in attempts:
        assert re.fullmatch(r"[0-9a-f]{32}", attempt["trace_id"]), attempt
        assert set(attempt) == {
            "tls_version",
            "credential",
            "client_port",
            "client_result",
            "trace_id",
            "server",
            "client",
        }


def test_json_values_stay_lists(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["demo", "--json"]) == 0
    attempts = [json.loads(line) for line in capsys.readouterr().out.splitlines()]

    client = attempts[0]["client"]
    assert isinstance(client, dict)
    assert client[A.MTLS_SERVER_SANS] == ["DNS:localhost", "IP:127.0.0.1"]


def test_table_names_every_credential_reason_and_fingerprint(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    threads_before = set(threading.enumerate())

    status = main(["demo", "--keep-dir", str(tmp_path)])
    out = capsys.readouterr().out

    assert status == 0
    assert set(threading.enumerate()) <= threads_before
    for credential in CREDENTIALS:
        assert re.search(rf"^1\.[23]\s+{credential}\s", out, re.MULTILINE), credential
    for expected in EXPECTED.values():
        if expected is not None:
            assert expected[0] in out
    for filename in CERT_FILES.values():
        assert _sha256_of(tmp_path / filename) in out
    assert str(tmp_path.resolve()) in out
    assert "12 attempts, 10 rejected by the server." in out
    assert "All 12 attempts behaved as expected." in out


def test_temporary_pki_is_removed(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 0
    out = capsys.readouterr().out

    found = re.search(r"^PKI in (.+?) \(temporary", out, re.MULTILINE)
    assert found is not None, out
    assert not Path(found.group(1)).exists()


def _command() -> list[str]:
    installed = shutil.which("otel-mtls")
    if installed is not None:
        return [installed]

    return [sys.executable, "-m", "otel_mtls"]


def test_command_line() -> None:
    # The repository root goes first on the path, so that the sources under test
    # run even where an older copy of the package is installed.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(ROOT), env.get("PYTHONPATH", "")) if path
    )
    for name in list(env):
        if name.startswith("OTEL_EXPORTER_OTLP_"):
            del env[name]

    result = subprocess.run(
        [*_command(), "demo"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert "All 12 attempts behaved as expected." in result.stdout
    assert "Telemetry: in memory only" in result.stdout


def test_otlp_targets_follow_the_standard_variables() -> None:
    assert otlp_targets({}) == []
    assert otlp_targets({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) == []

    environ = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://traces:4317",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc",
    }
    assert otlp_targets(environ) == [
        OtlpTarget("traces", "grpc", "http://traces:4317"),
        OtlpTarget("metrics", "http/protobuf", "http://collector:4318"),
        OtlpTarget("logs", "http/protobuf", "http://collector:4318"),
    ]

    only_logs = {"OTEL_EXPORTER_OTLP_LOGS_ENDPOINT": "http://logs:4318/v1/logs"}
    assert otlp_targets(only_logs) == [
        OtlpTarget("logs", "http/protobuf", "http://logs:4318/v1/logs")
    ]


class _Receiver(BaseHTTPRequestHandler):
    """Accepts any OTLP/HTTP export and notes the path it was sent to."""

    paths: list[str] = []  # noqa: RUF012 - one receiver per test, reset there

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        self.rfile.read(length)
        type(self).paths.append(self.path)
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[str]:
    _Receiver.paths = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Receiver)
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}
    )
    thread.start()

    yield f"http://127.0.0.1:{server.server_address[1]}"

    server.shutdown()
    server.server_close()
    thread.join(10)


def test_exports_over_otlp_when_an_endpoint_is_set(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    receiver: str,
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver)

    assert main(["demo"]) == 0

    assert f"metrics to {receiver} (http/protobuf)" in capsys.readouterr().out
    assert {"/v1/traces", "/v1/metrics", "/v1/logs"} <= set(_Receiver.paths)


def test_an_unusable_keep_dir_is_one_line_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")

    status = main(["demo", "--keep-dir", str(blocker)])

    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("otel-mtls demo: cannot write the PKI: ")
    assert "Traceback" not in err and err.count("\n") == 1
