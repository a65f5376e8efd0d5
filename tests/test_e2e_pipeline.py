"""End to end: instrumented handshakes through the shipped gateway to Jaeger and
Prometheus, with the shipped alert rules.

The collector and Jaeger come from ``collector-config/build.sh`` (cached), and
Prometheus from Debian's package; everything listens on 127.0.0.1 on free ports.
``otel-mtls demo`` and ``tests/offender.py`` run as separate processes exporting
over OTLP/HTTP; the test then reads back what a user would see.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests import backend

pytestmark = [pytest.mark.slow, backend.needs_build]

ROOT = Path(__file__).resolve().parent.parent
DEMO_SERVICE = "otel-mtls-demo"
OFFENDER_SERVICE = "otel-mtls-offender"
OFFENDER_FAILURES = 8


@pytest.fixture(scope="module")
def collector() -> Path:
    return backend.build("collector")


@pytest.fixture(scope="module")
def jaeger() -> Path:
    return backend.build("jaeger")


def _python(
    args: list[str], endpoint: str, service: str, directory: Path
) -> subprocess.CompletedProcess[str]:
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{endpoint}",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_SERVICE_NAME": service,
    }
    result = backend.run([sys.executable, *args], env=env, cwd=ROOT, timeout=180)
    backend.assert_ok(result)
    (directory / f"{service}.out").write_text(result.stdout, encoding="utf-8")
    return result


def _run_demo(stack: backend.Stack, directory: Path) -> list[dict[str, Any]]:
    result = _python(
        ["-m", "otel_mtls", "demo", "--json"],
        stack.gateway_http,
        DEMO_SERVICE,
        directory,
    )
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def _run_offender(stack: backend.Stack, directory: Path) -> dict[str, str]:
    result = _python(
        [
            "-m",
            "tests.offender",
            str(directory / "offender-pki"),
            f"--failures={OFFENDER_FAILURES}",
        ],
        stack.gateway_http,
        OFFENDER_SERVICE,
        directory,
    )
    fingerprints: dict[str, str] = json.loads(result.stdout.strip().splitlines()[-1])
    return fingerprints


def _server_failures(attempts: list[dict[str, Any]]) -> Counter[str]:
    """Failed server-side handshakes per client fingerprint, "none" without one."""
    counts: Counter[str] = Counter()
    for attempt in attempts:
        server = attempt["server"] or {}
        if server.get("mtls.handshake.outcome") == "failure":
            counts[server.get("tls.client.hash.sha256", "none")] += 1
    return counts


def _server_spans(stack: backend.Stack, service: str, expected: int) -> list[Any]:
    found: list[dict[str, Any]] = []

    def arrived() -> bool:
        found[:] = [
            span
            for span in backend.jaeger_spans(stack, service)
            if span["operationName"] == "TLS server handshake"
        ]
        return len(found) >= expected

    backend.wait_for(
        f"{expected} server spans of {service} in Jaeger",
        arrived,
        stack.logs,
        backend.DELIVERY_TIMEOUT,
    )
    return [{tag["key"]: tag["value"] for tag in span["tags"]} for span in found]


def _values(stack: backend.Stack, query: str, label: str) -> dict[str, float]:
    return {
        series["metric"].get(label, ""): float(series["value"][1])
        for series in backend.prometheus_series(stack, query)
    }


def _wait_for_values(
    stack: backend.Stack, query: str, label: str, expected: dict[str, float]
) -> dict[str, float]:
    seen: dict[str, float] = {}

    def probe() -> bool:
        seen.clear()
        seen.update(_values(stack, query, label))
        return seen == expected

    try:
        backend.wait_for(query, probe, stack.logs, backend.DELIVERY_TIMEOUT)
    except pytest.fail.Exception:
        assert seen == expected, query
    return seen


def _firing(stack: backend.Stack, alert: str) -> list[dict[str, str]]:
    query = f'ALERTS{{alertname="{alert}", alertstate="firing"}}'
    url = f"{stack.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, body = backend.http_get(url)
    assert status == 200, body
    return [series["metric"] for series in json.loads(body)["data"]["result"]]


def test_handshakes_reach_jaeger_and_prometheus_and_alerts_fire(
    collector: Path, jaeger: Path, tmp_path: Path
) -> None:
    if os.environ.get("OTEL_MTLS_SKIP_E2E") == "1":
        pytest.skip("OTEL_MTLS_SKIP_E2E=1")

    with backend.stack(collector, jaeger, ("gateway.yaml",), tmp_path) as stack:
        attempts = _run_demo(stack, tmp_path)
        offender = _run_offender(stack, tmp_path)
        demo_failures = _server_failures(attempts)
        demo_fingerprints = {
            attempt["server"]["tls.client.hash.sha256"]
            for attempt in attempts
            if attempt["server"] and "tls.client.hash.sha256" in attempt["server"]
        }

        # Jaeger: every server handshake, with the exact client fingerprints,
        # rejected certificates included.
        demo_spans = _server_spans(stack, DEMO_SERVICE, len(attempts))
        offender_spans = _server_spans(stack, OFFENDER_SERVICE, OFFENDER_FAILURES + 1)
        assert len(demo_spans) == len(attempts)
        assert {
            tags["tls.client.hash.sha256"]
            for tags in demo_spans
            if "tls.client.hash.sha256" in tags
        } == demo_fingerprints
        assert Counter(
            (tags.get("tls.client.hash.sha256"), tags["mtls.handshake.outcome"])
            for tags in offender_spans
        ) == {
            (offender["offender"], "failure"): OFFENDER_FAILURES,
            (offender["valid"], "success"): 1,
        }
        rejected = [
            t for t in offender_spans if t["mtls.handshake.outcome"] == "failure"
        ]
        assert {t["mtls.failure.reason"] for t in rejected} == {"unknown_ca"}
        assert {t["mtls.peer_certificate.source"] for t in rejected} == {
            "handshake_message"
        }

        # Prometheus: the gateway's per-client counter, exactly.
        _wait_for_values(
            stack,
            f'mtls_client_auth_failures_total{{job="{DEMO_SERVICE}"}}',
            "tls_client_hash_sha256",
            {key: float(value) for key, value in demo_failures.items()},
        )
        _wait_for_values(
            stack,
            f'mtls_client_auth_failures_total{{job="{OFFENDER_SERVICE}"}}',
            "tls_client_hash_sha256",
            {offender["offender"]: float(OFFENDER_FAILURES)},
        )
        _wait_for_values(
            stack,
            "sum by (job) (mtls_handshakes_total{"
            'mtls_handshake_side="server", mtls_handshake_outcome="failure"})',
            "job",
            {
                DEMO_SERVICE: float(sum(demo_failures.values())),
                OFFENDER_SERVICE: float(OFFENDER_FAILURES),
            },
        )
        # The in-process tracker saw the offender cross, once per key kind.
        _wait_for_values(
            stack,
            f'mtls_client_excessive_failure_alerts_total{{job="{OFFENDER_SERVICE}"}}',
            "mtls_tracking_key_kind",
            {"fingerprint": 1.0, "address": 1.0},
        )
        # And the expiry gauge has the certificate the offender's server serves.
        _wait_for_values(
            stack,
            "count by (tls_server_hash_sha256) ("
            "mtls_certificate_time_to_expiry_seconds{"
            f'job="{OFFENDER_SERVICE}", mtls_certificate_role="served"}})',
            "tls_server_hash_sha256",
            {offender["server"]: 1.0},
        )

        # The alert fires for the offender's certificate, and for no other.
        firing: list[dict[str, str]] = []

        def offender_alerted() -> bool:
            firing[:] = _firing(stack, "MTLSClientCertificateRepeatedFailures")
            return bool(firing)

        backend.wait_for(
            "MTLSClientCertificateRepeatedFailures",
            offender_alerted,
            stack.logs,
            backend.DELIVERY_TIMEOUT,
        )
        assert [
            (alert["job"], alert["tls_client_hash_sha256"]) for alert in firing
        ] == [(OFFENDER_SERVICE, offender["offender"])]

        audit = (stack.audit_dir / "logs.jsonl").read_text(encoding="utf-8")
        assert "mtls.client.excessive_failures" in audit
