"""Seconds until expiry of the certificates a process serves, presents and meets.

Three sources feed the ``mtls.certificate.time_to_expiry`` gauge:

- contexts handed to ``watch_context``: the certificate their ``load_cert_chain``
  loaded, as ``served`` (server contexts) or ``presented`` (client contexts),
  read again at every observation, so a reloaded chain shows at once;
- the client certificate a client handshake presented, as ``presented``;
- the peer certificate of each successful handshake, as ``peer``.

Certificates learned from handshakes sit in a bounded least-recently-seen map and
are dropped once they have not been seen for ``max_age`` seconds, so the gauge's
series are bounded by the map's size plus the watched contexts. Certificates of
rejected handshakes are left out: they are not this service's peers, and anyone
can make one.
"""

from __future__ import annotations

import calendar
import logging
import ssl
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Callable, Final, Optional

from otel_mtls import attributes as A
from otel_mtls.certs import CertInfo

_logger = logging.getLogger(__name__)

ROLE_SERVED: Final = "served"
ROLE_PRESENTED: Final = "presented"
ROLE_PEER: Final = "peer"

# Where the load_cert_chain hook of the ssl instrumentor keeps a context's leaf.
# The attribute under which the ssl instrumentor keeps, on each context, the
# certificate it loaded (it lives here so that both modules can import it).
IDENTITY_ATTRIBUTE: Final = "_otel_mtls_identity"

_ISO_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"

_watched: weakref.WeakSet[ssl.SSLContext] = weakref.WeakSet()
_watched_lock = threading.Lock()


def watch_context(context: ssl.SSLContext) -> None:
    """Report the expiry of the certificate ``context`` serves or presents.

    Call it for the contexts of long-lived servers (and clients), once, after
    ``load_cert_chain``; the context is held weakly. The role is ``served`` for
    contexts made for the server side (``PROTOCOL_TLS_SERVER``,
    ``create_default_context(Purpose.CLIENT_AUTH)``) and ``presented``
    otherwise.
    """
    with _watched_lock:
        _watched.add(context)


def _context_role(context: ssl.SSLContext) -> str:
    if context.protocol == ssl.PROTOCOL_TLS_SERVER:
        return ROLE_SERVED

    return ROLE_PRESENTED


def _watched_certificates() -> Iterator[tuple[str, CertInfo]]:
    with _watched_lock:
        contexts = list(_watched)

    for context in contexts:
        info = context.__dict__.get(IDENTITY_ATTRIBUTE)
        if isinstance(info, CertInfo) and info.not_after_epoch:
            yield _context_role(context), info


def _epoch(text: str) -> Optional[float]:
    try:
        return float(calendar.timegm(time.strptime(text, _ISO_FORMAT)))
    except (TypeError, ValueError):
        return None


def _hash_attribute(role: str, side: str) -> str:
    """The hash attribute naming a certificate, by whose certificate it is."""
    if role == ROLE_SERVED:
        return A.TLS_SERVER_HASH_SHA256

    if role == ROLE_PRESENTED:
        return A.TLS_CLIENT_HASH_SHA256

    # A peer of a server is a client, and the other way round.
    return A.TLS_CLIENT_HASH_SHA256 if side == "server" else A.TLS_SERVER_HASH_SHA256


class ExpiryRegistry:
    """The certificates learned from handshakes, and the observation of all."""

    def __init__(
        self,
        max_certificates: int = 256,
        max_age: float = 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_certificates = max_certificates
        self.max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()
        # (role, hash attribute, sha256) -> (not_after epoch, last seen)
        self._seen: OrderedDict[tuple[str, str, str], tuple[float, float]] = (
            OrderedDict()
        )

    def note(self, role: str, attribute: str, sha256: str, not_after: float) -> None:
        """Remember one certificate as seen now."""
        key = (role, attribute, sha256)
        now = self._clock()

        with self._lock:
            self._seen[key] = (not_after, now)
            self._seen.move_to_end(key)
            while len(self._seen) > self.max_certificates:
                self._seen.popitem(last=False)

    def note_handshake(self, side: str, attributes: Mapping[str, Any]) -> None:
        """Learn the presented and peer certificates of one successful handshake."""
        peer = "client" if side == "server" else "server"
        self._note_from(ROLE_PEER, side, peer, attributes)

        if side == "client":
            self._note_from(ROLE_PRESENTED, side, "client", attributes)

    def _note_from(
        self, role: str, side: str, whose: str, attributes: Mapping[str, Any]
    ) -> None:
        sha256 = attributes.get(f"tls.{whose}.hash.sha256")
        if not isinstance(sha256, str):
            return

        # Every handshake passes here: a known certificate is only marked seen,
        # which spares parsing its date again.
        key = (role, _hash_attribute(role, side), sha256)
        with self._lock:
            known = self._seen.get(key)
            if known is not None:
                self._seen[key] = (known[0], self._clock())
                self._seen.move_to_end(key)
                return

        not_after = _epoch(attributes.get(f"tls.{whose}.not_after", ""))
        if not_after is not None:
            self.note(*key, not_after)

    def observe(self) -> list[tuple[float, dict[str, str]]]:
        """(seconds left, attributes) for every certificate known now."""
        now = self._clock()
        found: dict[tuple[str, str, str], float] = {}

        with self._lock:
            while self._seen:
                key, (_, seen) = next(iter(self._seen.items()))
                if now - seen < self.max_age:
                    break
                del self._seen[key]

            for key, (not_after, _) in self._seen.items():
                found[key] = not_after

        for role, info in _watched_certificates():
            found[(role, _hash_attribute(role, ""), info.sha256)] = info.not_after_epoch

        return [
            (not_after - now, {A.MTLS_CERTIFICATE_ROLE: role, attribute: sha256})
            for (role, attribute, sha256), not_after in found.items()
        ]
