#!/usr/bin/env bash
# Several replicas on PostgreSQL against one on SQLite (see bench/README.md):
#   - token exchange at concurrency 16: one replica on SQLite (sync=full), one replica on
#     PostgreSQL, and two replicas on one PostgreSQL database (wrk at 8 on each, summed)
#   - a revocation made on one replica, timed until a feed subscriber on the other has it
# Needs wrk, curl and psql; uses the local PostgreSQL (PG, default
# postgres://postgres@127.0.0.1:5432), in a database of its own that it drops at the end.
# Every load step is bounded by DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-8}
REPEAT=${REPEAT:-2}
PG=${PG:-postgres://postgres@127.0.0.1:5432}
P1=${PORT:-18310}
P2=$((P1 + 1))
for tool in wrk curl psql; do command -v $tool >/dev/null || { echo "$tool is needed" >&2; exit 1; }; done

cargo build --release -q -p mayfly-cli -p mayfly-bench
work=$(mktemp -d)
db="mayfly_bench_$(date +%s)"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  psql "$PG/postgres" -qc "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
psql "$PG/postgres" -qc "CREATE DATABASE \"$db\""

# One fixture (keys, policies, platform token), copied for each server.
target/release/mayfly-bench-fixture "$work/sqlite" "$P1" full
for n in a b; do cp -r "$work/sqlite" "$work/$n"; done
sed -i "s/127.0.0.1:$P1/127.0.0.1:$P2/" "$work/b/mayfly.toml"
for n in a b; do
  # Top-level keys go before the first table; every replica names the same issuer.
  sed -i "s|^data_dir = \"data\"|data_dir = \"data\"\nstorage = \"$PG/$db\"\npublic_url = \"http://mayfly.bench.local\"|" \
    "$work/$n/mayfly.toml"
done

start() { # dir port
  (cd "$1" && MAYFLY_LOG=warn exec "$OLDPWD/target/release/mayfly" server --config mayfly.toml >/dev/null 2>>server.log) &
  pids+=($!)
  for _ in $(seq 1 200); do curl -sf "http://127.0.0.1:$2/readyz" >/dev/null && return 0; sleep 0.1; done
  cat "$1/server.log"; exit 1
}
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }

results=bench/results
mkdir -p "$results"
out="$results/replicas-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# Mayfly replicas benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -sr)"
  echo "# mayfly $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(psql "$PG/postgres" -Atc 'SHOW server_version'), wrk on the same 2 cores"
  echo "# setup repetition requests/s p50 p99"
} > "$out"

# CPU seconds used so far by the replicas and by PostgreSQL's processes, so each step
# can say where the two cores went.
cpu_of() { # pids...
  local t=0 p
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$t"
}
cpu_split() { echo "$(cpu_of "${pids[@]}") $(cpu_of $(pgrep -x postgres))"; }
cpu_line() { # before-split after-split seconds
  local tick; tick=$(getconf CLK_TCK)
  echo "$1 $2 $3" | awk -v tick="$tick" '{printf "cpu: mayfly %.0f%% postgres %.0f%% of one core", ($3-$1)/tick/$5*100, ($4-$2)/tick/$5*100}'
}

wrk_once() { # port concurrency -> "rps p50 p99"
  local res
  res=$(wrk -t1 -c"$2" -d"${DURATION}s" --latency -s "$work/sqlite/exchange.lua" "http://127.0.0.1:$1/v1/token" 2>&1)
  if echo "$res" | grep -q unexpected; then echo "$res" | grep unexpected | sort | uniq -c >&2; exit 1; fi
  echo "$(echo "$res" | awk '/Requests\/sec/ {print $2}') $(echo "$res" | awk '$1=="50%" {print $2}') $(echo "$res" | awk '$1=="99%" {print $2}')"
}

one_replica() { # name port: REPEAT runs at concurrency 16 against one replica
  local r before res
  for r in $(seq 1 "$REPEAT"); do
    before=$(cpu_split)
    res=$(wrk_once "$2" 16)
    echo "$1 $r $res $(cpu_line "$before" "$(cpu_split)" "$DURATION")" | tee -a "$out"
  done
}

start "$work/sqlite" "$P1"
one_replica sqlite-1-replica-c16 "$P1"
stop_all

start "$work/a" "$P1"
one_replica postgres-1-replica-c16 "$P1"
start "$work/b" "$P2"
for r in $(seq 1 "$REPEAT"); do
  before=$(cpu_split)
  wrk_once "$P1" 8 > "$work/wrk-a" &
  wa=$!
  wrk_once "$P2" 8 > "$work/wrk-b"
  wait "$wa"
  read -r ra pa qa < "$work/wrk-a"
  read -r rb pb qb < "$work/wrk-b"
  echo "postgres-2-replicas-c8+8 $r $(echo "$ra $rb" | awk '{printf "%.0f", $1 + $2}') a:$pa/$qa b:$pb/$qb" \
    "$(cpu_line "$before" "$(cpu_split)" "$DURATION")" | tee -a "$out"
done

admin=$(cat "$work/a/data/admin-token" 2>/dev/null || cat "$work/b/data/admin-token")
echo "revocation on one replica -> feed subscriber on the other (ms), 20 rounds:" | tee -a "$out"
target/release/mayfly-bench-fixture feed-latency "http://127.0.0.1:$P1" "$admin" "$work/a/platform.jwt" 20 \
  "http://127.0.0.1:$P2" | sort -n | tr '\n' ' ' | tee -a "$out"
echo | tee -a "$out"
echo "results in $out"
