"""Many handshakes at once: no state leaks between connections, outcomes unchanged."""

from __future__ import annotations

import socket
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Optional

from otel_mtls import attributes as A
from otel_mtls import pki as pki_module
from otel_mtls.pki import DemoPKI

from .conftest import TIMEOUT, Telemetry, instrumented

NAMES = ("valid", "untrusted", "expired", "none")
WORKERS = 8
PER_WORKER = 12


class _Server:
    """A threaded TLS server: one thread per connection, eager handshakes."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                raw, _ = self.listener.accept()
            except OSError:
                continue
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(TIMEOUT)
        try:
            with self.ctx.wrap_socket(raw, server_side=True) as tls:
                tls.recv(1)
                tls.sendall(b"y")
        except OSError:
            raw.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(TIMEOUT)
        self.listener.close()


def _attempt(
    port: int, ctx: ssl.SSLContext, name: str
) -> tuple[str, int, Optional[str]]:
    raw = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    local_port = raw.getsockname()[1]
    try:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"x")
            return name, local_port, "ok" if tls.recv(1) == b"y" else "empty"
    except (OSError, ssl.SSLError) as exc:
        raw.close()
        return name, local_port, type(exc).__name__


def _run(pki: DemoPKI) -> list[tuple[str, int, Optional[str]]]:
    server = _Server(pki_module.server_context(pki.server, pki.ca_path))
    contexts = {
        name: pki_module.client_context(
            pki.ca_path, None if name == "none" else pki.clients[name]
        )
        for name in NAMES
    }
    jobs = [NAMES[i % len(NAMES)] for i in range(WORKERS * PER_WORKER)]

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            return list(pool.map(lambda n: _attempt(server.port, contexts[n], n), jobs))
    finally:
        server.close()


def _outcomes(results: list[tuple[str, int, Optional[str]]]) -> list[tuple[str, str]]:
    # Accepted or refused: how a refusal surfaces in a TLS 1.3 client (the alert,
    # or a reset that overtook it) is a race of the kernel's, with or without
    # the instrumentation.
    return sorted(
        (name, "accepted" if outcome == "ok" else "refused")
        for name, _, outcome in results
    )


def test_concurrent_handshakes_keep_outcomes_and_identities(pki: DemoPKI) -> None:
    plain = _run(pki)

    with instrumented() as telemetry:
        observed = _run(pki)
        spans = _server_spans(telemetry)

    assert _outcomes(observed) == _outcomes(plain)
    assert {o for n, o in _outcomes(plain) if n == "valid"} == {"accepted"}
    assert {o for n, o in _outcomes(plain) if n != "valid"} == {"refused"}
    assert len(spans) == len(observed)

    # Each server span names the certificate its own client presented.
    by_port = {port: name for name, port, _ in observed}
    for attrs in spans:
        name = by_port[int(attrs[A.CLIENT_PORT])]
        if name == "none":
            assert A.TLS_CLIENT_HASH_SHA256 not in attrs
            assert attrs[A.MTLS_FAILURE_REASON] == "no_client_certificate"
        else:
            assert attrs[A.TLS_CLIENT_HASH_SHA256] == pki.clients[name].sha256

    counts = telemetry.counts()
    server_total = sum(
        value for key, value in counts.items() if (A.MTLS_SIDE, "server") in key
    )
    assert server_total == len(observed)


def _server_spans(telemetry: Telemetry) -> list[dict[str, Any]]:
    return [dict(span.attributes or {}) for span in telemetry.spans("server")]
