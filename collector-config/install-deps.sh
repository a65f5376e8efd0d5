#!/usr/bin/env bash
# Install what the collector-config tests need besides Go: promtool, from the
# Debian/Ubuntu prometheus package (which also brings the prometheus server used
# to run the stack locally). Does nothing when promtool is already on PATH, so CI
# can run it unconditionally. Go itself must already be installed: build.sh
# builds the collector and Jaeger with it.
set -euo pipefail

if command -v promtool >/dev/null; then
    echo "install-deps.sh: promtool present: $(command -v promtool)" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null; then
    echo "install-deps.sh: no apt-get; install Prometheus (promtool) by hand" >&2
    exit 1
fi

sudo=()
if [[ $(id -u) -ne 0 ]]; then
    sudo=(sudo)
fi

export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
# --no-install-recommends: the exporters the package recommends are not needed.
"${sudo[@]}" apt-get install -y -q --no-install-recommends prometheus

# The package starts a Prometheus service on port 9090 where an init system
# runs; the tests start their own on free ports and do not need it.
command -v promtool >/dev/null
echo "install-deps.sh: installed $(command -v promtool)" >&2
