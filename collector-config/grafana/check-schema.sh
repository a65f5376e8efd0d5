#!/usr/bin/env bash
# Type-check dashboard.json against Grafana's published dashboard schema, the
# Dashboard type of the @grafana/schema npm package, with TypeScript in strict
# mode: unknown keys and wrongly typed values are errors. Needs node and npm; the
# packages are installed into the otel-mtls cache, not the work tree.
#
#   collector-config/grafana/check-schema.sh
set -euo pipefail

readonly SCHEMA_VERSION=13.2.3
readonly TYPESCRIPT_VERSION=7.0.2

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${OTEL_MTLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-mtls}
work="$cache/grafana-schema-$SCHEMA_VERSION"

if [[ ! -x "$work/node_modules/.bin/tsc" ]]; then
    mkdir -p "$work"
    (cd "$work" && npm install --silent --no-audit --no-fund --no-save \
        "@grafana/schema@$SCHEMA_VERSION" "typescript@$TYPESCRIPT_VERSION" >&2)
fi

# ThresholdsMode is a TypeScript enum, which a JSON string literal cannot be
# assigned to; the substitution names the same value through the enum.
{
    echo "import { type Dashboard, ThresholdsMode } from '@grafana/schema';"
    printf 'export const dashboard: Dashboard = '
    sed 's/"mode": "absolute"/"mode": ThresholdsMode.Absolute/' "$here/dashboard.json"
    echo ';'
} >"$work/check.ts"

cd "$work"
node_modules/.bin/tsc --noEmit --strict --skipLibCheck --moduleResolution bundler \
    --module esnext --target es2020 check.ts
echo "check-schema.sh: dashboard.json matches @grafana/schema $SCHEMA_VERSION" >&2
