#!/usr/bin/env bash
# End-to-end load benchmark of token exchange: attestation (RS256 platform JWT),
# Cedar policy, EdDSA signing and the durable ledger record, over HTTP on loopback.
# Needs wrk (apt-get install wrk). Every run is bounded: DURATION seconds per step.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
PORT=${PORT:-18300}
SYNC=${SYNC:-full}
REPEAT=${REPEAT:-3}
command -v wrk >/dev/null || { echo "wrk is needed: apt-get install wrk" >&2; exit 1; }

cargo build --release -q -p mayfly-cli -p mayfly-bench
work=$(mktemp -d)
trap 'kill $server 2>/dev/null || true; rm -rf "$work"' EXIT
target/release/mayfly-bench-fixture "$work" "$PORT" "$SYNC"
MAYFLY_LOG=warn target/release/mayfly server --config "$work/mayfly.toml" >/dev/null 2>"$work/server.log" &
server=$!
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null || { cat "$work/server.log"; exit 1; }

# One exchange by hand, so a misconfiguration fails loudly instead of benchmarking errors.
curl -sf "http://127.0.0.1:$PORT/v1/token" -H 'content-type: application/x-www-form-urlencoded' \
  --data-binary "$(sed -n 's/^wrk.body = "\(.*\)"$/\1/p' "$work/exchange.lua")" >/dev/null

results=bench/results
mkdir -p "$results"
out="$results/exchange-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# Mayfly token exchange, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "# mayfly $(git rev-parse --short HEAD 2>/dev/null || echo '?'), ledger sync=$SYNC, wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}')"
  echo "# concurrency repetition requests/s p50 p99"
} > "$out"
for c in 1 16; do
  threads=$(( c < 2 ? 1 : 2 ))
  for r in $(seq 1 "$REPEAT"); do
    res=$(wrk -t"$threads" -c"$c" -d"${DURATION}s" --latency -s "$work/exchange.lua" "http://127.0.0.1:$PORT/v1/token" 2>&1)
    rps=$(echo "$res" | awk '/Requests\/sec/ {print $2}')
    p50=$(echo "$res" | awk '$1=="50%" {print $2}')
    p99=$(echo "$res" | awk '$1=="99%" {print $2}')
    errors=$(echo "$res" | grep -c "unexpected status" || true)
    echo "$c $r $rps $p50 $p99" | tee -a "$out"
    [ "$errors" = 0 ] || { echo "non-200 answers during the run:" >&2; echo "$res" | grep "unexpected status" | sort | uniq -c >&2; exit 1; }
  done
done
echo "written to $out"
