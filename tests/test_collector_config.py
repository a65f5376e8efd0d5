"""Checks of collector-config/: collector and Jaeger configs, Prometheus rules, the
Grafana dashboard, end-to-end runs of the whole stack on loopback (with and without
redaction), and of the gateway's mTLS receiver.

The collector and Jaeger come from ``collector-config/build.sh``, which caches
them outside the work tree; a cold build takes minutes, so those tests are marked
slow. promtool comes from ``collector-config/install-deps.sh``. Outside CI a
missing promtool or Go skips the tests that need it, with the reason; in CI
(``CI`` set) it fails them, and a failed build always fails with its output.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import ssl
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry._logs import SeverityNumber
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import (
    OTLPMetricExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter,
)
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.sdk._logs import LoggerProvider
from opentelemetry.sdk._logs.export import SimpleLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import StatusCode

from otel_mtls.pki import CertificateAuthority
from tests import backend
from tests.backend import CONFIG_DIR, JAEGER_CONFIG, PROMETHEUS_DIR

GRAFANA_DIR = CONFIG_DIR / "grafana"
DASHBOARD = GRAFANA_DIR / "dashboard.json"

# Every way the gateway is meant to be run: one entry per --config list.
GATEWAY_CONFIGS: tuple[tuple[str, ...], ...] = (
    ("gateway.yaml",),
    ("gateway.yaml", "redaction.yaml"),
    ("gateway.yaml", "gateway-mtls.yaml"),
    ("gateway.yaml", "gateway-mtls.yaml", "redaction.yaml"),
)
NOT_COLLECTOR_CONFIGS = frozenset({"builder-config.yaml"})

# Grafana's macros and the dashboard's variables, replaced by values that keep
# each query's PromQL structure when it is handed to promtool.
GRAFANA_SUBSTITUTIONS: tuple[tuple[str, str], ...] = (
    ("$__rate_interval", "1m"),
    ("$__interval", "15s"),
    ("$__range", "6h"),
    ("$job", ".*"),
)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        backend.missing("promtool not found; run collector-config/install-deps.sh")
    return path


@pytest.fixture(scope="session")
def collector() -> Path:
    return backend.build("collector")


@pytest.fixture(scope="session")
def jaeger() -> Path:
    return backend.build("jaeger")


def _mtls_env(directory: Path) -> dict[str, str]:
    """Paths for gateway-mtls.yaml; validate does not read them, a start does."""
    return {
        "OTEL_MTLS_GATEWAY_CERT_FILE": str(directory / "server.pem"),
        "OTEL_MTLS_GATEWAY_KEY_FILE": str(directory / "server-key.pem"),
        "OTEL_MTLS_GATEWAY_CLIENT_CA_FILE": str(directory / "clients-ca.pem"),
    }


# Collector and Jaeger configs.


def test_every_collector_config_is_validated() -> None:
    shipped = {path.name for path in CONFIG_DIR.glob("*.yaml")}
    validated = {name for names in GATEWAY_CONFIGS for name in names}

    assert shipped - NOT_COLLECTOR_CONFIGS == validated | {JAEGER_CONFIG}


@pytest.mark.slow
@backend.needs_build
@pytest.mark.parametrize("names", GATEWAY_CONFIGS, ids="+".join)
def test_gateway_config_validates(
    collector: Path, names: tuple[str, ...], tmp_path: Path
) -> None:
    result = backend.run(
        [str(collector), "validate", *backend.config_args(names)],
        env=_mtls_env(tmp_path),
    )

    backend.assert_ok(result)


@pytest.mark.slow
@backend.needs_build
def test_validate_rejects_a_broken_gateway_config(
    collector: Path, tmp_path: Path
) -> None:
    # Guards the test above: a config naming a processor it never defines must
    # fail, or "validate" is not checking what we think it checks.
    broken = (CONFIG_DIR / "gateway.yaml").read_text(encoding="utf-8")
    broken = broken.replace(
        "processors: [memory_limiter, batch]",
        "processors: [memory_limiter, batch, attributes/undefined]",
        1,
    )
    (tmp_path / "broken.yaml").write_text(broken, encoding="utf-8")

    result = backend.run(
        [str(collector), "validate", f"--config={tmp_path / 'broken.yaml'}"]
    )

    assert result.returncode != 0
    assert "attributes/undefined" in result.stderr + result.stdout


@pytest.mark.slow
@backend.needs_build
def test_jaeger_config_validates(jaeger: Path) -> None:
    result = backend.run(
        [str(jaeger), "validate", *backend.config_args([JAEGER_CONFIG])]
    )

    backend.assert_ok(result)


# Prometheus.


def test_prometheus_config_is_valid(promtool: str) -> None:
    # check config also checks the rule files the config lists.
    result = backend.run(
        [promtool, "check", "config", "prometheus.yml"], cwd=PROMETHEUS_DIR
    )

    backend.assert_ok(result)


def test_alert_rules_are_valid(promtool: str) -> None:
    result = backend.run([promtool, "check", "rules", "alerts.yml"], cwd=PROMETHEUS_DIR)

    backend.assert_ok(result)


def test_alert_rule_unit_tests_pass(promtool: str) -> None:
    result = backend.run(
        [promtool, "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS_DIR
    )

    backend.assert_ok(result)


def _alert_names(text: str) -> set[str]:
    return set(re.findall(r"^\s*- alert: (\S+)$", text, re.MULTILINE))


def _alert_test_cases(text: str) -> list[tuple[str, bool]]:
    """(alertname, expects firing) for each alert_rule_test entry."""
    pattern = re.compile(r"^\s*alertname: (\S+)\n\s*exp_alerts:( \[\])?$", re.MULTILINE)
    return [(m.group(1), m.group(2) is None) for m in pattern.finditer(text)]


def test_every_alert_is_tested_firing_and_quiet() -> None:
    alerts = _alert_names((PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8"))
    cases = _alert_test_cases(
        (PROMETHEUS_DIR / "alerts_test.yml").read_text(encoding="utf-8")
    )

    assert alerts, "no alerts found in alerts.yml"
    assert {name for name, firing in cases if firing} == alerts
    assert {name for name, firing in cases if not firing} == alerts


# Grafana.


def _walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


def _dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def _dashboard_queries() -> list[str]:
    queries = []
    for node in _walk(_dashboard()["panels"]):
        if "expr" in node:
            query = node["expr"]
            for macro, value in GRAFANA_SUBSTITUTIONS:
                query = query.replace(macro, value)
            queries.append(query)
    return queries


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    queries = _dashboard_queries()
    assert len(queries) >= 10
    assert not [q for q in queries if "$" in q], "unsubstituted Grafana variable"

    # promtool parses PromQL only inside rule files: one recording rule each.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{number}", "expr": query}
                    for number, query in enumerate(queries)
                ],
            }
        ]
    }
    rule_file = tmp_path / "dashboard-rules.yml"
    rule_file.write_text(json.dumps(rules), encoding="utf-8")  # JSON is YAML

    result = backend.run([promtool, "check", "rules", str(rule_file)])

    backend.assert_ok(result)
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_dashboard_structure() -> None:
    dashboard = _dashboard()
    panels = dashboard["panels"]
    ids = [panel["id"] for panel in panels]

    assert dashboard["uid"] == "otel-mtls"
    assert isinstance(dashboard["schemaVersion"], int)
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["title"] and panel["description"], panel["id"]
        assert panel["targets"], panel["title"]
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


@pytest.mark.slow
def test_dashboard_matches_grafana_schema() -> None:
    if shutil.which("npm") is None:
        backend.missing("npm is needed to install @grafana/schema (check-schema.sh)")

    result = backend.run([str(GRAFANA_DIR / "check-schema.sh")], timeout=600)

    backend.assert_ok(result)


def test_dashboard_datasources_are_provisioned() -> None:
    provisioned = set(
        re.findall(
            r"^\s+uid: (\S+)$",
            (GRAFANA_DIR / "provisioning" / "datasources.yaml").read_text(
                encoding="utf-8"
            ),
            re.MULTILINE,
        )
    )
    used = {
        node["datasource"]["uid"]
        for node in _walk(_dashboard())
        if isinstance(node.get("datasource"), dict)
    }

    assert used - {"-- Grafana --"} == provisioned


def test_dashboard_and_alerts_use_only_known_names() -> None:
    # The names as the gateway exposes them; the end-to-end test below checks
    # the translation for the metrics the package emits.
    metrics = {
        "mtls_handshakes_total",
        "mtls_handshake_duration_seconds_bucket",
        "mtls_client_auth_failures_total",
        "mtls_certificate_time_to_expiry_seconds",
        "mtls_revocation_checks_total",
        "mtls_server_context_audit_findings_total",
        "mtls_instrumentation_errors_total",
    }
    labels = {
        "mtls_handshake_side",
        "mtls_handshake_outcome",
        "mtls_failure_reason",
        "mtls_certificate_role",
        "mtls_revocation_result",
        "mtls_revocation_fallback",
        "mtls_audit_finding",
    }
    alerts = (PROMETHEUS_DIR / "alerts.yml").read_text(encoding="utf-8")
    queries = " ".join(_dashboard_queries())

    for text in (alerts, queries):
        assert set(re.findall(r"\bmtls_[a-z0-9_]+", text)) <= metrics | labels
    assert set(re.findall(r"\bmtls_[a-z0-9_]+", queries)) >= metrics


# The whole stack on loopback.


# What the test sends: one failed server-side handshake, as the package reports it.
CLIENT_FINGERPRINT = "3F0A" * 16
CLIENT_SUBJECT = "CN=mallory,O=Example"
CLIENT_ADDRESS = "192.0.2.44"
FAILURE_ATTRIBUTES: dict[str, str] = {
    "mtls.handshake.side": "server",
    "mtls.handshake.outcome": "failure",
    "mtls.failure.reason": "unknown_ca",
    "tls.protocol.version": "1.3",
}


def _send_failed_handshake(endpoint: str, service: str) -> None:
    resource = Resource.create({"service.name": service})
    identity = {
        "tls.client.hash.sha256": CLIENT_FINGERPRINT,
        "tls.client.subject": CLIENT_SUBJECT,
        "client.address": CLIENT_ADDRESS,
    }

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(
        SimpleSpanProcessor(OTLPSpanExporter(endpoint=endpoint, insecure=True))
    )
    with tracer_provider.get_tracer("otel_mtls").start_as_current_span(
        "TLS server handshake", attributes={**FAILURE_ATTRIBUTES, **identity}
    ) as span:
        span.set_status(StatusCode.ERROR, "unknown_ca")

        logger_provider = LoggerProvider(resource=resource)
        logger_provider.add_log_record_processor(
            SimpleLogRecordProcessor(OTLPLogExporter(endpoint=endpoint, insecure=True))
        )
        logger_provider.get_logger("otel_mtls").emit(
            event_name="mtls.handshake.failed",
            severity_number=SeverityNumber.WARN,
            severity_text="WARN",
            body="TLS handshake failed: unknown_ca",
            attributes={**FAILURE_ATTRIBUTES, **identity},
        )

    def expiry(_: CallbackOptions) -> list[Observation]:
        attributes = {
            "mtls.certificate.role": "served",
            "tls.server.hash.sha256": "AB" * 32,
        }
        return [Observation(86400 * 10, attributes)]

    reader = PeriodicExportingMetricReader(
        OTLPMetricExporter(endpoint=endpoint, insecure=True),
        export_interval_millis=3_600_000,
    )
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = meter_provider.get_meter("otel_mtls")
    meter.create_counter("mtls.handshakes", unit="{handshake}").add(
        1, FAILURE_ATTRIBUTES
    )
    meter.create_histogram("mtls.handshake.duration", unit="s").record(
        0.012, FAILURE_ATTRIBUTES
    )
    meter.create_observable_gauge(
        "mtls.certificate.time_to_expiry", callbacks=[expiry], unit="s"
    )

    tracer_provider.shutdown()
    logger_provider.shutdown()
    meter_provider.shutdown()


@pytest.mark.slow
@backend.needs_build
@pytest.mark.parametrize("redacted", [False, True], ids=["plain", "redacted"])
def test_stack_delivers_telemetry(
    collector: Path, jaeger: Path, tmp_path: Path, redacted: bool
) -> None:
    configs = ("gateway.yaml", "redaction.yaml") if redacted else ("gateway.yaml",)
    service = f"otel-mtls-test-{uuid.uuid4().hex[:8]}"
    expected_address = (
        hashlib.sha256(CLIENT_ADDRESS.encode()).hexdigest()
        if redacted
        else CLIENT_ADDRESS
    )

    with backend.stack(collector, jaeger, configs, tmp_path) as stack:
        _send_failed_handshake(stack.gateway_grpc, service)

        handshakes = backend.wait_for_series(
            stack, f'mtls_handshakes_total{{job="{service}"}}'
        )
        failures = backend.wait_for_series(
            stack, f'mtls_client_auth_failures_total{{job="{service}"}}'
        )
        backend.wait_for_series(
            stack, f'mtls_handshake_duration_seconds_bucket{{job="{service}"}}'
        )
        expiry = backend.wait_for_series(
            stack, f'mtls_certificate_time_to_expiry_seconds{{job="{service}"}}'
        )
        spans: list[dict[str, Any]] = []

        def spans_arrived() -> bool:
            spans[:] = backend.jaeger_spans(stack, service)
            return bool(spans)

        backend.wait_for(
            "spans in Jaeger", spans_arrived, stack.logs, backend.DELIVERY_TIMEOUT
        )
        audit_logs = stack.audit_dir / "logs.jsonl"
        backend.wait_for(
            "the audit log file",
            lambda: audit_logs.is_file() and audit_logs.stat().st_size > 0,
            stack.logs,
            backend.DELIVERY_TIMEOUT,
        )

    assert len(handshakes) == 1
    # Every resource attribute but service.name and service.instance.id goes to
    # target_info; the scope becomes otel_scope_* labels (empty ones, such as
    # the version here, are no labels in Prometheus).
    labels = handshakes[0]["metric"]
    assert labels == {
        "__name__": "mtls_handshakes_total",
        "job": service,
        "instance": labels["instance"],
        "otel_scope_name": "otel_mtls",
        **{key.replace(".", "_"): value for key, value in FAILURE_ATTRIBUTES.items()},
    }
    assert handshakes[0]["value"][1] == "1"

    assert len(failures) == 1
    assert failures[0]["value"][1] == "1"
    labels = failures[0]["metric"]
    assert labels["otel_scope_name"].endswith("/connector/countconnector")
    assert labels["tls_client_hash_sha256"] == CLIENT_FINGERPRINT
    assert labels["client_address"] == expected_address
    assert labels["mtls_failure_reason"] == "unknown_ca"

    assert expiry[0]["value"][1] == str(86400 * 10)

    assert [span["operationName"] for span in spans] == ["TLS server handshake"]
    tags = {tag["key"]: tag["value"] for tag in spans[0]["tags"]}
    assert tags["mtls.failure.reason"] == "unknown_ca"
    assert tags["client.address"] == expected_address
    assert ("tls.client.subject" in tags) is not redacted

    audit = audit_logs.read_text(encoding="utf-8")
    assert "mtls.handshake.failed" in audit
    assert (CLIENT_SUBJECT in audit) is not redacted
    assert (CLIENT_ADDRESS in audit) is not redacted


def _post(url: str, context: ssl.SSLContext) -> int:
    request = urllib.request.Request(
        url, data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=5, context=context) as response:
        status: int = response.status
        return status


@pytest.mark.slow
@backend.needs_build
def test_mtls_gateway_requires_client_certificate(
    collector: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = CertificateAuthority.create("otel-mtls test CA")
    server = ca.issue("gateway", san_ips=["127.0.0.1"], usage="server").write(tmp_path)
    client = ca.issue("app").write(tmp_path)
    ca_file = ca.write(tmp_path / "ca.pem")
    env = {
        **backend.gateway_env(tmp_path),
        "OTEL_MTLS_GATEWAY_CERT_FILE": str(server.cert_path),
        "OTEL_MTLS_GATEWAY_KEY_FILE": str(server.key_path),
        "OTEL_MTLS_GATEWAY_CLIENT_CA_FILE": str(ca_file),
    }
    grpc_endpoint = env["OTEL_MTLS_GATEWAY_GRPC_ENDPOINT"]
    http_endpoint = env["OTEL_MTLS_GATEWAY_HTTP_ENDPOINT"]
    health_endpoint = env["OTEL_MTLS_GATEWAY_HEALTH_ENDPOINT"]
    exporter_endpoint = env["OTEL_MTLS_PROMETHEUS_EXPORTER_ENDPOINT"]
    gateway = backend.start(
        "gateway",
        [str(collector), *backend.config_args(("gateway.yaml", "gateway-mtls.yaml"))],
        env,
        tmp_path,
    )
    try:
        backend.wait_for(
            "the gateway",
            backend.answers(f"http://{health_endpoint}/"),
            gateway.output,
            backend.PROCESS_START_TIMEOUT,
        )

        # gRPC with a client certificate, configured the way the README tells
        # applications to: the metric reaches the exporter.
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca_file))
        monkeypatch.setenv(
            "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", str(client.cert_path)
        )
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_CLIENT_KEY", str(client.key_path))
        exporter = OTLPMetricExporter(endpoint=f"https://{grpc_endpoint}")
        reader = PeriodicExportingMetricReader(
            exporter, export_interval_millis=3_600_000
        )
        provider = MeterProvider(metric_readers=[reader])
        provider.get_meter("otel_mtls").create_counter("mtls.handshakes").add(
            1, FAILURE_ATTRIBUTES
        )
        provider.shutdown()
        backend.wait_for(
            "the metric sent over mTLS",
            lambda: (
                b"mtls_handshakes_total{"
                in backend.http_get(f"http://{exporter_endpoint}/metrics")[1]
            ),
            gateway.output,
            backend.DELIVERY_TIMEOUT,
        )

        # HTTP: accepted with a client certificate, refused without one.
        url = f"https://{http_endpoint}/v1/logs"
        context = ssl.create_default_context(cafile=str(ca_file))
        anonymous = ssl.create_default_context(cafile=str(ca_file))
        context.load_cert_chain(str(client.cert_path), str(client.key_path))

        assert _post(url, context) == 200
        with pytest.raises((ssl.SSLError, ConnectionResetError, urllib.error.URLError)):
            _post(url, anonymous)
    finally:
        backend.stop(gateway)
