#!/usr/bin/env bash
# The credential-injecting proxy on loopback (see bench/README.md): requests per second and
# latency of a plain-HTTP call made directly to an upstream (the caller holding the key)
# against the same call through `mayfly proxy run` (forward proxy, absolute form; the server
# decides each request and the proxy injects the key), at concurrency 1 and 16.
# Needs wrk and curl. Every load step is bounded by DURATION seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10}
REPEAT=${REPEAT:-2}
PORT=${PORT:-18400}
for tool in wrk curl; do command -v $tool >/dev/null || { echo "$tool is needed (apt-get install $tool)" >&2; exit 1; }; done

cargo build --release -q -p mayfly-cli -p mayfly-bench
bin=$PWD/target/release
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
server="http://127.0.0.1:$PORT" upstream_port=$((PORT + 1)) proxy_port=$((PORT + 2))

mkdir -p "$work/policies"
(umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$work/kek")
cat > "$work/mayfly.toml" <<TOML
trust_domain = "bench.local"
data_dir = "data"
[listen]
addr = "127.0.0.1:$PORT"
[keys]
kek_file = "kek"
[policy]
dir = "policies"
[ledger]
sync = "normal"
[[proxy.upstreams]]
name = "bench"
url = "http://127.0.0.1:$upstream_port"
hosts = ["bench.test"]
requests_per_minute = 0
[proxy.upstreams.inject]
kind = "header"
header = "X-Api-Key"
secret = "bench-key"
TOML
cat > "$work/policies/bench.cedar" <<'CEDAR'
permit (principal, action == Mayfly::Action::"start_task", resource) when { principal.attestor == "join_token" };
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"urn:mayfly:proxy");
permit (principal is Mayfly::Task, action == Mayfly::Action::"proxy", resource == Mayfly::Upstream::"bench")
  when { context.method == "GET" && context.path like "/v1/*" };
CEDAR

"$bin/mayfly-bench-fixture" proxy-upstream "$upstream_port" & pids+=($!)
(cd "$work" && MAYFLY_LOG=warn exec "$bin/mayfly" server --config mayfly.toml >/dev/null 2>>server.log) & pids+=($!)
for _ in $(seq 1 100); do curl -sf "$server/readyz" >/dev/null && break; sleep 0.1; done
export MAYFLY_URL=$server MAYFLY_ADMIN_TOKEN
MAYFLY_ADMIN_TOKEN=$(cat "$work/data/admin-token")
task_token() { # spiffe path → a task token
  local join
  join=$("$bin/mayfly" join-token create --spiffe-path "$1")
  MAYFLY_JOIN_TOKEN=$join MAYFLY_ADMIN_TOKEN= "$bin/mayfly" tasks start --purpose "proxy bench"
}
proxy_task=$(task_token bench/proxy)
workload_task=$(task_token bench/workload)
start_proxy() { # worker threads
  : > "$work/proxy.log"
  MAYFLY_TASK_TOKEN=$proxy_task MAYFLY_LOG=warn "$bin/mayfly" proxy run --listen "127.0.0.1:$proxy_port" \
    --worker-threads "$1" 2>>"$work/proxy.log" & proxy_pid=$!; pids+=($proxy_pid)
  for _ in $(seq 1 100); do grep -q "listening on" "$work/proxy.log" && break; sleep 0.1; done
}
start_proxy 1
auth=$(printf 'task:%s' "$workload_task" | base64 -w0)

# One request each way by hand, so a misconfiguration fails loudly instead of benchmarking errors.
[ "$(curl -s "http://127.0.0.1:$upstream_port/v1/x" -H 'X-Api-Key: bench-key')" = ok ] || { echo "upstream?" >&2; exit 1; }
[ "$(curl -s -x "http://task:$workload_task@127.0.0.1:$proxy_port" http://bench.test/v1/x)" = ok ] || { cat "$work/proxy.log" "$work/server.log" >&2; exit 1; }

cat > "$work/direct.lua" <<'LUA'
wrk.headers["X-Api-Key"] = "bench-key"
function response(status) if status ~= 200 then io.stderr:write("unexpected answer " .. status .. "\n") end end
LUA
cat > "$work/proxied.lua" <<LUA
wrk.path = "http://bench.test/v1/items?limit=10"
wrk.headers["Host"] = "bench.test"
wrk.headers["Proxy-Authorization"] = "Basic $auth"
function response(status) if status ~= 200 then io.stderr:write("unexpected answer " .. status .. "\n") end end
LUA

mkdir -p bench/results
out="bench/results/proxy-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# Mayfly proxy benchmark, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(uname -sr)"
  echo "# mayfly $(git rev-parse --short HEAD 2>/dev/null || echo '?'); wrk, upstream, server and proxy share the same cores"
  echo "# path concurrency repetition requests/s p50 p99"
} > "$out"
load() { # name script concurrency url
  local threads res
  threads=$(( $3 < 2 ? 1 : 2 ))
  for r in $(seq 1 "$REPEAT"); do
    res=$(wrk -t"$threads" -c"$3" -d"${DURATION}s" --latency -s "$2" "$4" 2>&1)
    if echo "$res" | grep -q "unexpected"; then echo "$res" | grep unexpected | sort | uniq -c >&2; exit 1; fi
    echo "$1 $3 $r $(echo "$res" | awk '/Requests\/sec/ {print $2}') $(echo "$res" | awk '$1=="50%" {print $2}') $(echo "$res" | awk '$1=="99%" {print $2}')" | tee -a "$out"
  done
}
# The proxy with one worker thread (its default) and with two (as many as this machine has cores).
for threads in 1 2; do
  if [ "$threads" != 1 ]; then kill "$proxy_pid"; wait "$proxy_pid" 2>/dev/null || true; start_proxy "$threads"; fi
  for c in 1 16; do
    [ "$threads" = 1 ] && load direct "$work/direct.lua" "$c" "http://127.0.0.1:$upstream_port/v1/items?limit=10"
    load "proxied-t$threads" "$work/proxied.lua" "$c" "http://127.0.0.1:$proxy_port"
  done
done
echo "results in $out"
