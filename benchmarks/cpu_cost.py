"""CPU cost per mTLS handshake pair, in one thread, without sockets or scheduling.

Client and server ``SSLObject``s exchange records through memory BIOs, so the run
has no network, no threads and no waiting: what it measures is CPU. Under
``valgrind --tool=callgrind`` the instruction count is repeatable run to run,
which makes it the figure to compare before and after a change on a noisy
machine; ``run-cpu-cost.sh`` does that for both variants and prints the ratio.

    python benchmarks/cpu_cost.py --mode plain|instrumented --pairs 60
"""

from __future__ import annotations

import argparse
import ssl
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from benchmarks.handshakes import make_providers
from otel_mtls import pki as pki_module
from otel_mtls.ssl_instrumentor import SSLInstrumentor

_ROUNDS = 12


def _step(
    obj: ssl.SSLObject, outgoing: ssl.MemoryBIO, peer_incoming: ssl.MemoryBIO
) -> bool:
    """One handshake step of one side; False once the handshake failed."""
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    except ssl.SSLError:
        return False

    data = outgoing.read()
    if data:
        peer_incoming.write(data)

    return True


def pair(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> None:
    """A full handshake and one request and answer, all in memory."""
    client_in, client_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(client_in, client_out, server_hostname="localhost")
    server = server_ctx.wrap_bio(server_in, server_out, server_side=True)

    for _ in range(_ROUNDS):
        if not _step(client, client_out, server_in):
            return
        if not _step(server, server_out, client_in):
            return
        if client.version() and server.version():
            break

    try:
        client.write(b"x")
        server_in.write(client_out.read())
        server.read(1)
        server.write(b"y")
        client_in.write(server_out.read())
        client.read(1)
    except ssl.SSLError:
        return


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mode", choices=("plain", "instrumented"), required=True)
    parser.add_argument("--credential", default="valid")
    parser.add_argument("--pairs", type=int, default=60)
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        pki = pki_module.build_demo_pki(Path(tmp))
        if args.mode == "instrumented":
            SSLInstrumentor().instrument(**make_providers())

        server_ctx = pki_module.server_context(pki.server, pki.ca_path)
        client_ctx = pki_module.client_context(
            pki.ca_path, pki.clients[args.credential]
        )
        for _ in range(5):
            pair(server_ctx, client_ctx)

        start = time.perf_counter()
        for _ in range(args.pairs):
            pair(server_ctx, client_ctx)
        elapsed = time.perf_counter() - start

    print(f"{args.mode}: {elapsed / args.pairs * 1e6:.0f} us per pair")
    return 0


if __name__ == "__main__":
    sys.exit(main())
