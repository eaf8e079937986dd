#!/usr/bin/env bash
# Mayfly end-to-end benchmarks on loopback (see bench/README.md):
#   - token exchange (RS256 platform JWT → attestation → Cedar → EdDSA token → durable ledger record)
#   - introspection (RFC 7662)
#   - revocation of a subject holding 100,000 live tokens
#   - revocation feed latency (revoke → event on the SSE stream)
#   - resident memory
# Needs wrk (apt-get install wrk) and curl. Every load step is bounded by DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
PORT=${PORT:-18300}
SYNC=${SYNC:-full}
REPEAT=${REPEAT:-3}
SEED=${SEED:-100000}
for tool in wrk curl; do command -v $tool >/dev/null || { echo "$tool is needed (apt-get install $tool)" >&2; exit 1; }; done

cargo build --release -q -p mayfly-cli -p mayfly-bench
work=$(mktemp -d)
server=""
cleanup() { [ -n "$server" ] && kill "$server" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
url="http://127.0.0.1:$PORT"
target/release/mayfly-bench-fixture "$work" "$PORT" "$SYNC"

start_server() {
  (cd "$work" && MAYFLY_LOG=warn exec "$OLDPWD/target/release/mayfly" server --config mayfly.toml >/dev/null 2>>"$work/server.log") &
  server=$!
  for _ in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && return 0; sleep 0.1; done
  cat "$work/server.log"; exit 1
}
stop_server() { kill "$server"; wait "$server" 2>/dev/null || true; server=""; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$server/status"; }

start_server
admin=$(cat "$work/data/admin-token")
body=$(sed -n 's/^wrk.body = "\(.*\)"$/\1/p' "$work/exchange.lua")
# One exchange by hand, so a misconfiguration fails loudly instead of benchmarking errors.
token=$(curl -sf "$url/v1/token" -H 'content-type: application/x-www-form-urlencoded' --data-binary "$body" | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
idle_rss=$(rss_kib)
cat > "$work/introspect.lua" <<LUA
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Bearer $admin"
wrk.body = "token=$token"
function response(status, headers, body)
  if status ~= 200 or not string.find(body, '"active":true', 1, true) then
    io.stderr:write("unexpected answer " .. status .. "\n")
  end
end
LUA

results=bench/results
mkdir -p "$results"
out="$results/bench-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# Mayfly benchmarks, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "# mayfly $(git rev-parse --short HEAD 2>/dev/null || echo '?'), ledger sync=$SYNC, load generator wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}') on the same 2 cores"
  echo "# operation concurrency repetition requests/s p50 p99"
} > "$out"

load() { # name script concurrency
  local name=$1 script=$2 c=$3 threads res
  threads=$(( c < 2 ? 1 : 2 ))
  for r in $(seq 1 "$REPEAT"); do
    res=$(wrk -t"$threads" -c"$c" -d"${DURATION}s" --latency -s "$script" "$url$4" 2>&1)
    if echo "$res" | grep -q "unexpected"; then echo "$res" | grep unexpected | sort | uniq -c >&2; exit 1; fi
    echo "$name $c $r $(echo "$res" | awk '/Requests\/sec/ {print $2}') $(echo "$res" | awk '$1=="50%" {print $2}') $(echo "$res" | awk '$1=="99%" {print $2}')" | tee -a "$out"
  done
}
# The disk alone, first: at sync=full every group commit waits for it, so its stalls are the exchange's tail.
target/release/mayfly-bench-fixture disk-sync "$work" 5 | tee -a "$out"
for c in 1 16; do load exchange "$work/exchange.lua" "$c" /v1/token; done
# The same exchange for an audience signed by an RS256 profile, as cloud tokens are.
for c in 1 16; do load exchange-rs256 "$work/exchange-rs256.lua" "$c" /v1/token; done
for c in 1 16; do load introspect "$work/introspect.lua" "$c" /v1/introspect; done

echo "feed latency (ms), 20 rounds:" | tee -a "$out"
target/release/mayfly-bench-fixture feed-latency "$url" "$admin" "$work/platform.jwt" 20 | sort -n | tr '\n' ' ' | tee -a "$out"
echo | tee -a "$out"
echo "rss_kib idle $idle_rss after_load $(rss_kib) issued_credentials $(curl -sf "$url/metrics" | awk '/^mayfly_credentials_issued_total/ {s+=$2} END {print s}')" | tee -a "$out"
stop_server

# Revoking a subject that holds $SEED live tokens: one selector row, timed over HTTP.
subject="spiffe://bench.local/ns/prod/sa/seeded"
target/release/mayfly-bench-fixture seed "$work" "$SEED" "$subject"
start_server
for r in $(seq 1 5); do
  t=$(curl -s -o /dev/null -w '%{http_code} %{time_total}' "$url/v1/revocations" -H "authorization: Bearer $admin" \
        -H 'content-type: application/json' -d "{\"subject\":\"$subject\",\"reason\":\"bench\"}")
  echo "revoke_subject_with_${SEED}_live_tokens round $r status_and_seconds $t" | tee -a "$out"
done
stop_server
echo "written to $out"
