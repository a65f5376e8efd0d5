"""Running the collector-config/ stack in tests: builds, processes, ports, queries.

The collector and Jaeger come from ``collector-config/build.sh``, which caches
them outside the work tree; Prometheus and promtool come from Debian's packages
(``collector-config/install-deps.sh``). Outside CI a missing tool skips the test
that needs it, with the reason; in CI (``CI`` set) it fails it. Every listener is
on 127.0.0.1 on a free port, and every wait has a deadline.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NoReturn, Optional

import pytest

CONFIG_DIR = Path(__file__).resolve().parent.parent / "collector-config"
BUILD_SCRIPT = CONFIG_DIR / "build.sh"
PROMETHEUS_DIR = CONFIG_DIR / "prometheus"
JAEGER_CONFIG = "jaeger.yaml"

IN_CI = bool(os.environ.get("CI"))
PROCESS_START_TIMEOUT = 60.0
DELIVERY_TIMEOUT = 60.0

# Whichever test first asks for a binary pays for building it (about 7 minutes
# for the collector and 11 for Jaeger on 2 cores), inside its own timeout.
needs_build = pytest.mark.timeout(1800)


def missing(what: str) -> NoReturn:
    """Skip outside CI, fail in CI, where every tool is meant to be installed."""
    if IN_CI:
        pytest.fail(what)
    pytest.skip(what)


def run(
    args: Sequence[str],
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[Path] = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args,
        env=None if env is None else {**os.environ, **env},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def assert_ok(result: subprocess.CompletedProcess[str]) -> None:
    command = " ".join(str(arg) for arg in result.args)
    assert result.returncode == 0, (
        f"{command} exited {result.returncode}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )


def build(target: str) -> Path:
    if shutil.which("go") is None:
        missing("Go is needed to build the collector and Jaeger (build.sh)")

    # A cold build compiles a few hundred modules: minutes, not seconds.
    result = run([str(BUILD_SCRIPT), target], timeout=3600)
    if result.returncode != 0:
        pytest.fail(f"build.sh {target} failed:\n{result.stderr}", pytrace=False)

    binary = Path(result.stdout.strip())
    assert binary.is_file(), f"build.sh {target} printed {result.stdout!r}"
    return binary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def config_args(names: Sequence[str], directory: Path = CONFIG_DIR) -> list[str]:
    return [f"--config={directory / name}" for name in names]


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-6000:]


@dataclass
class Stack:
    gateway_grpc: str
    gateway_http: str
    jaeger_query: str
    prometheus: str
    audit_dir: Path
    processes: list[Process]

    def logs(self) -> str:
        return "\n".join(
            f"--- {process.name} ---\n{process.output()}" for process in self.processes
        )


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def wait_for(
    what: str, probe: Callable[[], bool], stack_logs: Callable[[], str], timeout: float
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if probe():
                return
        time.sleep(0.5)
    pytest.fail(f"timed out waiting for {what}\n{stack_logs()}", pytrace=False)


def start(
    name: str, args: Sequence[str], env: Mapping[str, str], directory: Path
) -> Process:
    log = directory / f"{name}.log"
    with log.open("wb") as sink:
        popen = subprocess.Popen(
            args,
            env={**os.environ, **env},
            cwd=directory,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    return Process(name, popen, log)


def stop(process: Process) -> None:
    process.popen.terminate()
    try:
        process.popen.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.popen.kill()
        process.popen.wait()


def prometheus_config(directory: Path, exporter: str, telemetry: str) -> Path:
    """A copy of prometheus.yml for this run's ports, scraping and evaluating every
    second, beside a copy of the shipped alert rules."""
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8")
    text = text.replace("127.0.0.1:9464", exporter).replace("127.0.0.1:8888", telemetry)
    text = text.replace("scrape_interval: 15s", "scrape_interval: 1s")
    text = text.replace("evaluation_interval: 15s", "evaluation_interval: 1s")
    shutil.copy(PROMETHEUS_DIR / "alerts.yml", directory / "alerts.yml")
    config = directory / "prometheus.yml"
    config.write_text(text, encoding="utf-8")
    return config


def loopback() -> str:
    return f"127.0.0.1:{free_port()}"


def gateway_env(directory: Path) -> dict[str, str]:
    """Free ports and an audit directory for one gateway run."""
    # The file exporter creates its files, not their directory.
    (directory / "audit").mkdir()
    return {
        "OTEL_MTLS_GATEWAY_GRPC_ENDPOINT": loopback(),
        "OTEL_MTLS_GATEWAY_HTTP_ENDPOINT": loopback(),
        "OTEL_MTLS_GATEWAY_HEALTH_ENDPOINT": loopback(),
        "OTEL_MTLS_GATEWAY_TELEMETRY_PORT": str(free_port()),
        "OTEL_MTLS_PROMETHEUS_EXPORTER_ENDPOINT": loopback(),
        "OTEL_MTLS_AUDIT_DIR": str(directory / "audit"),
        "OTEL_MTLS_JAEGER_OTLP_GRPC_ENDPOINT": loopback(),
    }


def jaeger_env() -> dict[str, str]:
    """Free ports for one Jaeger run, except the OTLP gRPC one it shares."""
    return {
        "OTEL_MTLS_JAEGER_OTLP_HTTP_ENDPOINT": loopback(),
        "OTEL_MTLS_JAEGER_QUERY_HTTP_ENDPOINT": loopback(),
        "OTEL_MTLS_JAEGER_QUERY_GRPC_ENDPOINT": loopback(),
        "OTEL_MTLS_JAEGER_HEALTH_ENDPOINT": loopback(),
        "OTEL_MTLS_JAEGER_TELEMETRY_PORT": str(free_port()),
    }


def answers(url: str) -> Callable[[], bool]:
    return lambda: http_get(url)[0] == 200


@contextlib.contextmanager
def stack(
    collector: Path, jaeger: Path, configs: Sequence[str], directory: Path
) -> Iterator[Stack]:
    prometheus_binary = shutil.which("prometheus")
    if prometheus_binary is None:
        missing("prometheus not found; run collector-config/install-deps.sh")

    env = {**gateway_env(directory), **jaeger_env()}
    prometheus = loopback()
    prometheus_file = prometheus_config(
        directory,
        env["OTEL_MTLS_PROMETHEUS_EXPORTER_ENDPOINT"],
        f"127.0.0.1:{env['OTEL_MTLS_GATEWAY_TELEMETRY_PORT']}",
    )
    stack = Stack(
        gateway_grpc=env["OTEL_MTLS_GATEWAY_GRPC_ENDPOINT"],
        gateway_http=env["OTEL_MTLS_GATEWAY_HTTP_ENDPOINT"],
        jaeger_query=f"http://{env['OTEL_MTLS_JAEGER_QUERY_HTTP_ENDPOINT']}",
        prometheus=f"http://{prometheus}",
        audit_dir=Path(env["OTEL_MTLS_AUDIT_DIR"]),
        processes=[],
    )
    # Each process, and the URL that answers 200 once it is ready.
    commands = {
        "jaeger": (
            [str(jaeger), *config_args([JAEGER_CONFIG])],
            f"{stack.jaeger_query}/api/services",
        ),
        "gateway": (
            [str(collector), *config_args(configs)],
            f"http://{env['OTEL_MTLS_GATEWAY_HEALTH_ENDPOINT']}/",
        ),
        "prometheus": (
            [
                prometheus_binary,
                f"--config.file={prometheus_file}",
                f"--web.listen-address={prometheus}",
                f"--storage.tsdb.path={directory / 'prometheus-data'}",
            ],
            f"{stack.prometheus}/-/ready",
        ),
    }
    try:
        for name, (command, ready) in commands.items():
            stack.processes.append(start(name, command, env, directory))
            wait_for(
                f"{name} at {ready}", answers(ready), stack.logs, PROCESS_START_TIMEOUT
            )
        yield stack
    finally:
        for process in reversed(stack.processes):
            stop(process)


def prometheus_series(stack: Stack, query: str) -> list[dict[str, Any]]:
    url = f"{stack.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    status, body = http_get(url)
    assert status == 200, body
    result: list[dict[str, Any]] = json.loads(body)["data"]["result"]
    return result


def wait_for_series(stack: Stack, query: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def probe() -> bool:
        found[:] = prometheus_series(stack, query)
        return bool(found)

    wait_for(f"Prometheus series {query}", probe, stack.logs, DELIVERY_TIMEOUT)
    return found


def jaeger_spans(stack: Stack, service: str) -> list[dict[str, Any]]:
    url = f"{stack.jaeger_query}/api/traces?" + urllib.parse.urlencode(
        {"service": service}
    )
    status, body = http_get(url)
    if status != 200:
        return []
    traces = json.loads(body).get("data") or []
    return [span for trace in traces for span in trace["spans"]]
