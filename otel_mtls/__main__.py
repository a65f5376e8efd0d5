"""``python -m otel_mtls``: the ``otel-mtls`` command."""

from __future__ import annotations

from otel_mtls.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
