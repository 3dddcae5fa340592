#!/usr/bin/env bash
# Soak: holds a paced text load on a local cluster for DURATION seconds
# (default 600) at RATE messages/s (default 6000, about half the measured
# `ring` throughput on a 2-core machine) and records the node's resident
# memory every 10 s. Not part of the test suite; see BENCHMARKS.md.
#
#   cargo build --release && scripts/soak.sh [RATE] [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-6000}
duration=${2:-600}
bin=${FASTCHAT_BIN:-target/release/fastchat}
dir=$(mktemp -d)
trap 'kill $up_pid 2>/dev/null || true; rm -rf "$dir"' EXIT

"$bin" up --listen 127.0.0.1:0 --dir "$dir/cluster" --friend-requests-per-minute 100000 > "$dir/up.out" 2>/dev/null &
up_pid=$!
for _ in $(seq 50); do grep -q "fastchat is up" "$dir/up.out" 2>/dev/null && break; sleep 0.1; done
server=$(sed -E 's/.*--server ([^ ]+).*/\1/' "$dir/up.out")
ca=$(sed -E 's/.*--ca ([^ ]+).*/\1/' "$dir/up.out")

echo "seconds,node_rss_kib"
(
    start=$(date +%s)
    while kill -0 "$up_pid" 2>/dev/null; do
        rss=$(awk '/VmRSS/ {print $2}' "/proc/$up_pid/status")
        echo "$(( $(date +%s) - start )),$rss"
        sleep 10
    done
) &
sampler=$!
"$bin" bench latency --server "$server" --ca "$ca" --clients 10 --rate "$rate" --duration "$duration" >&2
kill "$sampler" 2>/dev/null || true
