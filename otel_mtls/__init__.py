"""otel-mtls: OpenTelemetry instrumentation that makes mutual TLS observable.

``SSLInstrumentor`` turns every TLS handshake of the ``ssl`` module, client or
server, into a span, metrics and (on failure) a log record, with the attributes
of the certificates involved, including a certificate the peer rejected.
"""

from otel_mtls.ssl_instrumentor import SSLInstrumentor
from otel_mtls.version import __version__

__all__ = ["SSLInstrumentor", "__version__"]
