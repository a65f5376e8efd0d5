#!/usr/bin/env bash
# Build the telemetry backends this directory configures, from the Go registry:
#
#   build.sh collector   the OpenTelemetry Collector described by builder-config.yaml
#   build.sh jaeger      Jaeger v2 (a collector distribution of its own)
#   build.sh all         both, one "name=path" line each
#
# Binaries go to a cache outside the work tree, ${OTEL_MTLS_CACHE_DIR}, by default
# ${XDG_CACHE_HOME:-$HOME/.cache}/otel-mtls. Each build lives in a directory named
# after a hash of everything that determines it (the manifest, the pinned versions,
# the Go version), so a warm run finds the binary and only prints its path, and a
# changed manifest builds beside the old one instead of overwriting it.
#
# Standard output carries only the binary paths; progress and build logs go to
# standard error, so callers can use "$(build.sh collector)".
set -euo pipefail
# Command substitutions, "$(build_collector)" included, stop at a failure too.
shopt -s inherit_errexit

readonly BUILDER_VERSION=v0.161.0
# Jaeger's Go module path has no /v2: tag v1.75.0 is Jaeger 2.12.0.
readonly JAEGER_VERSION=v1.75.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly here
readonly manifest="$here/builder-config.yaml"
cache=${OTEL_MTLS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/otel-mtls}
readonly cache

log() {
    printf 'build.sh: %s\n' "$*" >&2
}

die() {
    log "$*"
    exit 1
}

# Print the first 16 hex digits of the SHA-256 of standard input.
short_hash() {
    sha256sum | cut -c1-16
}

# Run a build step with its output in a log file; on failure show the log.
run_logged() {
    local logfile=$1
    shift

    if ! "$@" >>"$logfile" 2>&1; then
        log "failed: $*"
        cat "$logfile" >&2
        return 1
    fi
}

# Move a finished build into its final place. Where flock is missing, another
# run may have finished the same build meanwhile; its copy is as good as ours.
publish() {
    local staging=$1 final=$2

    if ! mv -T "$staging" "$final" 2>/dev/null; then
        rm -rf "$staging"
    fi
}

# Serialise builds of the same key: a second run (a parallel test run, say)
# waits for the first and then finds its binary, instead of compiling the same
# modules a second time on the same cores. Without flock, runs just overlap.
lock() {
    local lockfile=$1

    if command -v flock >/dev/null; then
        exec {lock_fd}>"$lockfile"
        flock "$lock_fd"
        # Holding the lock, any staging directory of this key is a leftover of
        # an interrupted run.
        rm -rf "${lockfile%.lock}".tmp.*
    fi
}

go_version() {
    go env GOVERSION
}

builder_binary() {
    local tools="$cache/tools/builder-$BUILDER_VERSION"

    if [[ ! -x "$tools/builder" ]]; then
        log "installing the collector builder $BUILDER_VERSION"
        mkdir -p "$tools"
        run_logged "$cache/tools/builder-install.log" env GOBIN="$tools" \
            go install "go.opentelemetry.io/collector/cmd/builder@$BUILDER_VERSION" ||
            return 1
    fi
    printf '%s\n' "$tools/builder"
}

build_collector() {
    local key final staging builder started

    key=$(
        {
            cat "$manifest"
            echo "builder $BUILDER_VERSION"
            go_version
        } | short_hash
    )
    final="$cache/otelcol-$key"
    if [[ -x "$final/otelcol-mtls/otelcol-mtls" ]]; then
        printf '%s\n' "$final/otelcol-mtls/otelcol-mtls"
        return
    fi

    mkdir -p "$cache"
    lock "$final.lock"
    if [[ -x "$final/otelcol-mtls/otelcol-mtls" ]]; then
        printf '%s\n' "$final/otelcol-mtls/otelcol-mtls"
        return
    fi

    builder=$(builder_binary) || return 1
    staging=$(mktemp -d "$final.tmp.XXXXXX")
    started=$SECONDS
    log "building the collector in $staging (a few minutes when cold)"
    # output_path in the manifest is relative, so the generated module and the
    # binary land in the staging directory.
    (cd "$staging" && run_logged "$staging/build.log" \
        "$builder" --config "$manifest") || {
        rm -rf "$staging"
        return 1
    }
    log "collector built in $((SECONDS - started))s"
    publish "$staging" "$final"
    printf '%s\n' "$final/otelcol-mtls/otelcol-mtls"
}

build_jaeger() {
    local key final staging started

    key=$(
        {
            echo "jaeger $JAEGER_VERSION"
            go_version
        } | short_hash
    )
    final="$cache/jaeger-$key"
    if [[ -x "$final/jaeger" ]]; then
        printf '%s\n' "$final/jaeger"
        return
    fi

    mkdir -p "$cache"
    lock "$final.lock"
    if [[ -x "$final/jaeger" ]]; then
        printf '%s\n' "$final/jaeger"
        return
    fi

    staging=$(mktemp -d "$final.tmp.XXXXXX")
    started=$SECONDS
    log "building Jaeger $JAEGER_VERSION in $staging (several minutes when cold)"
    # "go install ...@version" refuses modules whose go.mod has replace
    # directives, and Jaeger's has some. Adding it as a tool dependency of a small
    # module of our own resolves it the ordinary way.
    mkdir "$staging/module"
    (
        cd "$staging/module" &&
            run_logged "$staging/build.log" go mod init otel-mtls.invalid/jaeger &&
            run_logged "$staging/build.log" \
                go get -tool "github.com/jaegertracing/jaeger/cmd/jaeger@$JAEGER_VERSION" &&
            run_logged "$staging/build.log" \
                go build -trimpath -o "$staging/jaeger" \
                github.com/jaegertracing/jaeger/cmd/jaeger
    ) || {
        rm -rf "$staging"
        return 1
    }
    log "Jaeger built in $((SECONDS - started))s"
    publish "$staging" "$final"
    printf '%s\n' "$final/jaeger"
}

main() {
    command -v go >/dev/null || die "Go is required (https://go.dev/doc/install)"

    case "${1:-all}" in
    collector) build_collector ;;
    jaeger) build_jaeger ;;
    all)
        local collector jaeger
        collector=$(build_collector) || exit 1
        jaeger=$(build_jaeger) || exit 1
        printf 'collector=%s\njaeger=%s\n' "$collector" "$jaeger"
        ;;
    *) die "usage: $0 [collector|jaeger|all]" ;;
    esac
}

main "$@"
