"""Per-client failure tracking, log flood control and the certificate expiry gauge.

The tracker and the limiter take a clock, so their unit tests move time by hand;
the rest runs real handshakes over loopback with in-memory telemetry.
"""

from __future__ import annotations

import ssl
import time
import tracemalloc
from typing import Any

import pytest

from otel_mtls import attributes as A
from otel_mtls import expiry
from otel_mtls.certs import parse_der, sha256_hex
from otel_mtls.pki import Credential, DemoPKI, client_context, server_context
from otel_mtls.tracking import (
    KIND_ADDRESS,
    KIND_FINGERPRINT,
    FailureTracker,
    LogLimiter,
)
from tests.conftest import Telemetry, instrumented, serve_once, tls_client

# The flood test's bound on the tracker's peak memory: 10,000 fingerprints and one
# address, measured at 3.3 MiB on CPython 3.11 (about 0.35 KB per key, the key
# strings themselves being the caller's); the bound leaves room for other builds.
FLOOD_MEMORY_BOUND = 5 * 1024 * 1024


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fingerprint(credential: Credential) -> str:
    return sha256_hex(ssl.PEM_cert_to_DER_cert(credential.cert_pem.decode()))


def _not_after(credential: Credential) -> float:
    der = ssl.PEM_cert_to_DER_cert(credential.cert_pem.decode())
    return parse_der(der, 256, 8).not_after_epoch


def _events(collected: Telemetry, name: str) -> list[Any]:
    return [log for log in collected.logs() if log.event_name == name]


def _fail_once(pki: DemoPKI, credential: Credential) -> None:
    """One handshake the server rejects (unknown CA), over TLS 1.2."""
    server = server_context(pki.server, pki.ca_path)
    client = client_context(pki.ca_path, credential, version=ssl.TLSVersion.TLSv1_2)
    result = serve_once(server, tls_client(client))

    assert isinstance(result.server, ssl.SSLError), result.server


@pytest.fixture(scope="module")
def second_untrusted(
    pki: DemoPKI, tmp_path_factory: pytest.TempPathFactory
) -> Credential:
    directory = tmp_path_factory.mktemp("untrusted2")
    return pki.untrusted_ca.issue("client-untrusted-2").write(directory)


# The tracker, unit by unit.


def test_sixth_failure_in_a_window_crosses_once() -> None:
    clock = FakeClock()
    tracker = FailureTracker(threshold=5, window=60, clock=clock)
    crossings = []

    for number in range(1, 11):
        found, _ = tracker.failure("AA", "10.0.0.1", "unknown_ca")
        crossings += [(number, c.kind, c.count) for c in found]
        clock.now += 1

    assert crossings == [(6, KIND_FINGERPRINT, 6), (6, KIND_ADDRESS, 6)]


def test_failures_spread_wider_than_the_window_never_cross() -> None:
    clock = FakeClock()
    tracker = FailureTracker(threshold=5, window=60, clock=clock)

    for _ in range(50):
        found, _ = tracker.failure("AA", None, "unknown_ca")
        assert found == []
        # Six failures span exactly 60 s: the oldest has left the window.
        clock.now += 12


def test_rearms_after_the_window() -> None:
    clock = FakeClock()
    tracker = FailureTracker(threshold=5, window=60, clock=clock)
    crossed_at = []

    # One failure every 5 s for 3 minutes: sustained, so reported once a window.
    for _ in range(37):
        found, _ = tracker.failure("AA", None, "certificate_expired")
        crossed_at += [clock.now - 1000 for _ in found]
        clock.now += 5

    assert crossed_at == [25, 85, 145]


def test_crossing_lists_the_reasons_of_the_crossing_failures() -> None:
    clock = FakeClock()
    tracker = FailureTracker(threshold=2, window=60, clock=clock)

    tracker.failure("AA", None, "unknown_ca")
    tracker.failure("AA", None, "certificate_expired")
    found, _ = tracker.failure("AA", None, "unknown_ca")

    assert [c.reasons for c in found] == [("certificate_expired", "unknown_ca")]


def test_flood_of_distinct_keys_is_bounded_and_evictions_counted() -> None:
    tracker = FailureTracker(threshold=5, window=60, max_keys=1000, clock=FakeClock())
    evicted = 0

    for number in range(10_000):
        _, dropped = tracker.failure(f"{number:064X}", None, "unknown_ca")
        evicted += dropped.get(KIND_FINGERPRINT, 0)

    assert tracker.tracked(KIND_FINGERPRINT) == 1000
    assert tracker.evictions[KIND_FINGERPRINT] == 9000
    assert evicted == 9000


def test_flood_of_100000_failures_from_10000_certificates() -> None:
    # Ten failures from each of 10,000 certificates, one address, interleaved:
    # every certificate crosses once, at its sixth failure, whatever the others.
    clock = FakeClock()
    tracker = FailureTracker(threshold=5, window=60, max_keys=10_000, clock=clock)
    keys = [f"{number:064X}" for number in range(10_000)]
    # Made before tracing starts, so that the peak is the tracker's own.
    index = {key: number for number, key in enumerate(keys)}
    crossed = [0] * len(keys)
    address_crossings = 0
    wrong_counts = 0

    tracemalloc.start()
    try:
        for round_number in range(1, 11):
            for key in keys:
                found, evicted = tracker.failure(key, "192.0.2.1", "unknown_ca")
                assert not evicted
                for crossing in found:
                    wrong_counts += crossing.count != 6
                    if crossing.kind == KIND_ADDRESS:
                        address_crossings += 1
                    else:
                        crossed[index[crossing.key]] += 1
            clock.now += 0.001 * round_number
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    print(f"tracker peak memory: {peak / 1024 / 1024:.2f} MiB")
    assert crossed == [1] * len(keys)
    assert address_crossings == 1
    assert wrong_counts == 0
    assert tracker.tracked(KIND_FINGERPRINT) == 10_000
    assert tracker.tracked(KIND_ADDRESS) == 1
    assert peak < FLOOD_MEMORY_BOUND, peak


# The log limiter, unit by unit.


def test_limiter_allows_the_limit_and_reports_the_rest() -> None:
    clock = FakeClock()
    limiter = LogLimiter(limit=10, interval=60, clock=clock)

    allowed = [limiter.admit(KIND_FINGERPRINT, "a", "AA")[0] for _ in range(50)]
    clock.now += 60
    due = limiter.due()

    assert allowed.count(True) == 10
    assert allowed[:10] == [True] * 10
    assert [(s.key, s.count) for s in due] == [("AA", 40)]
    assert limiter.due() == []


def test_limiter_reports_at_the_keys_next_record() -> None:
    clock = FakeClock()
    limiter = LogLimiter(limit=1, interval=60, clock=clock)

    limiter.admit(KIND_ADDRESS, "client.address", "10.0.0.1")
    limiter.admit(KIND_ADDRESS, "client.address", "10.0.0.1")
    clock.now += 61
    allowed, due = limiter.admit(KIND_ADDRESS, "client.address", "10.0.0.1")

    assert allowed
    assert [(s.kind, s.attribute, s.key, s.count) for s in due] == [
        (KIND_ADDRESS, "client.address", "10.0.0.1", 1)
    ]


def test_limiter_reports_what_eviction_drops() -> None:
    limiter = LogLimiter(limit=1, interval=60, max_keys=2, clock=FakeClock())

    for key in ("A", "A", "B", "C"):
        _, due = limiter.admit(KIND_FINGERPRINT, "x", key)

    assert [(s.key, s.count) for s in due] == [("A", 1)]
    assert limiter.flush() == []


# Real handshakes through the instrumentation.


def test_excessive_failures_are_reported_once_per_key(
    pki: DemoPKI, second_untrusted: Credential
) -> None:
    first = pki.clients["untrusted"]

    with instrumented() as collected:
        for _ in range(7):
            _fail_once(pki, first)
        for _ in range(2):
            _fail_once(pki, second_untrusted)

    records = _events(collected, A.EVENT_EXCESSIVE_FAILURES)
    by_kind = {log.attributes[A.MTLS_TRACKING_KEY_KIND]: log for log in records}

    assert len(records) == 2
    fingerprint = by_kind[KIND_FINGERPRINT].attributes
    assert fingerprint[A.TLS_CLIENT_HASH_SHA256] == _fingerprint(first)
    assert fingerprint[A.MTLS_TRACKING_FAILURES] == 6
    assert fingerprint[A.MTLS_TRACKING_WINDOW] == 60
    assert list(fingerprint[A.MTLS_TRACKING_REASONS]) == ["unknown_ca"]
    assert by_kind[KIND_FINGERPRINT].body == "excessive mTLS authentication failures"
    assert by_kind[KIND_FINGERPRINT].severity_text == "WARN"

    address = by_kind[KIND_ADDRESS].attributes
    assert address[A.CLIENT_ADDRESS] == "127.0.0.1"
    assert address[A.MTLS_TRACKING_FAILURES] == 6
    assert A.TLS_CLIENT_HASH_SHA256 not in address

    # The counter carries the key kind and nothing that identifies a client.
    assert collected.counts(A.METRIC_EXCESSIVE_FAILURES) == {
        ((A.MTLS_TRACKING_KEY_KIND, KIND_ADDRESS),): 1,
        ((A.MTLS_TRACKING_KEY_KIND, KIND_FINGERPRINT),): 1,
    }
    _assert_registered(collected)


def test_log_flood_control_keeps_spans_and_counts_exact(pki: DemoPKI) -> None:
    untrusted = pki.clients["untrusted"]
    valid = pki.clients["valid"]

    with instrumented(failure_log_limit=10, failure_log_interval=1) as collected:
        for _ in range(50):
            _fail_once(pki, untrusted)
        # The interval that holds the last suppressed records must end; the next
        # handshake, of any peer, then reports them.
        time.sleep(1.1)
        server = server_context(pki.server, pki.ca_path)
        serve_once(server, tls_client(client_context(pki.ca_path, valid)))

    failed_spans = [
        span
        for span in collected.spans("server")
        if (span.attributes or {}).get(A.MTLS_OUTCOME) == "failure"
    ]
    records = [
        log
        for log in _events(collected, A.EVENT_HANDSHAKE_FAILED)
        if log.attributes[A.MTLS_SIDE] == "server"
    ]
    # The clients' own failure records are limited too, keyed by the server.
    summaries = [
        log
        for log in _events(collected, A.EVENT_FAILURES_SUPPRESSED)
        if A.TLS_CLIENT_HASH_SHA256 in log.attributes
    ]
    suppressed = sum(log.attributes[A.MTLS_LOG_SUPPRESSED] for log in summaries)

    assert len(failed_spans) == 50
    server_failures = {
        key: value
        for key, value in collected.counts().items()
        if (A.MTLS_SIDE, "server") in key and (A.MTLS_OUTCOME, "failure") in key
    }
    assert sum(server_failures.values()) == 50

    # Each interval lets 10 records through; the handshakes may span a few.
    assert summaries
    assert len(records) <= 10 * (len(summaries) + 1)
    assert len(records) + suppressed == 50
    for log in summaries:
        assert log.attributes[A.MTLS_TRACKING_KEY_KIND] == KIND_FINGERPRINT
        assert log.attributes[A.TLS_CLIENT_HASH_SHA256] == _fingerprint(untrusted)
        assert log.attributes[A.MTLS_LOG_INTERVAL] == 1
    _assert_registered(collected)


def _expiry_points(collected: Telemetry) -> dict[tuple[str, str, str], float]:
    data = collected.reader.get_metrics_data()
    points: dict[tuple[str, str, str], float] = {}
    assert data is not None

    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name != A.METRIC_TIME_TO_EXPIRY:
                    continue
                for point in metric.data.data_points:
                    attrs = dict(point.attributes or {})
                    role = str(attrs.pop(A.MTLS_CERTIFICATE_ROLE))
                    ((name, sha256),) = attrs.items()
                    value: Any = getattr(point, "value", None)
                    points[(role, name, str(sha256))] = float(value)

    return points


def test_expiry_gauge_reports_served_presented_and_peer(pki: DemoPKI) -> None:
    valid = pki.clients["valid"]
    server_fp, client_fp = _fingerprint(pki.server), _fingerprint(valid)

    with instrumented() as collected:
        # Contexts made while instrumented: load_cert_chain notes their leaf and
        # puts the context under watch, with no call from the application.
        server = server_context(pki.server, pki.ca_path)
        result = serve_once(server, tls_client(client_context(pki.ca_path, valid)))
        assert result.server == "ok", result.server

        points = _expiry_points(collected)
        now = time.time()

    served = points[("served", A.TLS_SERVER_HASH_SHA256, server_fp)]
    presented = points[("presented", A.TLS_CLIENT_HASH_SHA256, client_fp)]
    assert served == pytest.approx(_not_after(pki.server) - now, abs=1.0)
    assert presented == pytest.approx(_not_after(valid) - now, abs=1.0)

    # Each side saw the other's certificate.
    assert points[("peer", A.TLS_CLIENT_HASH_SHA256, client_fp)] == pytest.approx(
        presented, abs=1.0
    )
    assert points[("peer", A.TLS_SERVER_HASH_SHA256, server_fp)] == pytest.approx(
        served, abs=1.0
    )
    del server


def test_rejected_certificates_stay_out_of_the_expiry_gauge(pki: DemoPKI) -> None:
    with instrumented() as collected:
        _fail_once(pki, pki.clients["expired"])
        points = _expiry_points(collected)

    assert not [key for key in points if key[0] == "peer"]


def test_expiry_registry_is_bounded_and_forgets_old_peers() -> None:
    clock = FakeClock()
    registry = expiry.ExpiryRegistry(max_certificates=3, max_age=100, clock=clock)

    def peers() -> list[str]:
        # Contexts other tests loaded certificates into are watched too.
        observed = registry.observe()
        return sorted(
            attrs[A.TLS_CLIENT_HASH_SHA256]
            for _, attrs in observed
            if attrs[A.MTLS_CERTIFICATE_ROLE] == "peer"
        )

    for number in range(5):
        registry.note("peer", A.TLS_CLIENT_HASH_SHA256, f"{number:02X}", 2000.0)
        clock.now += 10

    assert peers() == ["02", "03", "04"]
    clock.now += 85
    assert peers() == ["04"]


def _assert_registered(collected: Telemetry) -> None:
    emitted = {key for log in collected.logs() for key in (log.attributes or {})}
    emitted |= {key for span in collected.spans() for key in (span.attributes or {})}

    assert emitted <= A.REGISTERED_NAMES, emitted - A.REGISTERED_NAMES
