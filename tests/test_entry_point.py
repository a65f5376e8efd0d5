"""``opentelemetry-instrument`` finds and activates the ssl instrumentor."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from otel_mtls.pki import DemoPKI

APP = textwrap.dedent(
    """
    import socket, ssl, sys, threading

    ca, server_cert, server_key, client_cert, client_key = sys.argv[1:6]
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(server_cert, server_key)
    server_ctx.load_verify_locations(ca)
    server_ctx.verify_mode = ssl.CERT_REQUIRED
    client_ctx = ssl.create_default_context(cafile=ca)
    client_ctx.load_cert_chain(client_cert, client_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(5)
    port = listener.getsockname()[1]

    def serve():
        raw, _ = listener.accept()
        raw.settimeout(5)
        try:
            server_ctx.wrap_socket(raw, server_side=True).close()
        except ssl.SSLError:
            pass

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.recv(1)
    except (ssl.SSLError, OSError):
        pass
    thread.join(10)
    """
)


def _instrument_command() -> Path:
    command = Path(sys.executable).with_name("opentelemetry-instrument")
    assert command.exists(), "opentelemetry-instrument is installed with the package"
    return command


def _run(tmp_path: Path, pki: DemoPKI, **env: str) -> str:
    app = tmp_path / "app.py"
    app.write_text(APP)
    client = pki.clients["untrusted"]
    environ = dict(os.environ)
    environ.update(
        OTEL_SERVICE_NAME="entry-point-test",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="console",
        **env,
    )
    args = [str(pki.ca_path), str(pki.server.cert_path), str(pki.server.key_path)]
    args += [str(client.cert_path), str(client.key_path)]
    done = subprocess.run(
        [str(_instrument_command()), sys.executable, str(app), *args],
        env=environ,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def _json_objects(text: str) -> list[dict[str, object]]:
    """The console exporters print indented JSON objects one after another."""
    decoder = json.JSONDecoder()
    objects: list[dict[str, object]] = []
    index = 0
    while True:
        start = text.find("{", index)
        if start < 0:
            return objects
        item, index = decoder.raw_decode(text, start)
        objects.append(item)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_opentelemetry_instrument_activates_the_ssl_instrumentor(
    tmp_path: Path, pki: DemoPKI
) -> None:
    output = _run(tmp_path, pki)

    records = _json_objects(output)
    spans = [r for r in records if r.get("name") == "TLS server handshake"]
    logs = [r for r in records if r.get("event_name") == "mtls.handshake.failed"]
    assert len(spans) == 1
    attributes = spans[0]["attributes"]
    assert isinstance(attributes, dict)
    assert attributes["mtls.failure.reason"] == "unknown_ca"
    assert attributes["tls.client.hash.sha256"] == pki.clients["untrusted"].sha256
    assert len(logs) == 2


def test_disabled_instrumentations_are_honoured(tmp_path: Path, pki: DemoPKI) -> None:
    output = _run(tmp_path, pki, OTEL_PYTHON_DISABLED_INSTRUMENTATIONS="ssl")

    assert "TLS server handshake" not in output
    assert "mtls.handshake.failed" not in output
