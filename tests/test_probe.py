"""``otel-mtls probe`` against real Werkzeug and uvicorn servers on loopback.

The servers run as subprocesses: Werkzeug instrumented by hand, uvicorn under
``opentelemetry-instrument``, both exporting OTLP/HTTP to the probe's receiver.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pytest
from cryptography.hazmat.primitives import serialization
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from otel_mtls import attributes as A
from otel_mtls import otlp_receiver, probe
from otel_mtls.cli import main
from otel_mtls.pki import DemoPKI, server_context

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")
READY_TIMEOUT = 20.0


@dataclass
class Server:
    port: int
    otlp_port: int


@dataclass
class Revoked:
    cert: Path
    key: Path
    crl: Path


def _free_port() -> int:
    # Another process could take the port before the server binds it; on a
    # loopback test machine that race is remote, and the readiness wait below
    # would fail loudly rather than probe something else.
    with socket.create_server(("127.0.0.1", 0)) as sock:
        port: int = sock.getsockname()[1]
        return port


def _environment(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(ROOT), env.get("PYTHONPATH", "")) if path
    )
    env.update(settings)
    return env


def _wait_for_port(process: subprocess.Popen[bytes], port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)

    pytest.fail(f"the server did not listen on {port} within {READY_TIMEOUT}s")


def _wait_for_file(process: subprocess.Popen[bytes], path: Path) -> int:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        assert process.poll() is None, "the server exited early"
        if path.exists() and path.read_text():
            return int(path.read_text())
        time.sleep(0.1)

    pytest.fail(f"the server did not start within {READY_TIMEOUT}s")


@contextlib.contextmanager
def _running(
    command: list[str], env: dict[str, str]
) -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen(
        command,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


@contextlib.contextmanager
def werkzeug_server(
    pki: DemoPKI,
    tmp_path: Path,
    *,
    instrumented: bool = True,
    verify: str = "required",
    crl: Optional[Path] = None,
) -> Iterator[Server]:
    otlp_port = _free_port()
    port_file = tmp_path / f"werkzeug-{otlp_port}.port"
    command = [
        sys.executable,
        str(ROOT / "tests" / "probe_targets.py"),
        "werkzeug",
        "--cert",
        str(pki.server.cert_path),
        "--key",
        str(pki.server.key_path),
        "--ca",
        str(pki.ca_path),
        "--verify",
        verify,
        "--port-file",
        str(port_file),
    ]
    if instrumented:
        command += ["--otlp", f"http://127.0.0.1:{otlp_port}"]
    if crl is not None:
        command += ["--crl", str(crl)]

    with _running(command, _environment()) as process:
        yield Server(_wait_for_file(process, port_file), otlp_port)


@contextlib.contextmanager
def uvicorn_server(pki: DemoPKI, *, instrumented: bool = True) -> Iterator[Server]:
    if not INSTRUMENT.exists():
        pytest.fail(f"opentelemetry-instrument not found next to {sys.executable}")

    port, otlp_port = _free_port(), _free_port()
    env = _environment(
        OTEL_TRACES_EXPORTER="otlp",
        OTEL_LOGS_EXPORTER="otlp",
        OTEL_METRICS_EXPORTER="none",
        OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_BSP_SCHEDULE_DELAY="100",
        OTEL_BLRP_SCHEDULE_DELAY="100",
    )
    if not instrumented:
        env["OTEL_PYTHON_DISABLED_INSTRUMENTATIONS"] = "ssl"
    command = [
        str(INSTRUMENT),
        sys.executable,
        "-m",
        "uvicorn",
        "tests.probe_targets:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--lifespan",
        "off",
        # uvloop builds its SSL objects in compiled code, where the
        # instrumentation cannot see the client address (issue #4).
        "--loop",
        "asyncio",
        "--ssl-certfile",
        str(pki.server.cert_path),
        "--ssl-keyfile",
        str(pki.server.key_path),
        "--ssl-ca-certs",
        str(pki.ca_path),
        "--ssl-cert-reqs",
        "2",
    ]

    with _running(command, env) as process:
        _wait_for_port(process, port)
        yield Server(port, otlp_port)


@pytest.fixture(scope="module")
def issuer_key(pki: DemoPKI) -> Path:
    path = pki.directory / "ca.key.pem"
    path.write_bytes(
        pki.ca.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


@pytest.fixture(scope="module")
def revoked(pki: DemoPKI) -> Revoked:
    # Revoked in the test CA's own CRL, as a user's staging PKI would have it.
    credential = pki.ca.issue("probe-revoked").write(pki.directory)
    crl = pki.directory / "probe-ca.crl.pem"
    crl.write_bytes(pki.ca.crl([credential]))
    assert credential.cert_path is not None
    assert credential.key_path is not None
    return Revoked(credential.cert_path, credential.key_path, crl)


def _probe_json(
    capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, dict[str, Any]]:
    status = main(["probe", *args, "--json"])
    document: dict[str, Any] = json.loads(capsys.readouterr().out)
    return status, document


def _battery(pki: DemoPKI, issuer_key: Path, server: Server, wait: str) -> list[str]:
    return [
        f"127.0.0.1:{server.port}",
        "--issuer-cert",
        str(pki.ca_path),
        "--issuer-key",
        str(issuer_key),
        "--rate",
        "50",
        "--expect-telemetry",
        f"otlp:127.0.0.1:{server.otlp_port}",
        "--telemetry-wait",
        wait,
    ]


def _assert_all_refused_and_matched(status: int, document: dict[str, Any]) -> None:
    attempts = document["attempts"]
    verdicts = {(a["tls_version"], a["credential"]): a["outcome"] for a in attempts}
    # The hostile names come from the trusted test CA: otherwise valid, accepted.
    accepted = {probe.CONTROL, *probe.HOSTILE_NAMES}
    optional = {"revoked"}
    expected = {
        (version, name): "accepted" if name in accepted else "refused"
        for version in ("1.2", "1.3")
        for name in probe.CREDENTIALS
        if name not in optional
    }
    # The revoked credential is in the battery only where the target checks a
    # CRL.
    for name in optional:
        if any(a["credential"] == name for a in attempts):
            expected |= {(v, name): "refused" for v in ("1.2", "1.3")}
    assert verdicts == expected
    assert {a["telemetry"] for a in attempts} == {"matched"}, attempts
    hostile = [a for a in attempts if a["credential"] in probe.HOSTILE_NAMES]
    assert {a["escaping"] for a in hostile} == {"escaped"}, hostile
    assert document["summary"]["problems"] == 0
    assert status == 0


def test_werkzeug_refuses_and_logs_every_bad_credential(
    capsys: pytest.CaptureFixture[str],
    pki: DemoPKI,
    issuer_key: Path,
    revoked: Revoked,
    tmp_path: Path,
) -> None:
    with werkzeug_server(pki, tmp_path, crl=revoked.crl) as server:
        status, document = _probe_json(
            capsys,
            *_battery(pki, issuer_key, server, "15"),
            "--revoked-cert",
            str(revoked.cert),
            "--revoked-key",
            str(revoked.key),
        )

    _assert_all_refused_and_matched(status, document)
    refused = [a for a in document["attempts"] if a["outcome"] == "refused"]
    unlogged = [a for a in refused if "log:mtls.handshake.failed" not in a["records"]]
    assert unlogged == []
    revoked_attempts = [a for a in refused if a["credential"] == "revoked"]
    assert len(revoked_attempts) == 2
    assert all("certificate_revoked" in a["reasons"] for a in revoked_attempts)


def test_uvicorn_refuses_and_logs_every_bad_credential(
    capsys: pytest.CaptureFixture[str], pki: DemoPKI, issuer_key: Path
) -> None:
    with uvicorn_server(pki) as server:
        status, document = _probe_json(capsys, *_battery(pki, issuer_key, server, "15"))

    _assert_all_refused_and_matched(status, document)


@pytest.mark.parametrize("kind", ["werkzeug", "uvicorn"])
def test_without_instrumentation_every_attempt_is_a_gap(
    capsys: pytest.CaptureFixture[str],
    pki: DemoPKI,
    issuer_key: Path,
    tmp_path: Path,
    kind: str,
) -> None:
    servers = {
        "werkzeug": lambda: werkzeug_server(pki, tmp_path, instrumented=False),
        "uvicorn": lambda: uvicorn_server(pki, instrumented=False),
    }
    with servers[kind]() as server:
        status, document = _probe_json(
            capsys,
            *_battery(pki, issuer_key, server, "2"),
            "--only",
            "none,unknown_ca,expired,valid",
        )

    assert status == 1
    attempts = document["attempts"]
    assert len(attempts) == 8
    assert {a["telemetry"] for a in attempts} == {"gap"}
    assert {a["outcome"] for a in attempts if a["credential"] != "valid"} == {"refused"}


def test_cert_optional_server_accepts_no_certificate(
    capsys: pytest.CaptureFixture[str], pki: DemoPKI, tmp_path: Path
) -> None:
    with werkzeug_server(
        pki, tmp_path, instrumented=False, verify="optional"
    ) as server:
        status = main(["probe", f"127.0.0.1:{server.port}", "--only", "none"])
    out = capsys.readouterr().out

    assert status == 1
    assert "PROBLEM TLS 1.2 none: bad credential 'none' was accepted" in out
    assert "PROBLEM TLS 1.3 none: bad credential 'none' was accepted" in out
    assert "NOT verified" in out


def test_rate_limit_holds_and_attempts_are_capped(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    pki: DemoPKI,
    tmp_path: Path,
) -> None:
    starts: list[float] = []
    original = probe.attempt_once

    def timed(options: probe.Options, item: probe.Probe, version: str) -> probe.Attempt:
        starts.append(time.monotonic())
        return original(options, item, version)

    monkeypatch.setattr(probe, "attempt_once", timed)
    junit = tmp_path / "probe.xml"

    with werkzeug_server(pki, tmp_path, instrumented=False) as server:
        status, document = _probe_json(
            capsys,
            f"127.0.0.1:{server.port}",
            "--only",
            "none,self_signed,unknown_ca",
            "--rate",
            "4",
            "--max-attempts",
            "5",
            "--junit",
            str(junit),
        )

    gaps = [later - earlier for earlier, later in zip(starts, starts[1:])]
    assert len(starts) == 5
    assert min(gaps) >= 0.25 - 0.005, gaps
    assert document["not_run"] == 1
    assert status == 0

    suite = ET.parse(junit).getroot()
    assert suite.get("tests") == "5"
    assert suite.get("failures") == "0"
    cases = suite.findall("testcase")
    assert len([c for c in cases if c.find("skipped") is None]) == 5


def test_hostile_names_come_from_the_users_ca_only_when_given(
    pki: DemoPKI, issuer_key: Path, tmp_path: Path
) -> None:
    target = probe.Target("127.0.0.1", 1)
    only = sorted(probe.HOSTILE_NAMES)
    without = probe.Options(target, only=only)
    with_issuer = probe.Options(
        target, only=only, issuer_cert=pki.ca_path, issuer_key=issuer_key
    )

    throw_away, skipped = probe.build_probes(without, tmp_path / "a")
    trusted, _ = probe.build_probes(with_issuer, tmp_path / "b")

    assert [(p.name, p.expect) for p in throw_away] == [
        (name, "refused") for name in probe.CREDENTIALS if name in only
    ]
    assert {p.expect for p in trusted} == {probe.EITHER}
    for item in trusted:
        assert item.credential is not None
        assert item.credential.certificate.issuer == pki.ca.subject
    for item in throw_away:
        assert item.credential is not None
        assert item.credential.certificate.issuer != pki.ca.subject
    assert skipped == []


def test_revoked_is_skipped_without_its_options(tmp_path: Path) -> None:
    options = probe.Options(probe.Target("127.0.0.1", 1), only=["revoked"])

    probes, skipped = probe.build_probes(options, tmp_path)

    assert probes == []
    assert skipped == [
        probe.Skipped("revoked", "needs --revoked-cert and --revoked-key")
    ]
    assert main(["probe", "127.0.0.1:1", "--revoked-cert", str(tmp_path)]) == 2


@pytest.mark.parametrize(
    ("subject", "safe"),
    [
        ("CN=probe-injection\\x0aFAKE LOG LINE", True),
        ("CN=" + "L" * 1024 + "...(+3076 chars)", True),
        ("CN=probe-injection\nFAKE LOG LINE", False),
        ("CN=bell\x07", False),
        ("CN=del\x7f", False),
        ("CN=next-line\x85", False),
        ("CN=" + "L" * 4096, False),
    ],
)
def test_recorded_subjects_must_be_escaped_and_capped(subject: str, safe: bool) -> None:
    assert (probe.subject_problem(subject) is None) is safe


def _span_export(port: int, sha256: str, subject: str) -> bytes:
    def attribute(key: str, value: AnyValue) -> KeyValue:
        return KeyValue(key=key, value=value)

    span = Span(
        name=A.SPAN_SERVER_HANDSHAKE,
        attributes=[
            attribute(A.CLIENT_PORT, AnyValue(int_value=port)),
            attribute(A.TLS_CLIENT_HASH_SHA256, AnyValue(string_value=sha256)),
            attribute(A.TLS_CLIENT_SUBJECT, AnyValue(string_value=subject)),
        ],
    )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])]
    )
    body: bytes = request.SerializeToString()
    return body


def test_a_raw_subject_in_the_record_is_a_problem() -> None:
    attempt = probe.Attempt(
        "control_characters",
        "1.3",
        probe.EITHER,
        outcome="accepted",
        client_port=50000,
        sha256="AB" * 32,
    )
    receiver = otlp_receiver.OtlpReceiver("127.0.0.1", 0)
    try:
        receiver.accept(
            "/v1/traces", _span_export(50000, "AB" * 32, "CN=a\nFAKE LOG LINE")
        )
        probe.match_telemetry([attempt], receiver, 0)
    finally:
        receiver.close()

    assert attempt.telemetry == "matched"
    assert attempt.escaping == "not escaped"
    assert attempt.problem is not None
    assert attempt.problem.startswith("record not escaped: span:")


def test_rate_limiter_on_a_fake_clock() -> None:
    now = [100.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    limiter = probe.RateLimiter(2.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(4):
        limiter.wait()

    assert slept == [0.5, 0.5, 0.5]


def test_targets_and_telemetry_addresses_are_parsed_strictly() -> None:
    assert probe.parse_target("127.0.0.1:8443") == probe.Target("127.0.0.1", 8443)
    assert probe.parse_target("[::1]:443") == probe.Target("::1", 443)
    assert probe.parse_telemetry_address("otlp:127.0.0.1:4318") == ("127.0.0.1", 4318)
    for bad in ("localhost", "host:0", "host:99999", ":80"):
        with pytest.raises(ValueError, match=r"HOST:PORT|range"):
            probe.parse_target(bad)
    with pytest.raises(ValueError, match="otlp:"):
        probe.parse_telemetry_address("jaeger:127.0.0.1:16686")


def pki_server_context(pki: DemoPKI) -> ssl.SSLContext:
    # Asks for no client certificate: only the silence after the handshake matters.
    return server_context(pki.server, pki.ca_path, verify=ssl.CERT_NONE)


def test_silent_server_after_the_handshake_counts_as_accepted(pki: DemoPKI) -> None:
    # A TLS server that completes every handshake and never answers: the probe
    # must not mistake its silence for a refusal.
    context = pki_server_context(pki)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]
    held: list[socket.socket] = []

    def serve() -> None:
        raw, _ = listener.accept()
        held.append(context.wrap_socket(raw, server_side=True))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    options = probe.Options(
        target=probe.Target("127.0.0.1", port), versions=("1.3",), connect_timeout=0.5
    )

    attempt = probe.attempt_once(options, probe.Probe("none", None, ""), "1.3")

    thread.join(5)
    for sock in held:
        sock.close()
    listener.close()
    assert attempt.outcome == "accepted", attempt
    assert "no answer" in attempt.detail
