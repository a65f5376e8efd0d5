"""Settings of the instrumentation: keyword argument, then environment, then default.

Everything is read when ``instrument()`` runs, never at import, so a process can
change its environment before switching the instrumentation on. Each setting is
documented once, in ``SETTINGS``, from which the configuration page is generated.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

_logger = logging.getLogger(__name__)

ENV_PREFIX: Final = "OTEL_PYTHON_MTLS_"

_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class Setting:
    """One setting: its keyword, environment variable, type, default and meaning."""

    keyword: str
    type: type
    default: Any
    description: str

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.keyword.upper()


SETTINGS: Final[tuple[Setting, ...]] = (
    Setting(
        "capture_rejected_certificates",
        bool,
        True,
        "Servers that request client certificates read the client's Certificate "
        "handshake message, so that a rejected certificate is still recorded "
        "(fingerprint, subject, issuer, serial, validity), with the exact alert.",
    ),
    Setting(
        "capture_client_messages",
        bool,
        False,
        "Also read the handshake messages of client connections: exact alerts, "
        "whether the server asked for a certificate, and the rejected server "
        "certificate on Python 3.9. Off by default: it costs a GIL round-trip per "
        "TLS record.",
    ),
    Setting(
        "capture_chain_pem",
        bool,
        False,
        "Add the peer's full chain as PEM (`tls.{client,server}.certificate_chain`)"
        " to spans. Off by default: chains are large.",
    ),
    Setting(
        "log_success",
        bool,
        False,
        "Also emit a log record (INFO) for every successful handshake. Failures "
        "always produce a WARN record.",
    ),
    Setting(
        "max_name_length",
        int,
        1024,
        "Cap, in characters, for subjects, issuers, SANs and error details.",
    ),
    Setting(
        "max_san_count",
        int,
        32,
        "Cap on the number of subject alternative names recorded per certificate.",
    ),
    Setting(
        "cert_cache_size",
        int,
        1024,
        "Parsed certificates kept (least recently used first out), keyed by their DER.",
    ),
    Setting(
        "failure_threshold",
        int,
        5,
        "Per-client failure tracking: a client whose failed server-side handshakes "
        "within failure_window exceed this number (the sixth by default) gets one "
        "`mtls.client.excessive_failures` WARN record and a count in "
        "`mtls.client.excessive_failure_alerts`. Clients are keyed by certificate "
        "fingerprint and, separately, by address.",
    ),
    Setting(
        "failure_window",
        int,
        60,
        "Length in seconds of the sliding window of failure tracking. A client that "
        "crossed the threshold is reported again at the earliest one window later.",
    ),
    Setting(
        "max_tracked_clients",
        int,
        10_000,
        "Most fingerprints, and most addresses, that failure tracking and log flood "
        "control each remember; the least recently failing is forgotten first and "
        "counted in `mtls.tracking.evictions`. About 0.4 KB each.",
    ),
    Setting(
        "failure_log_limit",
        int,
        10,
        "Log flood control: at most this many `mtls.handshake.failed` records per "
        "peer (certificate fingerprint, else address) per failure_log_interval. "
        "The rest are counted and reported in one "
        "`mtls.handshake.failures_suppressed` record once the interval has ended. "
        "Spans and metrics are never limited.",
    ),
    Setting(
        "failure_log_interval",
        int,
        60,
        "Length in seconds of the log flood control interval.",
    ),
    Setting(
        "expiry_max_certificates",
        int,
        256,
        "Certificates learned from handshakes (peers, and those a client "
        "presented) that `mtls.certificate.time_to_expiry` reports, each one "
        "series; the least recently seen is dropped first.",
    ),
    Setting(
        "expiry_max_age",
        int,
        86_400,
        "Seconds after which a certificate learned from handshakes and not seen "
        "again leaves `mtls.certificate.time_to_expiry`.",
    ),
)


@dataclass(frozen=True)
class Config:
    """The resolved settings of one ``instrument()`` call."""

    capture_rejected_certificates: bool = True
    capture_client_messages: bool = False
    capture_chain_pem: bool = False
    log_success: bool = False
    max_name_length: int = 1024
    max_san_count: int = 32
    cert_cache_size: int = 1024
    failure_threshold: int = 5
    failure_window: int = 60
    max_tracked_clients: int = 10_000
    failure_log_limit: int = 10
    failure_log_interval: int = 60
    expiry_max_certificates: int = 256
    expiry_max_age: int = 86_400


def _parse(setting: Setting, raw: object) -> Any:
    """Check one value, from a keyword argument or the environment.

    Keyword values get the same checks as environment text: ``"false"`` is
    false, and a length of zero or less is refused rather than silently slicing
    names apart.
    """
    if setting.type is bool:
        if isinstance(raw, bool):
            return raw

        text = str(raw).strip().lower()
        if text in _TRUE:
            return True

        if text in _FALSE:
            return False

        raise ValueError(f"expected true or false, got {raw!r}")

    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ValueError(f"expected a positive integer, got {raw!r}")

    try:
        value = int(raw)
    except ValueError:
        value = 0

    if value < 1:
        raise ValueError(f"expected a positive integer, got {raw!r}")

    return value


def resolve(
    kwargs: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> Config:
    """Resolve every setting; a bad value falls back to the default.

    A misconfigured setting must not stop the application: it is reported
    through the module logger, naming the keyword or variable, and the default
    is used.
    """
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    for setting in SETTINGS:
        raw: object = kwargs.get(setting.keyword)
        source = f"the keyword argument {setting.keyword}"
        if raw is None:
            raw = env.get(setting.env)
            source = setting.env
            if raw is None or str(raw).strip() == "":
                continue

        try:
            values[setting.keyword] = _parse(setting, raw)
        except ValueError as exc:
            _logger.warning(
                "ignoring %s: %s; using the default %r", source, exc, setting.default
            )

    return Config(**values)
