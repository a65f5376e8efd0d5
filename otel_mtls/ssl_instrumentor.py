"""The ``ssl`` instrumentor: every handshake, client or server, becomes telemetry.

Hook points, and why each is needed:

- ``SSLContext.wrap_socket`` / ``wrap_bio`` install the message callback on the
  context before the connection object exists (OpenSSL copies it into each new
  connection), which also covers contexts created before ``instrument()``.
- ``SSLSocket.do_handshake`` / ``SSLObject.do_handshake`` see explicit and eager
  handshakes; the latter is called repeatedly by asyncio until it stops raising
  ``SSLWantReadError``, so only the final call settles the outcome.
- Lazy handshakes (``do_handshake_on_connect=False``, as gunicorn does) happen
  inside the first read or write. Those calls are watched through attributes on
  the one connection object, removed as soon as the outcome is known, so
  established connections pay nothing.
- A TLS 1.3 client's handshake returns before the server has judged its
  certificate, so the client's verdict (when the server asked for a
  certificate, or when that is unknown) stays open until the first read
  confirms or refutes it.
- The message callback keeps the peer's Certificate message and the alerts, so a
  rejected certificate is still recorded and the alert is known exactly. It goes
  on server contexts that request client certificates; clients have other
  sources and get it only when configured to (see ``wants_callback``).
- ``load_cert_chain`` tells which certificate a context presents or serves.
"""

from __future__ import annotations

import _ssl
import asyncio.sslproto
import atexit
import functools
import logging
import ssl
import sys
import threading
import time
import weakref
from collections.abc import Collection
from types import FrameType
from typing import Any, Callable, Final, Optional

import wrapt
from opentelemetry import context as otel_context
from opentelemetry.instrumentation.instrumentor import (  # type: ignore[attr-defined]
    BaseInstrumentor,
)
from opentelemetry.instrumentation.utils import is_instrumentation_enabled

from otel_mtls import attributes as A
from otel_mtls import classify, expiry, tlsmsg
from otel_mtls.certs import Attributes, CertInfo, chain_pem, make_cache, safe_text
from otel_mtls.config import Config, resolve
from otel_mtls.telemetry import Outcome, Recorder

_logger = logging.getLogger(__name__)

_STATE: Final = "_otel_mtls_state"

# The C-level descriptor of the callback. The public ``SSLContext._msg_callback``
# property wraps the callable in a function that converts every argument to an
# enum, which costs 10-17% of bulk throughput; the raw descriptor does not.
_MSG_CALLBACK: Final[Any] = _ssl._SSLContext.__dict__.get("_msg_callback")

_WANT: Final = (ssl.SSLWantReadError, ssl.SSLWantWriteError)

# I/O methods watched while a lazy handshake is under way, and while a TLS 1.3
# client waits for the server's verdict (a write that fails then counts too).
_LAZY_WATCH: Final = ("read", "write", "send")
_PENDING_WATCH: Final = {"socket": ("read", "write", "send"), "bio": ("read", "write")}

# OpenSSL names TLS 1.2 suites its own way; the conventions ask for IANA names.
_IANA_CIPHERS: Final[dict[str, str]] = {
    "ECDHE-ECDSA-AES128-GCM-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384": "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-RSA-AES128-GCM-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384": "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305": "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-RSA-CHACHA20-POLY1305": "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "DHE-RSA-AES128-GCM-SHA256": "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256",
    "DHE-RSA-AES256-GCM-SHA384": "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384",
    "DHE-RSA-CHACHA20-POLY1305": "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
    "ECDHE-ECDSA-AES128-SHA256": "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "ECDHE-RSA-AES128-SHA256": "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
    "AES128-GCM-SHA256": "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "AES256-GCM-SHA384": "TLS_RSA_WITH_AES_256_GCM_SHA384",
}


class _ConnState:
    """What is known about one connection's handshake while it is under way."""

    __slots__ = (
        "alert_received",
        "alert_sent",
        "api",
        "cert_requested",
        "cert_version",
        "client_hello_seen",
        "end_ns",
        "finalizer",
        "lazy",
        "local",
        "observed",
        "own_cert",
        "owner",
        "parent",
        "peer",
        "peer_cert",
        "pending",
        "server_hello_seen",
        "server_hostname",
        "settled",
        "side",
        "start_ns",
        "watched",
    )

    def __init__(
        self, side: str, api: str, server_hostname: Optional[str], observed: bool
    ) -> None:
        self.side = side
        self.api = api
        self.server_hostname = server_hostname
        # Whether the message callback sees this connection's handshake.
        self.observed = observed
        self.start_ns = 0
        self.end_ns = 0
        self.parent: Optional[otel_context.Context] = None
        self.lazy = False
        self.settled = False
        self.pending: Optional[_Pending] = None
        self.watched: tuple[str, ...] = ()
        self.peer: Optional[tuple[str, int]] = None
        self.local: Optional[tuple[str, int]] = None
        self.owner: Optional[weakref.ref[Any]] = None
        self.finalizer: Optional[weakref.finalize[..., None]] = None
        self.client_hello_seen = False
        self.server_hello_seen = False
        self.cert_requested = False
        self.peer_cert: Optional[bytes] = None
        self.cert_version = 0
        self.own_cert: Optional[bytes] = None
        self.alert_sent: Optional[str] = None
        self.alert_received: Optional[str] = None

    def begin(self) -> None:
        if self.start_ns == 0:
            self.start_ns = time.time_ns()
            self.parent = otel_context.get_current()

    def evidence(self, conn: Any = None) -> classify.Evidence:
        if self.observed:
            return classify.Evidence(
                side=self.side,
                client_hello_seen=self.client_hello_seen,
                server_hello_seen=self.server_hello_seen,
                certificate_requested=self.cert_requested,
                alert_sent=self.alert_sent,
                alert_received=self.alert_received,
            )

        # Unobserved: OpenSSL keeps the negotiated cipher once ServerHello was
        # processed, which tells how far the handshake went.
        server_hello: Optional[bool] = True if self.server_hello_seen else None
        if conn is not None and server_hello is None:
            try:
                server_hello = conn.cipher() is not None
            except Exception:  # noqa: BLE001
                server_hello = None

        return classify.Evidence(side=self.side, server_hello_seen=server_hello)


class _Pending:
    """A TLS 1.3 client verdict awaiting the first read, with its success record."""

    __slots__ = ("attributes",)

    def __init__(self, attributes: Attributes) -> None:
        self.attributes = attributes


def _address(value: Any) -> Optional[tuple[str, int]]:
    if isinstance(value, tuple) and len(value) >= 2:
        return str(value[0]), int(value[1])

    return None


def _on_message(  # noqa: PLR0917 - the signature is the C layer's
    conn: Any,
    direction: str,
    version: int,
    content_type: int,
    msg_type: int,
    data: bytes,
) -> None:
    """OpenSSL's message callback: keep certificates, hellos, requests, alerts.

    It runs for every TLS record, so anything that is not a handshake message or
    an alert returns at once. An exception here would surface in the
    application's own I/O call, hence the blanket guard.
    """
    # Two integer comparisons: the cheapest test on the hottest path.
    if content_type != tlsmsg.CONTENT_HANDSHAKE and content_type != 21:  # noqa: PLR1714
        return

    try:
        state = conn.__dict__.get(_STATE)
        if state is None or (state.settled and state.pending is None):
            return

        _note_message(state, direction, version, content_type, data)
    except Exception:
        _logger.debug("message callback failed", exc_info=True)


def _note_message(
    state: _ConnState, direction: str, version: int, content_type: int, data: bytes
) -> None:
    # The C layer passes the direction as the string "read" or "write".
    written = direction == "write"

    if content_type == tlsmsg.CONTENT_ALERT:
        if len(data) >= 2 and data[1] != 0:
            name = tlsmsg.alert_name(data[1])
            if written:
                state.alert_sent = name
            else:
                state.alert_received = name
        return

    if not data:
        return

    kind = data[0]
    if state.server_hello_seen:
        # From here on the callback reports the negotiated version, which a
        # failed handshake's connection no longer tells.
        state.cert_version = version

    if kind == tlsmsg.HS_CERTIFICATE:
        if written:
            state.own_cert = data
        else:
            state.peer_cert = data
    elif kind == tlsmsg.HS_CLIENT_HELLO:
        state.client_hello_seen = True
    elif kind == tlsmsg.HS_SERVER_HELLO:
        state.server_hello_seen = True
    elif kind == tlsmsg.HS_CERTIFICATE_REQUEST:
        state.cert_requested = True


class _Hooks:
    """The live instrumentation: configuration, recorder and the wrappers."""

    def __init__(self, config: Config, recorder: Recorder) -> None:
        self.config = config
        self.recorder = recorder
        self.cert_cache: Callable[[bytes], CertInfo] = make_cache(
            config.cert_cache_size, config.max_name_length, config.max_san_count
        )
        self.contexts: weakref.WeakKeyDictionary[ssl.SSLContext, Any] = (
            weakref.WeakKeyDictionary()
        )
        self.lock = threading.Lock()

    # -- context and connection set-up ------------------------------------------

    def wants_callback(self, ctx: Any, server_side: bool) -> bool:
        """Whether this context's connections should carry the message callback.

        OpenSSL calls it for every record, and each call takes the GIL in the
        middle of the handshake. Servers that ask for client certificates need
        it: it is the only source of a rejected client certificate. Clients
        have fallbacks (the unverified chain, OpenSSL's reasons), so they get it
        only when asked for.
        """
        if _MSG_CALLBACK is None:
            return False

        if server_side:
            return bool(
                self.config.capture_rejected_certificates
                and ctx.verify_mode != ssl.CERT_NONE
            )

        return self.config.capture_client_messages

    def install_callback(self, ctx: Any, server_side: bool) -> None:
        """Put the message callback on a context once, chaining a user's own."""
        if not self.wants_callback(ctx, server_side):
            return

        current = _MSG_CALLBACK.__get__(ctx)
        if current is _on_message or isinstance(current, _Chained):
            return

        try:
            with self.lock:
                self.contexts[ctx] = current
            _MSG_CALLBACK.__set__(
                ctx, _on_message if current is None else _Chained(current)
            )
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained("callback", exc)

    def restore_callbacks(self) -> None:
        with self.lock:
            saved = list(self.contexts.items())
            self.contexts.clear()

        for ctx, previous in saved:
            try:
                _MSG_CALLBACK.__set__(ctx, previous)
            except Exception:
                _logger.debug("could not restore a message callback", exc_info=True)

    def wrap_socket(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        if is_instrumentation_enabled():
            self.install_callback(instance, _server_side(args, kwargs, 1))

        sock = wrapped(*args, **kwargs)

        try:
            self._after_wrap_socket(sock)
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained("wrap_socket", exc)

        return sock

    def _after_wrap_socket(self, sock: Any) -> None:
        if getattr(sock, "do_handshake_on_connect", True):
            return

        if sock.__dict__.get(_STATE) is not None or not is_instrumentation_enabled():
            return

        # The handshake will happen inside the first read or write.
        state = self.state_for(sock, "socket")
        if state is not None:
            state.lazy = True
            self.watch(sock, state, _LAZY_WATCH)

    def wrap_bio(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        enabled = is_instrumentation_enabled()
        if enabled:
            self.install_callback(instance, _server_side(args, kwargs, 2))

        obj = wrapped(*args, **kwargs)

        if enabled:
            try:
                state = self.state_for(obj, "bio")
                if state is not None:
                    state.owner = _asyncio_protocol()
                    if state.side == "client" and not state.observed:
                        # uvloop keeps the bound read method it takes right
                        # after this call, so the watch must already be there.
                        self.watch(obj, state, ("read",))
            except Exception as exc:  # noqa: BLE001
                self.recorder.contained("wrap_bio", exc)

        return obj

    def connection_lost(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        """asyncio SSL protocol: a TLS 1.3 verdict still open is settled by EOF.

        asyncio does not pass a bare TCP close to the SSL object, so a client
        whose certificate a server refused by closing is only told here.
        """
        try:
            obj = _protocol_ssl_object(instance)
            state = obj.__dict__.get(_STATE) if obj is not None else None
            exc = args[0] if args else kwargs.get("exc")
            if state is not None and state.pending is not None:
                self.late_closed(obj, state, exc)
            elif state is not None and not state.settled and state.start_ns:
                lost = exc or ConnectionResetError("connection lost in the handshake")
                self.failed(obj, state, lost)
        except Exception as error:  # noqa: BLE001
            self.recorder.contained("connection_lost", error)

        return wrapped(*args, **kwargs)

    def load_cert_chain(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        """Remember which certificate a context will present."""
        result = wrapped(*args, **kwargs)

        try:
            certfile = args[0] if args else kwargs.get("certfile")
            leaf = _first_pem_certificate(certfile)
            if leaf is not None:
                instance.__dict__[_IDENTITY] = self.cert_cache(leaf)
                expiry.watch_context(instance)
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained("load_cert_chain", exc)

        return result

    def state_for(self, conn: Any, api: str) -> Optional[_ConnState]:
        state: Optional[_ConnState] = conn.__dict__.get(_STATE)
        if state is not None:
            return state

        if not is_instrumentation_enabled():
            return None

        side = "server" if conn.server_side else "client"
        state = _ConnState(side, api, conn.server_hostname, _observed(conn.context))
        conn.__dict__[_STATE] = state
        return state

    # -- handshakes ---------------------------------------------------------------

    def do_handshake(
        self, wrapped: Callable[..., Any], instance: Any, args: Any, kwargs: Any
    ) -> Any:
        state = self._begin(instance)
        if state is None:
            return wrapped(*args, **kwargs)

        try:
            result = wrapped(*args, **kwargs)
        except _WANT:
            if not state.observed and not state.server_hello_seen:
                # An event loop may drop the connection without another call;
                # keep how far the handshake got.
                self._guarded(_note_progress, instance, state)
            raise
        except BaseException as exc:
            self._guarded(self.failed, instance, state, exc)
            raise

        self._guarded(self.succeeded, instance, state)
        return result

    def _begin(self, conn: Any) -> Optional[_ConnState]:
        try:
            api = "bio" if isinstance(conn, ssl.SSLObject) else "socket"
            state = self.state_for(conn, api)
            if state is None or state.settled:
                return None

            # An explicit call: whatever was prepared for a lazy handshake is moot.
            state.lazy = False
            self.begin(conn, state)
            return state
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained("begin", exc)
            return None

    def begin(self, conn: Any, state: _ConnState) -> None:
        if state.start_ns:
            return

        state.begin()
        if state.api == "socket":
            # Read now: once the peer has reset the connection it is too late.
            state.peer, state.local = _socket_addresses(conn)
        else:
            if state.owner is not None:
                state.peer, state.local = _transport_addresses(state.owner())
            # An event loop may drop the SSL object without a further call.
            state.finalizer = weakref.finalize(conn, self.abandoned, state)

    def _guarded(self, step: Callable[..., None], *args: Any) -> None:
        try:
            step(*args)
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained(step.__name__, exc)

    def watch(self, conn: Any, state: _ConnState, names: tuple[str, ...]) -> None:
        """Watch the first I/O calls of one connection, through its own attributes."""
        ref = weakref.ref(conn)
        for name in names:
            conn.__dict__[name] = _Watch(self, ref, name, getattr(type(conn), name))

        state.watched = names

    def unwatch(self, conn: Any, state: _ConnState) -> None:
        for name in state.watched:
            conn.__dict__.pop(name, None)

        state.watched = ()

    def io_returned(self, conn: Any, state: _ConnState, name: str, result: Any) -> None:
        """A watched read or write returned: the handshake (or verdict) is over."""
        if state.pending is not None:
            if name != "read":
                # A write succeeds before the server's verdict has been read.
                return

            if (isinstance(result, (bytes, bytearray)) and not result) or (
                isinstance(result, int) and result == 0
            ):
                self.late_closed(conn, state, None)
            else:
                self.confirm(conn, state)
            return

        if _negotiated(conn):
            self.succeeded(conn, state)
            if _awaiting(state) and name == "read" and _has_data(result):
                # The read that finished a TLS 1.3 handshake already carries the
                # server's data: its verdict on our certificate was yes.
                self.confirm(conn, state)
            return

        # An empty read before the handshake finished: the peer went away.
        self.unwatch(conn, state)
        self.closed_early(conn, state)

    def io_raised(self, conn: Any, state: _ConnState, exc: BaseException) -> None:
        if state.pending is not None:
            failure = classify.classify(exc, state.evidence(conn))
            if failure.reason in (classify.CONNECTION_CLOSED, classify.NO_CLIENT_HELLO):
                self.late_closed(conn, state, exc)
            else:
                self.late_failed(conn, state, failure)
            return

        if _negotiated(conn):
            # The handshake had finished; this is an ordinary I/O error.
            self.succeeded(conn, state)
            return

        self.failed(conn, state, exc)

    # -- settling -----------------------------------------------------------------

    def succeeded(self, conn: Any, state: _ConnState) -> None:
        end_ns = time.time_ns()
        attrs = self.base_attributes(conn, state)
        self.add_session(conn, attrs)
        self.add_certificates(conn, state, attrs, failed=False)
        attrs[A.MTLS_OUTCOME] = "success"

        if self.needs_confirmation(conn, state):
            state.end_ns = end_ns
            self.defer(conn, state, attrs)
            return

        attrs[A.TLS_ESTABLISHED] = True
        self.finish(conn, state)
        self.emit(state, attrs, end_ns, failed=False)

    def failed(self, conn: Any, state: _ConnState, exc: BaseException) -> None:
        end_ns = time.time_ns()
        failure = classify.classify(exc, state.evidence(conn))
        attrs = self.base_attributes(conn, state)
        if conn is not None:
            self.add_session(conn, attrs)
        if A.TLS_PROTOCOL_VERSION not in attrs and state.cert_version:
            name = tlsmsg.VERSION_NAMES.get(state.cert_version)
            if name:
                attrs[A.TLS_PROTOCOL_VERSION] = name
        self.add_certificates(conn, state, attrs, failed=True)
        self.add_failure(attrs, failure)
        self.finish(conn, state)
        self.emit(state, attrs, end_ns, failed=True)

    def closed_early(self, conn: Any, state: _ConnState) -> None:
        end_ns = time.time_ns()
        reason = classify.closed_reason(state.evidence(conn))
        attrs = self.base_attributes(conn, state)
        self.add_certificates(conn, state, attrs, failed=True)
        attrs[A.MTLS_OUTCOME] = "failure"
        attrs[A.TLS_ESTABLISHED] = False
        attrs[A.MTLS_FAILURE_REASON] = reason
        attrs[A.ERROR_TYPE] = reason
        self.finish(conn, state)
        self.emit(state, attrs, end_ns, failed=True)

    def needs_confirmation(self, conn: Any, state: _ConnState) -> bool:
        """TLS 1.3 clients asked for a certificate learn the verdict later.

        Without the message callback it is unknown whether the server asked, so
        every TLS 1.3 client verdict waits for the first read.
        """
        if state.side != "client" or conn.version() != "TLSv1.3":
            return False

        return state.cert_requested or not state.observed

    def defer(self, conn: Any, state: _ConnState, attrs: Attributes) -> None:
        pending = _Pending(attrs)
        state.pending = pending
        state.settled = True
        self.unwatch(conn, state)
        self.watch(conn, state, _PENDING_WATCH[state.api])
        if state.finalizer is None:
            state.finalizer = weakref.finalize(conn, self.abandoned, state)

    def confirm(self, conn: Any, state: _ConnState) -> None:
        pending = self.take_pending(conn, state)
        if pending is None:
            return

        attrs = pending.attributes
        attrs[A.TLS_ESTABLISHED] = True
        self.emit(state, attrs, state.end_ns, failed=False)

    def unconfirmed(self, state: _ConnState) -> None:
        """The connection went away before any read: the verdict stays provisional."""
        try:
            pending = state.pending
            state.pending = None
            state.finalizer = None
            if pending is None:
                return

            # Never read from: nothing says the server accepted the certificate,
            # and a dashboard must not count this as a success.
            attrs = pending.attributes
            attrs[A.TLS_ESTABLISHED] = False
            attrs[A.MTLS_OUTCOME] = "unconfirmed"
            self.emit(state, attrs, state.end_ns, failed=False)
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained("unconfirmed", exc)

    def late_failed(
        self, conn: Any, state: _ConnState, failure: classify.Failure
    ) -> None:
        pending = self.take_pending(conn, state)
        if pending is None:
            return

        attrs = pending.attributes
        self.add_failure(attrs, failure)
        attrs[A.MTLS_LATE_FAILURE] = True
        self.emit(state, attrs, time.time_ns(), failed=True)

    def late_closed(
        self, conn: Any, state: _ConnState, exc: Optional[BaseException]
    ) -> None:
        pending = self.take_pending(conn, state)
        if pending is None:
            return

        attrs = pending.attributes
        attrs[A.MTLS_OUTCOME] = "failure"
        attrs[A.TLS_ESTABLISHED] = False
        attrs[A.MTLS_LATE_FAILURE] = True
        attrs[A.MTLS_FAILURE_REASON] = classify.PROBABLY_REJECTED
        attrs[A.ERROR_TYPE] = (
            classify.error_type(exc) if exc is not None else classify.PROBABLY_REJECTED
        )
        if exc is not None:
            attrs[A.MTLS_FAILURE_DETAIL] = safe_text(
                str(exc), self.config.max_name_length
            )
        self.emit(state, attrs, time.time_ns(), failed=True)

    def take_pending(self, conn: Any, state: _ConnState) -> Optional[_Pending]:
        pending = state.pending
        state.pending = None
        self.finish(conn, state)
        return pending

    def finish(self, conn: Any, state: _ConnState) -> None:
        state.settled = True
        if state.watched and conn is not None:
            self.unwatch(conn, state)

        if state.finalizer is not None:
            state.finalizer.detach()
            state.finalizer = None

    def abandoned(self, state: _ConnState) -> None:
        """The SSL object was collected with its outcome still open.

        uvloop tells the SSL object nothing when the peer closes, so this is how
        its connections that died during (or right after) a handshake are seen.
        """
        # TODO(#3): settle a uvloop client's TLS 1.3 verdict when the server
        # closes, not when the SSL object is collected.
        try:
            if state.pending is not None:
                self.unconfirmed(state)
            elif not state.settled and state.start_ns:
                lost = ConnectionResetError("connection lost during the handshake")
                self.failed(None, state, lost)
        except Exception as exc:  # noqa: BLE001
            self.recorder.contained("abandoned", exc)

    def emit(
        self, state: _ConnState, attrs: Attributes, end_ns: int, failed: bool
    ) -> None:
        name = A.SPAN_SERVER_HANDSHAKE
        if state.side == "client":
            target = attrs.get(A.SERVER_ADDRESS, "")
            name = f"{A.SPAN_CLIENT_HANDSHAKE} {target}".rstrip()

        # Certificates are kept only until the outcome is known.
        state.peer_cert = None
        state.own_cert = None

        self.recorder.record(
            Outcome(
                side=state.side,
                span_name=name,
                parent=state.parent,
                start_ns=state.start_ns,
                end_ns=max(end_ns, state.start_ns),
                attributes=attrs,
                failed=failed,
                summary=_summary(state.side, attrs, failed)
                if failed or self.config.log_success
                else "",
            )
        )

    # -- attributes ---------------------------------------------------------------

    def base_attributes(self, conn: Any, state: _ConnState) -> Attributes:
        attrs: Attributes = {
            A.MTLS_SIDE: state.side,
            A.MTLS_API: state.api,
            A.TLS_PROTOCOL_NAME: "tls",
            A.NETWORK_TRANSPORT: "tcp",
        }
        if state.lazy:
            attrs[A.MTLS_LAZY] = True

        peer, local = state.peer, state.local

        # Each attribute costs on every handshake: on the server side the peer
        # is the client (client.*), and the local end is the server (server.*).
        if state.side == "server":
            if peer is not None:
                attrs[A.CLIENT_ADDRESS] = peer[0]
                attrs[A.CLIENT_PORT] = peer[1]
            if local is not None:
                attrs[A.SERVER_ADDRESS] = local[0]
                attrs[A.SERVER_PORT] = local[1]
        else:
            host = state.server_hostname or (peer[0] if peer else None)
            if host:
                attrs[A.SERVER_ADDRESS] = safe_text(host, 256)
            if peer is not None:
                attrs[A.SERVER_PORT] = peer[1]
                attrs[A.NETWORK_PEER_ADDRESS] = peer[0]
                attrs[A.NETWORK_PEER_PORT] = peer[1]
            if local is not None:
                # The port the server sees as client.port: joins both sides.
                attrs[A.NETWORK_LOCAL_ADDRESS] = local[0]
                attrs[A.NETWORK_LOCAL_PORT] = local[1]

        if state.observed:
            attrs[A.MTLS_CLIENT_CERT_REQUESTED] = state.cert_requested

        return attrs

    def add_session(self, conn: Any, attrs: Attributes) -> None:
        version = conn.version()
        if version is None:
            return

        attrs[A.TLS_PROTOCOL_VERSION] = version.replace("TLSv", "")
        cipher = conn.cipher()
        if cipher:
            attrs[A.TLS_CIPHER] = _IANA_CIPHERS.get(cipher[0], cipher[0])
        attrs[A.TLS_RESUMED] = bool(conn.session_reused)
        alpn = conn.selected_alpn_protocol()
        if alpn:
            attrs[A.TLS_NEXT_PROTOCOL] = safe_text(alpn, 64)

    def add_certificates(
        self, conn: Any, state: _ConnState, attrs: Attributes, failed: bool
    ) -> None:
        peer_side = "client" if state.side == "server" else "server"
        chain, source = self.peer_chain(conn, state, failed)

        if chain:
            info = self.cert_cache(chain[0])
            attrs.update(info.attributes(peer_side))
            attrs[f"mtls.{peer_side}.chain_length"] = len(chain)
            attrs[A.MTLS_PEER_CERT_SOURCE] = source
            if self.config.capture_chain_pem:
                attrs[f"tls.{peer_side}.certificate_chain"] = chain_pem(chain)

        # The server's own certificate is the same on every connection; only a
        # client's says which credential this connection presented.
        own = self.own_chain(state) if state.side == "client" else None
        if own:
            attrs.update(self.cert_cache(own[0]).identity(state.side))
        elif state.side == "client" and not state.observed and conn is not None:
            configured = _configured_identity(conn)
            if configured is not None:
                attrs.update(configured.identity("client"))

        if state.side == "client" and own is not None:
            attrs[A.MTLS_CLIENT_CERT_PRESENTED] = bool(own)
        elif state.side == "server" and state.cert_requested and chain is not None:
            attrs[A.MTLS_CLIENT_CERT_PRESENTED] = bool(chain)

    def peer_chain(
        self, conn: Any, state: _ConnState, failed: bool
    ) -> tuple[Optional[list[bytes]], str]:
        """The peer's chain: from the stdlib when verified, else the message."""
        if not failed:
            leaf = conn.getpeercert(binary_form=True)
            if leaf:
                presented = self.message_chain(state)
                if presented and presented[0] == leaf:
                    return presented, "verified"
                return [leaf], "verified"

        presented = self.message_chain(state)
        if presented is not None:
            return presented, "handshake_message"

        if failed and state.side == "client" and conn is not None:
            unverified = _unverified_chain(conn)
            if unverified:
                return unverified, "unverified_chain"

        return None, ""

    def message_chain(self, state: _ConnState) -> Optional[list[bytes]]:
        data = state.peer_cert
        if data is None:
            return None

        try:
            return list(_parse_message(data, state.cert_version))
        except ValueError as exc:
            _logger.debug("peer Certificate message not parsed: %s", exc)
            return None

    def own_chain(self, state: _ConnState) -> Optional[list[bytes]]:
        data = state.own_cert
        if data is None:
            return None

        try:
            return list(_parse_message(data, state.cert_version))
        except ValueError:
            return None

    def add_failure(self, attrs: Attributes, failure: classify.Failure) -> None:
        limit = self.config.max_name_length
        attrs[A.MTLS_OUTCOME] = "failure"
        attrs[A.TLS_ESTABLISHED] = False
        attrs[A.MTLS_FAILURE_REASON] = failure.reason
        attrs[A.ERROR_TYPE] = failure.error_type
        attrs[A.MTLS_FAILURE_DETAIL] = safe_text(failure.detail, limit)
        if failure.verify_code is not None:
            attrs[A.MTLS_VERIFY_CODE] = failure.verify_code
        if failure.verify_message:
            attrs[A.MTLS_VERIFY_MESSAGE] = safe_text(failure.verify_message, limit)
        if failure.openssl_reason:
            attrs[A.MTLS_OPENSSL_REASON] = failure.openssl_reason
        if failure.alert_sent:
            attrs[A.MTLS_ALERT_SENT] = failure.alert_sent
        if failure.alert_received:
            attrs[A.MTLS_ALERT_RECEIVED] = failure.alert_received


class _Chained:
    """Our message callback followed by one the application had installed."""

    __slots__ = ("user",)

    def __init__(self, user: Callable[..., Any]) -> None:
        self.user = user

    def __call__(self, *args: Any) -> Any:
        _on_message(*args)
        return self.user(*args)


class _Watch:
    """Stands in for one I/O method of one connection until its outcome is known."""

    __slots__ = ("hooks", "method", "name", "ref")

    def __init__(
        self,
        hooks: _Hooks,
        ref: weakref.ref[Any],
        name: str,
        method: Callable[..., Any],
    ) -> None:
        self.hooks = hooks
        self.ref = ref
        self.name = name
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        conn = self.ref()
        state: Optional[_ConnState] = (
            conn.__dict__.get(_STATE) if conn is not None else None
        )
        if state is None or (state.settled and state.pending is None):
            return self.method(conn, *args, **kwargs)

        hooks = self.hooks
        if state.pending is None:
            hooks._guarded(hooks.begin, conn, state)

        try:
            result = self.method(conn, *args, **kwargs)
        except _WANT:
            raise
        except BaseException as exc:
            hooks._guarded(hooks.io_raised, conn, state, exc)
            raise

        hooks._guarded(hooks.io_returned, conn, state, self.name, result)
        return result


def _observed(ctx: Any) -> bool:
    """Whether the context carries the package's message callback."""
    if _MSG_CALLBACK is None:
        return False

    current = _MSG_CALLBACK.__get__(ctx)
    return current is _on_message or isinstance(current, _Chained)


def _first_pem_certificate(certfile: Any) -> Optional[bytes]:
    """DER of the first certificate in a PEM file, as OpenSSL will present it."""
    with open(certfile, "rb") as handle:
        data = handle.read(1 << 20)

    begin = data.find(b"-----BEGIN CERTIFICATE-----")
    end = data.find(b"-----END CERTIFICATE-----", begin)
    if begin < 0 or end < 0:
        return None

    pem = data[begin : end + len(b"-----END CERTIFICATE-----")].decode("ascii")
    return ssl.PEM_cert_to_DER_cert(pem)


def _server_side(args: Any, kwargs: Any, position: int) -> bool:
    """The ``server_side`` argument of ``wrap_socket`` / ``wrap_bio``."""
    if "server_side" in kwargs:
        return bool(kwargs["server_side"])

    return len(args) > position and bool(args[position])


_IDENTITY: Final = expiry.IDENTITY_ATTRIBUTE


def _configured_identity(conn: Any) -> Optional[CertInfo]:
    """The leaf of the chain the connection's context loaded, if it was seen."""
    try:
        identity: Optional[CertInfo] = conn.context.__dict__.get(_IDENTITY)
    except Exception:  # noqa: BLE001
        return None

    return identity


@functools.lru_cache(maxsize=256)
def _parse_message(data: bytes, version: int) -> tuple[bytes, ...]:
    """Certificate messages repeat per client: parse each distinct one once.

    A failed parse raises again on every call and is not cached, which only a
    peer sending malformed messages pays for.
    """
    return tuple(tlsmsg.parse_any_certificate_message(data, version))


def _awaiting(state: _ConnState) -> bool:
    """Whether the state holds a verdict still waiting for the first read."""
    return state.pending is not None


def _has_data(result: Any) -> bool:
    """A read returned bytes (``read(n)``) or a positive count (``read(n, buf)``)."""
    if isinstance(result, int):
        return result > 0

    return bool(result)


def _note_progress(conn: Any, state: _ConnState) -> None:
    state.server_hello_seen = conn.cipher() is not None


def _negotiated(conn: Any) -> bool:
    # version() stays None until OpenSSL reports the handshake finished.
    try:
        return conn.version() is not None
    except Exception:  # noqa: BLE001
        return False


def _socket_addresses(
    sock: Any,
) -> tuple[Optional[tuple[str, int]], Optional[tuple[str, int]]]:
    try:
        peer = _address(sock.getpeername())
    except OSError:
        peer = None

    try:
        local = _address(sock.getsockname())
    except OSError:
        local = None

    return peer, local


def _asyncio_protocol() -> Optional[weakref.ref[Any]]:
    """The asyncio SSL protocol creating the SSL object being wrapped, if any.

    An ``SSLObject`` knows nothing of its socket. asyncio's SSL protocol creates
    it a frame or two up (in ``__init__`` on 3.11+, through its pipe before);
    only frames of that module are looked at, so no other object can be taken
    for it. Its transport, and so the addresses, are read once the handshake
    starts, when the protocol has been connected.
    """
    frame: Optional[FrameType] = sys._getframe(2)
    for _ in range(4):
        if frame is None:
            break

        if frame.f_globals.get("__name__") == "asyncio.sslproto":
            owner = frame.f_locals.get("self")
            if owner is not None and hasattr(owner, "_app_protocol"):
                return weakref.ref(owner)

        frame = frame.f_back

    # TODO(#4): uvloop creates the SSLObject from compiled code, which leaves no
    # frame to read the transport from; its handshakes are recorded without
    # addresses.
    return None


def _transport_addresses(
    owner: Any,
) -> tuple[Optional[tuple[str, int]], Optional[tuple[str, int]]]:
    transport = getattr(owner, "_transport", None)
    if transport is None:
        return None, None

    return (
        _address(transport.get_extra_info("peername")),
        _address(transport.get_extra_info("sockname")),
    )


def _protocol_ssl_object(protocol: Any) -> Any:
    """The SSL object of an asyncio SSL protocol (3.11+ keeps it, 3.9 a pipe)."""
    obj = protocol.__dict__.get("_sslobj")
    if obj is None:
        pipe = protocol.__dict__.get("_sslpipe")
        obj = getattr(pipe, "ssl_object", None)

    return obj


def _unverified_chain(conn: Any) -> Optional[list[bytes]]:
    sslobj = getattr(conn, "_sslobj", None)
    getter = getattr(sslobj, "get_unverified_chain", None)
    if getter is None:
        return None

    try:
        chain = getter()
    except Exception:  # noqa: BLE001
        return None

    if not chain:
        return None

    return [
        item if isinstance(item, bytes) else item.public_bytes(_ssl.ENCODING_DER)
        for item in chain
    ]


def _summary(side: str, attrs: Attributes, failed: bool) -> str:
    """One line for the span status and the log body."""
    peer_side = "client" if side == "server" else "server"
    where = ""
    if side == "server" and A.CLIENT_ADDRESS in attrs:
        where = f" from {attrs[A.CLIENT_ADDRESS]}:{attrs.get(A.CLIENT_PORT, '')}"
    elif side == "client" and A.SERVER_ADDRESS in attrs:
        where = f" to {attrs[A.SERVER_ADDRESS]}:{attrs.get(A.SERVER_PORT, '')}"

    subject = attrs.get(f"tls.{peer_side}.subject")
    digest = attrs.get(f"tls.{peer_side}.hash.sha256")
    who = ""
    if digest:
        who = f"; {peer_side} certificate {subject or '?'} sha256={digest}"

    if not failed:
        return f"TLS {side} handshake succeeded{where}{who}"

    reason = attrs.get(A.MTLS_FAILURE_REASON, classify.OTHER)
    extra = ""
    if A.MTLS_VERIFY_CODE in attrs:
        extra = f" (verify {attrs[A.MTLS_VERIFY_CODE]}: "
        extra += f"{attrs.get(A.MTLS_VERIFY_MESSAGE, '')})"
    elif A.MTLS_ALERT_RECEIVED in attrs:
        extra = f" (alert received: {attrs[A.MTLS_ALERT_RECEIVED]})"

    return f"TLS {side} handshake failed: {reason}{extra}{where}{who}"


_PATCHES: Final = (
    (ssl.SSLContext, "wrap_socket", "wrap_socket"),
    (ssl.SSLContext, "wrap_bio", "wrap_bio"),
    (ssl.SSLContext, "load_cert_chain", "load_cert_chain"),
    (ssl.SSLSocket, "do_handshake", "do_handshake"),
    (ssl.SSLObject, "do_handshake", "do_handshake"),
    (asyncio.sslproto.SSLProtocol, "connection_lost", "connection_lost"),
)


_MISSING: Final = object()


def _restore(originals: list[tuple[Any, str, Any]]) -> None:
    """Put back exactly the objects that were in the class dictionaries.

    ``load_cert_chain`` lives on the C base class; the wrapper put on
    ``ssl.SSLContext`` is removed again rather than replaced.
    """
    for owner, name, original in reversed(originals):
        if original is _MISSING:
            delattr(owner, name)
        else:
            setattr(owner, name, original)


class SSLInstrumentor(BaseInstrumentor):  # type: ignore[misc]
    """OpenTelemetry instrumentor for the standard library's ``ssl`` module.

    ``SSLInstrumentor().instrument(tracer_provider=..., meter_provider=...,
    logger_provider=...)`` switches it on; keyword arguments named in
    ``otel_mtls.config.SETTINGS`` override the ``OTEL_PYTHON_MTLS_*`` variables.
    """

    _hooks: Optional[_Hooks] = None
    _originals: list[tuple[Any, str, Any]] = []  # noqa: RUF012 - one per process
    _lock = threading.Lock()

    def instrumentation_dependencies(self) -> Collection[str]:
        # The ssl module ships with Python: nothing to check.
        return ()

    def _instrument(self, **kwargs: Any) -> None:
        with self._lock:
            if SSLInstrumentor._hooks is not None:
                return

            config = resolve(kwargs)
            recorder = Recorder(
                config,
                tracer_provider=kwargs.get("tracer_provider"),
                meter_provider=kwargs.get("meter_provider"),
                logger_provider=kwargs.get("logger_provider"),
            )
            hooks = _Hooks(config, recorder)
            originals: list[tuple[Any, str, Any]] = []

            try:
                for owner, name, method in _PATCHES:
                    originals.append((owner, name, owner.__dict__.get(name, _MISSING)))
                    wrapt.wrap_function_wrapper(owner, name, getattr(hooks, method))
            except Exception:
                _restore(originals)
                raise

            SSLInstrumentor._originals = originals

            SSLInstrumentor._hooks = hooks
            # Pending flood-control summaries go out before the providers shut
            # down: their exit handlers were registered earlier, so run later.
            atexit.register(recorder.flush_suppressed)
            _logger.debug("ssl instrumentation active: %s", config)

    def _uninstrument(self, **kwargs: Any) -> None:
        with self._lock:
            hooks = SSLInstrumentor._hooks
            SSLInstrumentor._hooks = None
            _restore(SSLInstrumentor._originals)
            SSLInstrumentor._originals = []
            if hooks is not None:
                atexit.unregister(hooks.recorder.flush_suppressed)
                hooks.recorder.flush_suppressed()

            if hooks is not None:
                hooks.restore_callbacks()


def active_config() -> Optional[Config]:
    """The configuration in force, or None when the instrumentation is off."""
    hooks = SSLInstrumentor._hooks
    return hooks.config if hooks is not None else None
