"""``otel-mtls doctor`` in processes configured by ``opentelemetry-instrument``."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from otel_mtls import doctor
from otel_mtls.pki import CertificateAuthority

ROOT = Path(__file__).resolve().parent.parent
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def _environment(**settings: str) -> dict[str, str]:
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OTEL_")
    }
    env["PYTHONPATH"] = os.pathsep.join(
        path for path in (str(ROOT), env.get("PYTHONPATH", "")) if path
    )
    env.update(settings)
    return env


def _doctor(*args: str, **settings: str) -> subprocess.CompletedProcess[str]:
    if not INSTRUMENT.exists():
        pytest.fail(f"opentelemetry-instrument not found next to {sys.executable}")

    return subprocess.run(
        [str(INSTRUMENT), sys.executable, "-m", "otel_mtls", "doctor", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_environment(**settings),
        check=False,
    )


CONSOLE = {
    "OTEL_TRACES_EXPORTER": "console",
    "OTEL_METRICS_EXPORTER": "console",
    "OTEL_LOGS_EXPORTER": "console",
}


@pytest.mark.slow
def test_log_export_off_is_named_with_its_fix() -> None:
    result = _doctor(**{**CONSOLE, "OTEL_LOGS_EXPORTER": "none"})

    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    failing = [line for line in lines if line.startswith("FAIL")]
    assert len(failing) == 1, result.stdout
    assert "log export" in failing[0]
    assert "OTEL_LOGS_EXPORTER='none'" in failing[0]
    fix = lines[lines.index(failing[0]) + 1]
    assert "fix: set OTEL_LOGS_EXPORTER=otlp" in fix


@pytest.mark.slow
def test_console_setup_passes_everything_but_the_endpoint() -> None:
    result = _doctor("--json", **CONSOLE)

    assert result.returncode == 0, result.stdout + result.stderr
    # The console exporters may print after the document; it comes first.
    document, _ = json.JSONDecoder().raw_decode(result.stdout)
    statuses = {check["name"]: check["status"] for check in document["checks"]}
    assert statuses.pop("OTLP endpoint") == "SKIP"
    assert set(statuses.values()) == {"PASS"}, statuses
    assert "ssl instrumentation" in statuses
    assert "rejected-certificate capture" in statuses


def test_without_sdk_providers_everything_is_named(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # This test process never sets global providers, so they are the API proxies.
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "console")
    monkeypatch.setenv("OTEL_METRICS_EXPORTER", "console")

    status = doctor.run()
    out = capsys.readouterr().out

    assert status == 1
    for name in ("traces provider", "metrics provider", "logs provider"):
        assert any(
            line.startswith("FAIL") and name in line for line in out.splitlines()
        ), out
    assert "ssl instrumentation" in out


def test_endpoint_reachability_connects_only_to_the_configured_address() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        environ = {
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_METRICS_EXPORTER": "none",
            "OTEL_LOGS_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        }
        checks = doctor.check_endpoints(doctor.configured_exporters(environ), 1.0)
        listener.settimeout(1.0)
        accepted, _ = listener.accept()
        accepted.close()

    assert [(c.status, c.detail) for c in checks] == [
        ("PASS", f"http://127.0.0.1:{port} accepts connections")
    ]

    closed = doctor.check_endpoints(doctor.configured_exporters(environ), 1.0)
    assert [c.status for c in closed] == ["FAIL"]


def test_certificate_audit(tmp_path: Path) -> None:
    ca = CertificateAuthority.create("doctor CA")
    soon = ca.issue("soon")
    path = tmp_path / "soon.pem"
    path.write_bytes(soon.cert_pem)

    checks = doctor.check_certificates([path, tmp_path / "missing.pem"])

    assert [c.status for c in checks] == ["WARN", "FAIL"]
    assert "expires in" in checks[0].detail
    assert "cannot read" in checks[1].detail
