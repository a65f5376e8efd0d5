#!/usr/bin/env bash
# Instruction counts per handshake pair, plain and instrumented, under callgrind.
# Two runs per variant with different pair counts; their difference cancels the
# start-up cost (imports, key generation), leaving the cost of the pairs alone.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
python="${PYTHON:-python3}"
credential="${1:-valid}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

count() {
    valgrind --tool=callgrind --callgrind-out-file="$out/cg" \
        "$python" -m benchmarks.cpu_cost --mode "$1" --credential "$credential" \
        --pairs "$2" 2>&1 | sed -n 's/.*Collected : \([0-9]*\).*/\1/p'
}

declare -A per_pair
for mode in plain instrumented; do
    low="$(count "$mode" 20)"
    high="$(count "$mode" 80)"
    per_pair[$mode]=$(( (high - low) / 60 ))
    echo "$mode: ${per_pair[$mode]} instructions per pair"
done

"$python" -c "import sys; p, i = map(int, sys.argv[1:]); print(f'ratio {p / i:.3f}')" \
    "${per_pair[plain]}" "${per_pair[instrumented]}"
