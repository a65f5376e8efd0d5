"""Handshakes through SSLObject: asyncio's own loop and uvloop, both sides."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ssl
import sys
from collections.abc import Awaitable
from typing import Any, Callable, Optional

import pytest

from otel_mtls import attributes as A
from otel_mtls import pki as pki_module
from otel_mtls.pki import Credential, DemoPKI

from .conftest import TIMEOUT, Telemetry

V13 = ssl.TLSVersion.TLSv1_3
V12 = ssl.TLSVersion.TLSv1_2


def _loops() -> list[str]:
    loops = ["asyncio"]
    if sys.platform != "win32":
        loops.append("uvloop")
    return loops


def _run(loop_name: str, main: Callable[[], Awaitable[Any]]) -> Any:
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    try:
        return loop.run_until_complete(asyncio.wait_for(main(), TIMEOUT * 2))
    finally:
        loop.close()


async def _exchange(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[Optional[BaseException], int]:
    """One asyncio server and one asyncio client; the client's error and port."""

    async def handle(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            await reader.read(64)
            writer.write(b"pong")
            await writer.drain()
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_ctx)
    port = server.sockets[0].getsockname()[1]
    client_port = 0
    error: Optional[BaseException] = None
    writer: Optional[asyncio.StreamWriter] = None

    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="localhost"
        )
        client_port = writer.get_extra_info("sockname")[1]
        writer.write(b"ping")
        await writer.drain()
        data = await reader.read(64)
        if not data:
            raise ConnectionResetError("closed without data")
    except (OSError, ssl.SSLError) as exc:
        error = exc
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        server.close()
        await server.wait_closed()

    # Let the server side finish its handshake callbacks.
    for _ in range(50):
        await asyncio.sleep(0.01)

    return error, client_port


@pytest.mark.parametrize("loop_name", _loops())
@pytest.mark.parametrize("version", [V13, V12], ids=["tls13", "tls12"])
@pytest.mark.parametrize(
    ("name", "reason", "code"),
    [
        ("valid", None, None),
        ("untrusted", "unknown_ca", 20),
        ("expired", "certificate_expired", 10),
        ("none", "no_client_certificate", None),
    ],
)
def test_asyncio_server_records_client_certificate(
    telemetry: Telemetry,
    pki: DemoPKI,
    loop_name: str,
    version: ssl.TLSVersion,
    name: str,
    reason: Optional[str],
    code: Optional[int],
) -> None:
    credential: Optional[Credential] = None if name == "none" else pki.clients[name]
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=version)
    client_ctx = pki_module.client_context(pki.ca_path, credential, version=version)

    error, client_port = _run(loop_name, lambda: _exchange(server_ctx, client_ctx))
    gc.collect()

    server = dict(telemetry.span("server").attributes or {})
    assert server[A.MTLS_API] == "bio"

    if loop_name == "uvloop" and version == V13 and reason is not None:
        # uvloop tells the SSL object nothing when the server closes after the
        # handshake; the client's verdict stays open (never a success) until the
        # object is collected.
        # TODO(#3): settle uvloop clients' TLS 1.3 verdicts at connection loss.
        outcomes = [
            (s.attributes or {})[A.MTLS_OUTCOME] for s in telemetry.spans("client")
        ]
        assert outcomes in ([], ["unconfirmed"])
        assert server[A.MTLS_FAILURE_REASON] == reason
        return

    client = dict(telemetry.span("client").attributes or {})
    assert client[A.MTLS_API] == "bio"

    if loop_name == "asyncio":
        # The stdlib loop's transport is found; uvloop's is not reachable.
        assert server[A.CLIENT_ADDRESS] == "127.0.0.1"
        if client_port:
            assert server[A.CLIENT_PORT] == client_port

    if credential is not None:
        assert server[A.TLS_CLIENT_HASH_SHA256] == credential.sha256
        assert server[A.TLS_CLIENT_SUBJECT] == credential.subject

    if reason is None:
        assert error is None
        assert server[A.MTLS_OUTCOME] == "success"
        assert client[A.MTLS_OUTCOME] == "success"
        assert client[A.TLS_ESTABLISHED] is True
        return

    assert error is not None
    assert server[A.MTLS_FAILURE_REASON] == reason
    assert server.get(A.MTLS_VERIFY_CODE) == code
    assert client[A.MTLS_OUTCOME] == "failure"
    # An asyncio server drops the connection without flushing its alert, so a
    # TLS 1.3 client sees a bare close after a handshake that had returned.
    if version == V13:
        assert client[A.MTLS_LATE_FAILURE] is True
        assert client[A.MTLS_FAILURE_REASON] in (
            "client_certificate_probably_rejected",
            "peer_rejected_certificate",
        )
    else:
        assert client[A.MTLS_FAILURE_REASON] in (
            "peer_rejected_certificate",
            "client_certificate_probably_rejected",
        )
