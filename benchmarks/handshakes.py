"""Full mTLS handshakes per second, with and without the instrumentation, one run.

Both sides live in this process on 127.0.0.1: a server thread accepts and
handshakes, the main thread connects. Batches alternate between the plain and
the instrumented variant so that machine noise hits both alike; the figure is
the median of the per-pair ratios (instrumented / plain throughput).

    python benchmarks/handshakes.py [--pairs 15] [--batch 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import socket
import ssl
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import (
    BatchLogRecordProcessor,
    LogRecordExporter,
    LogRecordExportResult,
)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SpanExporter,
    SpanExportResult,
)

from otel_mtls import pki as pki_module
from otel_mtls import ssl_instrumentor
from otel_mtls.ssl_instrumentor import SSLInstrumentor


class _DropSpans(SpanExporter):
    """Counts and drops: the export path runs, the network does not."""

    def __init__(self) -> None:
        self.count = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.count += len(spans)
        return SpanExportResult.SUCCESS


class _DropLogs(LogRecordExporter):
    def __init__(self) -> None:
        self.count = 0

    def export(self, batch: Sequence[Any]) -> LogRecordExportResult:
        self.count += len(batch)
        return LogRecordExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


class _Server:
    """Accepts, handshakes eagerly, closes; forever until stopped."""

    def __init__(self, ctx: ssl.SSLContext) -> None:
        self.ctx = ctx
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.port = self.listener.getsockname()[1]
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while self.running:
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return

            raw.settimeout(5)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1)
                    tls.sendall(b"y")
            except OSError:
                raw.close()

    def stop(self) -> None:
        self.running = False
        self.thread.join(2)
        self.listener.close()


def _batch(client_ctx: ssl.SSLContext, port: int, count: int) -> float:
    """Seconds for ``count`` full handshakes, each on a new connection."""
    start = time.perf_counter()

    for _ in range(count):
        raw = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                # A request and its answer: a TLS 1.3 client learns the
                # server's verdict on its certificate with the first read.
                tls.sendall(b"x")
                tls.recv(1)
        except OSError:
            raw.close()

    return time.perf_counter() - start


def make_providers() -> dict[str, Any]:
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(BatchSpanProcessor(_DropSpans()))
    logger_provider = LoggerProvider()
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(_DropLogs()))
    meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    return {
        "tracer_provider": tracer_provider,
        "logger_provider": logger_provider,
        "meter_provider": meter_provider,
    }


def measure(
    version: ssl.TLSVersion,
    credential: str,
    key_type: str,
    *,
    pairs: int,
    batch: int,
    directory: Path,
) -> dict[str, Any]:
    """Alternate plain and instrumented batches; return the ratios."""
    pki = pki_module.build_demo_pki(directory / key_type, key_type=key_type)
    server_ctx = pki_module.server_context(pki.server, pki.ca_path, version=version)
    client_ctx = pki_module.client_context(
        pki.ca_path, pki.clients[credential], version=version
    )
    providers = make_providers()
    instrumentor = SSLInstrumentor()
    server = _Server(server_ctx)
    ratios: list[float] = []
    plain_rates: list[float] = []
    instrumented_rates: list[float] = []

    try:
        _batch(client_ctx, server.port, batch // 4)

        for index in range(pairs):
            # Alternate which variant goes first, so drift favours neither.
            order = (False, True) if index % 2 == 0 else (True, False)
            rates: dict[bool, float] = {}
            for instrumented in order:
                if instrumented:
                    instrumentor.instrument(**providers)
                rates[instrumented] = batch / _batch(client_ctx, server.port, batch)
                if instrumented:
                    instrumentor.uninstrument()

            plain_rates.append(rates[False])
            instrumented_rates.append(rates[True])
            ratios.append(rates[True] / rates[False])
    finally:
        server.stop()
        for provider in providers.values():
            provider.shutdown()

    label = "ECDSA P-256" if key_type == "ec" else "RSA 2048"
    tls = version.name[-3:].replace("_", ".")
    return {
        "case": f"{credential} client, TLS {tls}, {label}",
        "pairs": pairs,
        "batch": batch,
        "plain_per_s": round(statistics.median(plain_rates), 1),
        "instrumented_per_s": round(statistics.median(instrumented_rates), 1),
        "ratio_median": round(statistics.median(ratios), 4),
        "ratio_min": round(min(ratios), 4),
        "ratio_max": round(max(ratios), 4),
    }


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=15)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--keys", default="ec,rsa", help="key types to measure: ec, rsa or both"
    )
    args = parser.parse_args(argv)

    cases = [
        (version, credential, key_type)
        for key_type in args.keys.split(",")
        for credential in ("valid", "untrusted")
        for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2)
    ]
    results = []

    with tempfile.TemporaryDirectory() as tmp:
        for version, credential, key_type in cases:
            result = measure(
                version,
                credential,
                key_type,
                pairs=args.pairs,
                batch=args.batch,
                directory=Path(tmp),
            )
            results.append(result)
            print(
                f"{result['case']:<40} plain {result['plain_per_s']:>8.1f}/s  "
                f"instrumented {result['instrumented_per_s']:>8.1f}/s  "
                f"ratio {result['ratio_median']:.3f} "
                f"[{result['ratio_min']:.3f}-{result['ratio_max']:.3f}]",
                flush=True,
            )

    report = {
        "benchmark": "handshakes",
        "python": platform.python_version(),
        "openssl": ssl.OPENSSL_VERSION,
        "machine": f"{platform.machine()}, {platform.system()}",
        "capture_rejected_certificates": True,
        "module": ssl_instrumentor.__name__,
        "results": results,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    return 0


if __name__ == "__main__":
    sys.exit(main())
