"""Interop: the clouds' own SDKs read what `mayfly exec --cloud NAME` wrote (issue 20).

Nothing here talks to a real cloud: every endpoint is loopback, and a guard in this
process refuses any connection to a non-loopback address (it shows up as a FAIL).

Three modes
-----------
1. Child of `mayfly exec` (the real test)::

       mayfly exec --cloud it-aws --cloud it-gcp --cloud it-azure -- \
           python3 tests/interop/cloud_sdks.py aws gcp azure

   The arguments select the clouds to check. For each cloud it runs
   (a) a *rules check*, independent of the SDKs: the token file is read, the JWKS and
       the discovery document are fetched from $MAYFLY_URL, the signature is verified
       with PyJWT, and the cloud's documented rules are checked (alg, kid, JWKS shape,
       iss, aud, iat/exp, sub length, file mode, no whitespace around the token);
   (b) an *SDK check*: the cloud's own client library reads the credential source
       through its own code and runs its own token flow against a loopback stand-in:
       - aws:   boto3, no static keys, web-identity provider -> moto's STS. A small
                recording proxy (started inside this process, in front of
                $AWS_ENDPOINT_URL_STS) proves the WebIdentityToken that reached STS is
                the file's content and that a refresh re-reads the file. When the AWS
                CLI is installed, `aws sts get-caller-identity` is checked the same way.
       - gcp:   google.auth.default() -> identity_pool.Credentials -> refresh() against
                the fake Google STS (and the fake IAM credentials endpoint when
                service_account_impersonation_url is set). When gcloud is installed, the
                file is also compared with what `gcloud iam workload-identity-pools
                create-cred-config` writes for the same inputs (run under `unshare -n`).
       - azure: azure.identity.WorkloadIdentityCredential().get_token(...) against the
                fake Entra authority (HTTPS: azure-identity refuses an http:// authority).
   Output: one `ok   NAME` / `FAIL NAME: detail` line per check, then a summary; the
   exit status is non-zero on any failure.

   Environment read (written by `mayfly exec`, plus what the harness adds):
     MAYFLY_URL                    Mayfly's base URL (JWKS and discovery are fetched there)
     MAYFLY_EXPECT_ISSUER          the configured public_url, i.e. the tokens' `iss`
     MAYFLY_EXPECT_SUB             optional: the exact `sub` expected
     MAYFLY_EXPECT_AWS_AUDIENCE    optional: AWS `aud` (default sts.amazonaws.com)
     AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ROLE_SESSION_NAME
     AWS_DEFAULT_REGION            REQUIRED by boto3 / AWS CLI v1, which ignore AWS_REGION
                                   (NoRegionError without it): `mayfly exec` should write
                                   both when a region is configured, or the harness sets it
     AWS_ENDPOINT_URL_STS          set by the harness: moto's URL (see fakes.json)
     GOOGLE_APPLICATION_CREDENTIALS
     AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_AUTHORITY_HOST
     REQUESTS_CA_BUNDLE            optional: the fakes' CA (fakes.json "ca_file"). When it
                                   is not set, the Azure check fetches the CA from the fake
                                   authority itself (trust on first use, loopback only).

2. `--serve-fakes DIR`: the stand-ins, started by the harness BEFORE Mayfly (the URLs
   must be in Mayfly's config, because `mayfly exec` writes token_url into the Google
   credentials file before the child starts). It binds ephemeral loopback ports, starts

     - moto's server (in-process ThreadedMotoServer) for STS;
     - a fake Google STS (`POST /v1/token`) + IAM credentials
       (`POST /v1/projects/-/serviceAccounts/EMAIL:generateAccessToken`), plain HTTP;
     - a fake Entra ID authority (`POST /{tenant}/oauth2/v2.0/token`, plus the
       v2.0 discovery and instance-discovery documents), HTTPS with a throw-away CA;

   and then atomically writes DIR/fakes.json (poll for it) with:

     {"aws_endpoint_url_sts": "http://127.0.0.1:P1",
      "google_token_url": "http://127.0.0.1:P2/v1/token",
      "google_impersonation_url_prefix": "http://127.0.0.1:P2/v1/projects/-/serviceAccounts/",
      "azure_authority_host": "https://127.0.0.1:P3/",
      "ca_file": "DIR/ca.pem", "pid": N}

   It serves until SIGTERM/SIGINT. The fakes record what they receive
   (`GET /_fake/received` on each) so that the child can compare it with the files.
   The harness may instead run moto itself (`moto_server -H 127.0.0.1 -p PORT`,
   from `moto[server]`); moto does NOT need the role to exist (moto/sts/models.py,
   `assume_role`: "the role does not need to exist"), so no IAM set-up is needed.

3. `--self-test`: proves this script without Mayfly. It mints its own RSA and EC keys
   and tokens with PyJWT, serves a JWKS + discovery on loopback as a stand-in for
   Mayfly (public URL https://mayfly.example.test, different from MAYFLY_URL), starts
   the fakes, writes the files as `mayfly exec` would and runs mode 1 as a child
   process; then breaks one rule at a time (ES256 for Azure, wrong aud, trailing
   slash on iss, ...) and checks that each broken run fails with the expected line.

Harness recipe (the Rust test)
------------------------------
  1. python3 tests/interop/cloud_sdks.py --serve-fakes $TMP/fakes &   (keep its pid)
     poll until $TMP/fakes/fakes.json exists; read it.
  2. Write Mayfly's config: public_url = "https://mayfly.test" (any https URL without port;
     the clouds never fetch it here), an RS256 signing profile, and three [[clouds]]:
       aws:   role_arn arn:aws:iam::123456789012:role/mayfly-it, region (e.g. us-east-1)
       gcp:   project number / pool / provider, token_url = fakes.json google_token_url,
              and (optionally) a service account whose impersonation URL starts with
              fakes.json google_impersonation_url_prefix
       azure: tenant/client ids, authority_host = fakes.json azure_authority_host
  3. Start `mayfly server`, then run, with MAYFLY_EXPECT_ISSUER=<public_url>,
     AWS_ENDPOINT_URL_STS=<fakes.json aws_endpoint_url_sts>, AWS_DEFAULT_REGION (unless
     exec writes it), optionally REQUESTS_CA_BUNDLE=<fakes.json ca_file>, and no AWS keys:
       mayfly exec --cloud it-aws --cloud it-gcp --cloud it-azure -- \\
           python3 tests/interop/cloud_sdks.py aws gcp azure
     and assert exit status 0 (print its output on failure).
  4. kill -TERM the fakes' pid.

Usage:
  python3 cloud_sdks.py [aws] [gcp] [azure]
  python3 cloud_sdks.py --serve-fakes DIR
  python3 cloud_sdks.py --self-test
"""
import atexit
import base64
import datetime
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt

RESULTS = []


def check(name, cond, detail=""):
    RESULTS.append((name, bool(cond)))
    print(("ok   " if cond else "FAIL ") + name + (f": {detail}" if detail and not cond else ""), flush=True)
    return bool(cond)


# ---------------------------------------------------------------------------------------
# The clouds' rules, and where they come from (checked with the docs search, Dec 2026).
# [doc] = found in the cloud's documentation; [issue 20] = stated in issue 20, not re-found
# in the docs search within the time (kept: the check is conservative).
#  AWS  - [doc] IAM API CreateOpenIDConnectProvider, Url: "must begin with https://",
#         "path components are allowed but query parameters are not", "should not contain
#         a port number", and should correspond to the iss claim.
#         [doc] AWS What's New 2024-11-20 "STS support for ECDSA-based signatures of OIDC
#         tokens": RSA or ECDSA keys => RS256/384/512, ES256/384/512.
#         [doc] STS API RoleSessionName: upper/lower-case alphanumerics and =,.@- (and
#         underscore), no spaces; length 2..64 => [\w+=,.@-]{2,64}.
#         [issue 20] IAM reads at most ~100 keys of a JWKS.
#  GCP  - [doc] STS API v1 token, subjectToken: headers kid and alg required, alg "must be
#         RS256 or ES256"; iat "must be in the past"; exp "must be less than 48 hours
#         after iat"; aud must be one of the provider's allowed audiences.
#         [doc] WorkloadIdentityPoolProvider.Oidc.allowed_audiences: when empty, aud must be
#         the provider's full canonical resource name "with or without the HTTPS prefix".
#         [doc] Oidc.jwks_json (gcloud --jwk-json-path): "include only the following
#         fields" kty, alg, use, kid, n, e, x, y, crv; troubleshooting page: x5c/x5t are not
#         supported and must be removed.
#         [issue 20] iat at most 24 h old; mapped google.subject at most 127 bytes.
#  Azure- [doc] Graph federatedIdentityCredential: audiences "should be set to
#         api://AzureADTokenExchange"; issuer must match the token's iss, subject must match
#         the token's sub; each limited to 600 characters.
#         [issue 20] RS256 only (ES256 refused with AADSTS5002738); iat required; lifetime at
#         most ~1 day; kid must be in the published JWKS; exact match, trailing slash counts.
#  All  - [issue 20] discovery in the Kubernetes service-account issuer shape: issuer,
#         jwks_uri, response_types_supported ["id_token"], subject_types_supported
#         ["public"], id_token_signing_alg_values_supported; every JWK with kid, alg, use.
# ---------------------------------------------------------------------------------------
ALGS = {
    "aws": {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"},
    "gcp": {"RS256", "ES256"},
    "azure": {"RS256"},
}
AZURE_AUDIENCE = "api://AzureADTokenExchange"
GCP_AUDIENCE_RE = re.compile(
    r"^(https:)?//iam\.googleapis\.com/projects/[0-9]+/locations/global/"
    r"workloadIdentityPools/[a-z0-9-]{4,32}/providers/[a-z0-9-]{4,32}$")
GCP_JWK_FIELDS = {"kty", "alg", "use", "kid", "n", "e", "x", "y", "crv"}
AWS_SESSION_RE = re.compile(r"^[\w+=,.@-]{2,64}$", re.ASCII)
AWS_ROLE_ARN_RE = re.compile(r"^arn:aws[a-z-]*:iam::([0-9]{12}):role/(?:[\w+=,.@-]+/)*([\w+=,.@-]{1,64})$", re.ASCII)
LEEWAY = 60


def is_loopback_host(host):
    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def install_loopback_guard():
    """Refuse, in this process, any TCP connection to a non-loopback address."""
    original = socket.socket.connect

    def guarded(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_loopback_host(str(address[0])):
            raise ConnectionRefusedError(f"cloud_sdks.py: refused a non-loopback connection to {address!r}")
        return original(self, address)

    socket.socket.connect = guarded


def http_get_json(url, context=None):
    with urllib.request.urlopen(url, timeout=10, context=context) as r:
        return json.loads(r.read())


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# ------------------------------------------------------------------------ rules check
def rules_check(cloud, token_path, expected_aud):
    """Checks one token file against the cloud's documented rules. Returns the token."""
    p = f"{cloud}: "
    try:
        st = os.stat(token_path)
        with open(token_path, encoding="utf-8") as f:
            raw = f.read()
    except OSError as e:
        check(p + "token file readable", False, e)
        return None
    check(p + "token file is private (no group/other permission bits)", st.st_mode & 0o077 == 0,
          oct(stat.S_IMODE(st.st_mode)))
    # boto3 (FileWebIdentityTokenLoader), google-auth (identity_pool, text format) and
    # azure-identity (TokenFileMixin) all send the file's bytes as they are: a trailing
    # newline would become part of the JWT sent to the cloud.
    check(p + "token file holds exactly the JWT (no surrounding whitespace or newline)",
          raw == raw.strip() and raw.count(".") == 2, repr(raw[-5:]))
    token = raw.strip()

    base = os.environ.get("MAYFLY_URL", "").rstrip("/")
    issuer = os.environ.get("MAYFLY_EXPECT_ISSUER", "")
    if not check(p + "MAYFLY_URL and MAYFLY_EXPECT_ISSUER are set", base and issuer):
        return token
    try:
        jwks = http_get_json(base + "/.well-known/jwks.json")
        disco = http_get_json(base + "/.well-known/openid-configuration")
    except Exception as e:  # noqa: BLE001
        check(p + "JWKS and discovery fetched from MAYFLY_URL", False, e)
        return token

    # Discovery document.
    check(p + "discovery issuer == MAYFLY_EXPECT_ISSUER", disco.get("issuer") == issuer,
          f"{disco.get('issuer')!r} != {issuer!r}")
    jwks_uri = disco.get("jwks_uri", "")
    check(p + "discovery jwks_uri is https", isinstance(jwks_uri, str) and jwks_uri.startswith("https://"), jwks_uri)
    check(p + "discovery response_types_supported contains id_token",
          "id_token" in (disco.get("response_types_supported") or []), disco.get("response_types_supported"))
    check(p + "discovery subject_types_supported contains public",
          "public" in (disco.get("subject_types_supported") or []), disco.get("subject_types_supported"))

    # Header and JWKS.
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError as e:
        check(p + "token header parses", False, e)
        return token
    alg, kid = header.get("alg"), header.get("kid")
    check(p + f"alg {alg} accepted by {cloud} ({', '.join(sorted(ALGS[cloud]))})", alg in ALGS[cloud], alg)
    check(p + "discovery id_token_signing_alg_values_supported contains the token's alg",
          alg in (disco.get("id_token_signing_alg_values_supported") or []),
          disco.get("id_token_signing_alg_values_supported"))
    check(p + "header typ is JWT", header.get("typ") == "JWT", header.get("typ"))
    keys = jwks.get("keys") or []
    check(p + "JWKS has between 1 and 99 keys", 0 < len(keys) < 100, len(keys))
    bad = [k.get("kid") for k in keys if not (k.get("kid") and k.get("alg") and k.get("use") == "sig")]
    check(p + "every JWK carries kid, alg and use=sig", not bad, bad)
    kids = [k.get("kid") for k in keys]
    check(p + "JWK kids are unique", len(kids) == len(set(kids)), kids)
    if cloud == "gcp":
        extra = sorted({f for k in keys if k.get("kty") in ("RSA", "EC") for f in k} - GCP_JWK_FIELDS)
        check(p + "RSA/EC JWKs can be uploaded to Google as they are (no x5c/x5t/other fields)", not extra, extra)
    match = [k for k in keys if k.get("kid") == kid]
    if not check(p + "kid present and in the JWKS", kid and len(match) == 1, f"kid={kid!r}, JWKS kids={kids}"):
        return token
    jwk = match[0]
    check(p + "the JWK's alg is the token's alg", jwk.get("alg") == alg, f"{jwk.get('alg')} vs {alg}")

    # Signature and claims.
    try:
        key = jwt.PyJWK(jwk, algorithm=alg).key
        claims = jwt.decode(token, key, algorithms=[alg], options={"verify_aud": False, "verify_iss": False,
                                                                   "verify_exp": False, "verify_nbf": False,
                                                                   "verify_iat": False})
        check(p + "signature verifies with the published JWK (PyJWT)", True)
    except Exception as e:  # noqa: BLE001
        check(p + "signature verifies with the published JWK (PyJWT)", False, e)
        claims = json.loads(b64url_decode(token.split(".")[1]))

    iss = claims.get("iss", "")
    check(p + "iss == MAYFLY_EXPECT_ISSUER (exact)", iss == issuer, f"{iss!r} != {issuer!r}")
    u = urllib.parse.urlsplit(iss)
    check(p + "iss is https, without trailing slash, query or fragment",
          u.scheme == "https" and not iss.endswith("/") and not u.query and not u.fragment and u.netloc, iss)
    if cloud == "aws":
        check(p + "iss has no port (IAM OIDC provider URL)", u.port is None, iss)

    aud = claims.get("aud")
    auds = [aud] if isinstance(aud, str) else (aud if isinstance(aud, list) else [])
    check(p + "aud is a single audience", len(auds) == 1, aud)
    if cloud == "gcp":
        check(p + "aud is the provider's full resource name", auds and GCP_AUDIENCE_RE.match(auds[0] or ""), aud)
    if expected_aud is not None:
        check(p + f"aud == {expected_aud}", auds == [expected_aud], aud)

    now = time.time()
    iat, nbf, exp = claims.get("iat"), claims.get("nbf"), claims.get("exp")
    nums = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (iat, nbf, exp))
    if check(p + "iat, nbf and exp are numbers", nums, (iat, nbf, exp)):
        check(p + "iat is in the past", iat <= now + LEEWAY, iat - now)
        check(p + "nbf is in the past", nbf <= now + LEEWAY, nbf - now)
        check(p + "exp is in the future and after iat", exp > now and exp > iat, (exp - now, exp - iat))
        if cloud == "gcp":
            check(p + "iat at most 24 h old (Google STS)", now - iat <= 86400, now - iat)
            check(p + "exp less than 48 h after iat (Google STS)", exp - iat < 48 * 3600, exp - iat)
        if cloud == "azure":
            check(p + "lifetime exp - iat at most 1 day (Entra ID)", exp - iat <= 86400, exp - iat)
    check(p + "jti present", isinstance(claims.get("jti"), str) and claims.get("jti"), claims.get("jti"))
    sub = claims.get("sub")
    if check(p + "sub present", isinstance(sub, str) and sub, sub):
        check(p + "sub is a SPIFFE ID", sub.startswith("spiffe://"), sub)
        if cloud == "gcp":
            check(p + "sub at most 127 bytes (google.subject)", len(sub.encode()) <= 127, len(sub.encode()))
        if cloud == "azure":
            check(p + "sub at most 600 characters (federated credential subject)", len(sub) <= 600, len(sub))
            check(p + "iss at most 600 characters (federated credential issuer)", len(iss) <= 600, len(iss))
        if os.environ.get("MAYFLY_EXPECT_SUB"):
            check(p + "sub == MAYFLY_EXPECT_SUB", sub == os.environ["MAYFLY_EXPECT_SUB"], sub)
    return token


# -------------------------------------------------------------------------- AWS check
class _Recorder(ThreadingHTTPServer):
    daemon_threads = True


def start_sts_recording_proxy(upstream):
    """A loopback proxy in front of moto that records each request (form body, headers)."""
    seen = []

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_POST(self):  # noqa: N802
            body = self.rfile.read(int(self.headers.get("content-length") or 0))
            seen.append({"path": self.path, "headers": dict(self.headers),
                         "form": dict(urllib.parse.parse_qsl(body.decode()))})
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            req = urllib.request.Request(upstream.rstrip("/") + self.path, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    status, rh, data = r.status, r.headers, r.read()
            except urllib.error.HTTPError as e:
                status, rh, data = e.code, e.headers, e.read()
            self.send_response(status)
            self.send_header("content-type", rh.get("content-type", "text/xml"))
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    srv = _Recorder(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}", seen


def aws_check():
    p = "aws: "
    token_path = os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
    role_arn = os.environ.get("AWS_ROLE_ARN", "")
    session_name = os.environ.get("AWS_ROLE_SESSION_NAME", "")
    if not check(p + "AWS_WEB_IDENTITY_TOKEN_FILE, AWS_ROLE_ARN, AWS_ROLE_SESSION_NAME set",
                 token_path and role_arn and session_name):
        return
    token = rules_check("aws", token_path, os.environ.get("MAYFLY_EXPECT_AWS_AUDIENCE", "sts.amazonaws.com"))
    arn = AWS_ROLE_ARN_RE.match(role_arn)
    check(p + "AWS_ROLE_ARN is an IAM role ARN", arn, role_arn)
    check(p + "AWS_ROLE_SESSION_NAME matches [\\w+=,.@-]{2,64}", AWS_SESSION_RE.match(session_name), session_name)
    static = [k for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE")
              if k in os.environ]
    check(p + "no static AWS keys or profile in the environment", not static, static)
    # boto3/botocore read the region from AWS_DEFAULT_REGION (or a config file) only, not
    # AWS_REGION (botocore/configprovider.py: 'region': ('region', 'AWS_DEFAULT_REGION', ...));
    # without one, boto3.client("sts") raises NoRegionError. The other SDKs read AWS_REGION.
    check(p + "AWS_DEFAULT_REGION set (boto3 ignores AWS_REGION)", os.environ.get("AWS_DEFAULT_REGION"),
          f"AWS_REGION={os.environ.get('AWS_REGION')!r}, AWS_DEFAULT_REGION unset")
    if os.environ.get("AWS_REGION") and os.environ.get("AWS_DEFAULT_REGION"):
        check(p + "AWS_REGION == AWS_DEFAULT_REGION",
              os.environ["AWS_REGION"] == os.environ["AWS_DEFAULT_REGION"])
    endpoint = os.environ.get("AWS_ENDPOINT_URL_STS", "")
    if not check(p + "AWS_ENDPOINT_URL_STS is a loopback URL (moto)",
                 endpoint and is_loopback_host(urllib.parse.urlsplit(endpoint).hostname or ""), endpoint):
        return
    if static or not token:
        return

    import boto3
    import botocore.exceptions

    srv, proxy, seen = start_sts_recording_proxy(endpoint)
    os.environ["AWS_ENDPOINT_URL_STS"] = proxy  # only in this process: boto3 goes through the recorder
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")
    try:
        session = boto3.Session()
        creds = session.get_credentials()
        check(p + "boto3 resolves credentials with its web-identity provider",
              creds is not None and creds.method == "assume-role-with-web-identity",
              creds and creds.method)
        ident = session.client("sts").get_caller_identity()
        if arn:
            want = f"arn:aws:sts::{arn.group(1)}:assumed-role/{arn.group(2)}/{session_name}"
            check(p + "GetCallerIdentity is the assumed role with AWS_ROLE_SESSION_NAME", ident.get("Arn") == want,
                  f"{ident.get('Arn')} != {want}")
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        check(p + "boto3 get_caller_identity through the web-identity flow", False, repr(e))
        srv.shutdown()
        return
    exch = [r["form"] for r in seen if r["form"].get("Action") == "AssumeRoleWithWebIdentity"]
    check(p + "STS received one AssumeRoleWithWebIdentity", len(exch) == 1, len(exch))
    if exch:
        check(p + "the WebIdentityToken that reached STS is the file's content", exch[0].get("WebIdentityToken") == token)
        check(p + "RoleArn and RoleSessionName sent as in the environment",
              exch[0].get("RoleArn") == role_arn and exch[0].get("RoleSessionName") == session_name, exch[0])
    exch_h = [r["headers"] for r in seen if r["form"].get("Action") == "AssumeRoleWithWebIdentity"]
    if exch_h:
        check(p + "the exchange itself is unsigned (no static keys used)",
              not any(h.lower() == "authorization" for h in exch_h[0]), exch_h[0])
    gci = [r for r in seen if r["form"].get("Action") == "GetCallerIdentity"]
    check(p + "GetCallerIdentity was signed with the temporary session credentials",
          gci and any(h.lower() == "x-amz-security-token" for h in gci[-1]["headers"]), gci and gci[-1]["headers"])

    # The AWS CLI, when installed, reads the same variables through its own process.
    cli = shutil.which("aws")
    if cli is None:
        print("skip aws: the AWS CLI is not installed")
    elif arn:
        before = len(seen)
        # The AWS CLI caches web-identity credentials under ~/.aws/cli/cache (keyed by role
        # and session name, not by the token): a private HOME keeps this run from reusing them.
        home = tempfile.mkdtemp(prefix="mayfly-aws-cli-home-")
        env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true", AWS_PAGER="", HOME=home)
        try:
            r = subprocess.run([cli, "sts", "get-caller-identity", "--output", "json"], env=env,
                               capture_output=True, text=True, timeout=60)
            got = json.loads(r.stdout).get("Arn") if r.returncode == 0 else None
        except (OSError, ValueError, subprocess.TimeoutExpired) as e:
            r, got = None, repr(e)
        finally:
            shutil.rmtree(home, ignore_errors=True)
        want = f"arn:aws:sts::{arn.group(1)}:assumed-role/{arn.group(2)}/{session_name}"
        check(p + "`aws sts get-caller-identity` (AWS CLI) is the assumed role", got == want,
              got or (r and (r.stderr or r.stdout)[-300:]))
        cli_exch = [r2["form"] for r2 in seen[before:] if r2["form"].get("Action") == "AssumeRoleWithWebIdentity"]
        check(p + "the AWS CLI sent the file's content as WebIdentityToken",
              cli_exch and cli_exch[-1].get("WebIdentityToken") == token)

    # Re-read on refresh: boto3 reads the token file again each time it refreshes. Checked on
    # a private copy (Mayfly's own file is left alone); the forced refresh uses botocore
    # internals (_refresh_using / _cache / _expiry_time), so a change there is a skip.
    tmpdir = tempfile.mkdtemp(prefix="mayfly-aws-reread-")
    copy = os.path.join(tmpdir, "token")
    with open(copy, "w") as f:
        f.write(token)
    saved = os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"]
    os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"] = copy
    try:
        c2 = boto3.Session().get_credentials()
        c2.get_frozen_credentials()
        rotated = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")  # moto does not verify it
        with open(copy, "w") as f:
            f.write(rotated)
        fetcher = getattr(getattr(c2, "_refresh_using", None), "__self__", None)
        if fetcher is None or not hasattr(fetcher, "_cache") or not hasattr(c2, "_expiry_time"):
            print("skip aws: token re-read on refresh (botocore internals changed)")
        else:
            fetcher._cache.clear()
            c2._expiry_time = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(seconds=1)
            c2.get_frozen_credentials()
            last = [r["form"] for r in seen if r["form"].get("Action") == "AssumeRoleWithWebIdentity"][-1]
            check(p + "boto3 re-reads the token file when it refreshes", last.get("WebIdentityToken") == rotated)
    except Exception as e:  # noqa: BLE001
        check(p + "boto3 re-reads the token file when it refreshes", False, repr(e))
    finally:
        os.environ["AWS_WEB_IDENTITY_TOKEN_FILE"] = saved
        os.environ["AWS_ENDPOINT_URL_STS"] = endpoint
        shutil.rmtree(tmpdir, ignore_errors=True)
        srv.shutdown()


# -------------------------------------------------------------------------- GCP check
def gcp_check():
    p = "gcp: "
    path = os.environ.get("GOOGLE_APPLICATION_CREDENTIALS")
    if not check(p + "GOOGLE_APPLICATION_CREDENTIALS set", path):
        return
    try:
        with open(path) as f:
            info = json.load(f)
    except (OSError, ValueError) as e:
        check(p + "credentials file is JSON", False, e)
        return
    cs = info.get("credential_source") or {}
    check(p + "type is external_account", info.get("type") == "external_account", info.get("type"))
    check(p + "audience is //iam.googleapis.com/projects/N/locations/global/workloadIdentityPools/P/providers/Q",
          GCP_AUDIENCE_RE.match(info.get("audience") or "") and info["audience"].startswith("//"), info.get("audience"))
    check(p + "subject_token_type is urn:ietf:params:oauth:token-type:jwt",
          info.get("subject_token_type") == "urn:ietf:params:oauth:token-type:jwt", info.get("subject_token_type"))
    check(p + "credential_source is a text file and nothing else",
          set(cs) == {"file", "format"} and (cs.get("format") or {}).get("type") == "text", cs)
    token_url = info.get("token_url", "")
    if not check(p + "token_url is loopback (the fake Google STS)",
                 is_loopback_host(urllib.parse.urlsplit(token_url).hostname or ""), token_url):
        return
    imp = info.get("service_account_impersonation_url")
    if imp:
        check(p + "service_account_impersonation_url ends with :generateAccessToken and is loopback",
              imp.endswith(":generateAccessToken") and is_loopback_host(urllib.parse.urlsplit(imp).hostname or ""), imp)
    gcloud_reference_check(info)
    token = rules_check("gcp", cs.get("file", ""), info.get("audience"))
    if not token:
        return

    import google.auth
    import google.auth.transport.requests
    from google.auth import identity_pool

    try:
        # No scopes here: with scopes, default() asks Cloud Resource Manager for the
        # project id (a network call). Scopes are added afterwards.
        creds, _ = google.auth.default()
        check(p + "google.auth.default() gives identity_pool.Credentials",
              isinstance(creds, identity_pool.Credentials), type(creds))
        creds = creds.with_scopes(["https://www.googleapis.com/auth/cloud-platform"])
        creds.refresh(google.auth.transport.requests.Request())
        check(p + "credentials.refresh() ran Google's token flow", creds.valid and creds.token, creds.token)
    except Exception as e:  # noqa: BLE001
        check(p + "google-auth identity_pool refresh against the fake STS", False, repr(e))
        return
    u = urllib.parse.urlsplit(token_url)
    received = http_get_json(f"{u.scheme}://{u.netloc}/_fake/received")
    sts = [r for r in received if r["kind"] == "google-sts" and r["form"].get("subject_token") == token]
    if check(p + "the fake STS received the file's content as subject_token", sts):
        f = sts[-1]["form"]
        check(p + "STS form: grant_type token-exchange",
              f.get("grant_type") == "urn:ietf:params:oauth:grant-type:token-exchange", f)
        check(p + "STS form: audience, subject_token_type, requested_token_type, scope",
              f.get("audience") == info.get("audience")
              and f.get("subject_token_type") == "urn:ietf:params:oauth:token-type:jwt"
              and f.get("requested_token_type") == "urn:ietf:params:oauth:token-type:access_token"
              # google-auth asks STS for the iam scope when it impersonates next
              and f.get("scope") == ("https://www.googleapis.com/auth/iam" if imp
                                     else "https://www.googleapis.com/auth/cloud-platform"), f)
        if imp:
            gen = [r for r in received if r["kind"] == "google-iam"
                   and r["authorization"] == "Bearer " + sts[-1]["answer"]]
            if check(p + "generateAccessToken called with the STS token, for the cloud-platform scope",
                     gen and "https://www.googleapis.com/auth/cloud-platform" in (gen[-1]["json"] or {}).get("scope", []),
                     gen and gen[-1]["json"]):
                check(p + "the final token is the impersonated service account's",
                      creds.token == gen[-1]["answer"] and gen[-1]["path"] == urllib.parse.urlsplit(imp).path,
                      (creds.token, gen[-1]["path"]))
        else:
            check(p + "the final token is the STS token", creds.token == sts[-1]["answer"], creds.token)


def gcloud_reference_check(info):
    """Compares the file with what Google's own tool writes for the same inputs:
    `gcloud iam workload-identity-pools create-cred-config`, run offline in an empty network
    namespace (`unshare -n`); skipped when gcloud or unshare is not available."""
    p = "gcp: "
    gcloud, unshare = shutil.which("gcloud"), shutil.which("unshare")
    aud = info.get("audience") or ""
    if not (gcloud and unshare) or not aud.startswith("//iam.googleapis.com/"):
        print("skip gcp: file compared with gcloud's create-cred-config (gcloud or unshare missing)")
        return
    tmp = tempfile.mkdtemp(prefix="mayfly-gcloud-")
    out = os.path.join(tmp, "ref.json")
    cmd = [unshare, "-n", gcloud, "iam", "workload-identity-pools", "create-cred-config",
           aud[len("//iam.googleapis.com/"):], f"--output-file={out}",
           f"--credential-source-file={(info.get('credential_source') or {}).get('file', '')}",
           "--credential-source-type=text", "--subject-token-type=urn:ietf:params:oauth:token-type:jwt"]
    imp = info.get("service_account_impersonation_url")
    m = re.search(r"/serviceAccounts/([^/:]+):generateAccessToken$", imp or "")
    if m:
        cmd.append(f"--service-account={m.group(1)}")
    env = dict(os.environ, CLOUDSDK_CONFIG=os.path.join(tmp, "cfg"), CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
               CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true")
    try:
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            if "unshare" in r.stderr and "Operation not permitted" in r.stderr:
                print("skip gcp: file compared with gcloud's create-cred-config (no network namespace)")
                return
            check(p + "gcloud create-cred-config ran (offline)", False, r.stderr[-300:])
            return
        with open(out) as f:
            ref = json.load(f)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    same = ("type", "audience", "subject_token_type", "credential_source")
    diff = {k: (info.get(k), ref.get(k)) for k in same if info.get(k) != ref.get(k)}
    check(p + "file matches gcloud create-cred-config (type, audience, subject_token_type, credential_source)",
          not diff, diff)
    if m:
        path = lambda u: urllib.parse.urlsplit(u or "").path  # noqa: E731
        check(p + "service_account_impersonation_url has gcloud's path",
              path(imp) == path(ref.get("service_account_impersonation_url")),
              (imp, ref.get("service_account_impersonation_url")))
    extra = sorted(set(info) - set(ref) - {"token_url"})
    check(p + "no field gcloud does not write", not extra, extra)


# ------------------------------------------------------------------------ Azure check
def azure_check():
    p = "azure: "
    names = ("AZURE_FEDERATED_TOKEN_FILE", "AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_AUTHORITY_HOST")
    missing = [n for n in names if not os.environ.get(n)]
    if not check(p + "AZURE_FEDERATED_TOKEN_FILE, AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_AUTHORITY_HOST set",
                 not missing, missing):
        return
    authority = os.environ["AZURE_AUTHORITY_HOST"]
    au = urllib.parse.urlsplit(authority)
    # azure-identity's normalize_authority() raises on anything but https://.
    check(p + "AZURE_AUTHORITY_HOST is https", au.scheme == "https", authority)
    if not check(p + "AZURE_AUTHORITY_HOST is loopback (the fake authority)", is_loopback_host(au.hostname or ""),
                 authority):
        return
    token = rules_check("azure", os.environ["AZURE_FEDERATED_TOKEN_FILE"], AZURE_AUDIENCE)
    if not token or au.scheme != "https":
        return
    origin = f"https://{au.netloc}"
    if not os.path.isfile(os.environ.get("REQUESTS_CA_BUNDLE", "")):
        # Trust on first use, loopback only: fetch the fakes' CA unverified, then let
        # azure-identity verify the authority's certificate against it.
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with urllib.request.urlopen(origin + "/_fake/ca.pem", timeout=10, context=ctx) as r:
            pem = r.read()
        fd, ca = tempfile.mkstemp(prefix="mayfly-fake-ca-", suffix=".pem")
        os.write(fd, pem)
        os.close(fd)
        atexit.register(os.unlink, ca)
        os.environ["REQUESTS_CA_BUNDLE"] = ca

    from azure.identity import WorkloadIdentityCredential

    scope = "https://management.azure.com/.default"
    try:
        cred = WorkloadIdentityCredential()
        at = cred.get_token(scope)
        check(p + "WorkloadIdentityCredential().get_token() succeeded", at.token and at.expires_on > time.time(), at)
    except Exception as e:  # noqa: BLE001
        check(p + "WorkloadIdentityCredential().get_token() against the fake authority", False, repr(e))
        return
    ctx = ssl.create_default_context(cafile=os.environ["REQUESTS_CA_BUNDLE"])
    received = http_get_json(origin + "/_fake/received", context=ctx)
    got = [r for r in received if r["kind"] == "azure-token" and r["form"].get("client_assertion") == token]
    if check(p + "the fake authority received the file's content as client_assertion", got):
        r = got[-1]
        f = r["form"]
        check(p + "client_assertion_type is jwt-bearer",
              f.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer", f)
        check(p + "client_id == AZURE_CLIENT_ID, grant_type client_credentials, scope as asked",
              f.get("client_id") == os.environ["AZURE_CLIENT_ID"] and f.get("grant_type") == "client_credentials"
              and f.get("scope") == scope, f)
        check(p + "token endpoint is /{AZURE_TENANT_ID}/oauth2/v2.0/token",
              r["path"] == f"/{os.environ['AZURE_TENANT_ID']}/oauth2/v2.0/token", r["path"])
        check(p + "the token returned is the authority's answer", at.token == r["answer"])


# ------------------------------------------------------------------------------ fakes
def make_ca_and_leaf(directory):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mayfly interop fake CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    ca_file, chain_file, key_file = (os.path.join(directory, n) for n in ("ca.pem", "server-chain.pem", "server-key.pem"))
    with open(ca_file, "wb") as f:
        f.write(ca.public_bytes(pem))
    with open(chain_file, "wb") as f:
        f.write(leaf.public_bytes(pem) + ca.public_bytes(pem))
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return ca_file, chain_file, key_file


class Fakes:
    """moto STS, fake Google STS + IAM credentials, fake Entra ID authority (HTTPS)."""

    def __init__(self, directory, moto=True):
        import logging
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        self.dir = directory
        self.received = []
        self.lock = threading.Lock()
        self.servers = []
        self.moto = None
        if moto:
            from moto.server import ThreadedMotoServer
            port = free_port()
            self.moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            self.moto.start()
            self.aws_url = f"http://127.0.0.1:{port}"
        self.ca_file, chain, key = make_ca_and_leaf(directory)
        g = self._serve(self._google_handler(), None)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(chain, key)
        a = self._serve(self._azure_handler(), ctx)
        self.google_url = f"http://127.0.0.1:{g}"
        self.azure_url = f"https://127.0.0.1:{a}"
        with open(self.ca_file) as f:
            self.ca_pem = f.read()

    def config(self):
        return {"aws_endpoint_url_sts": getattr(self, "aws_url", None),
                "google_token_url": self.google_url + "/v1/token",
                "google_impersonation_url_prefix": self.google_url + "/v1/projects/-/serviceAccounts/",
                "azure_authority_host": self.azure_url + "/",
                "ca_file": self.ca_file, "pid": os.getpid()}

    def _serve(self, handler, tls):
        srv = _Recorder(("127.0.0.1", 0), handler)
        if tls:
            srv.socket = tls.wrap_socket(srv.socket, server_side=True)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        self.servers.append(srv)
        return srv.server_address[1]

    def stop(self):
        for s in self.servers:
            s.shutdown()
        if self.moto:
            self.moto.stop()

    def _record(self, entry):
        with self.lock:
            self.received.append(entry)
            del self.received[:-200]

    def _base_handler(self):
        fakes = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def reply(self, status, body, ctype="application/json"):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def body(self):
                return self.rfile.read(int(self.headers.get("content-length") or 0)).decode()

            def do_GET(self):  # noqa: N802
                if self.path == "/_fake/received":
                    with fakes.lock:
                        return self.reply(200, list(fakes.received))
                if self.path == "/_fake/ca.pem":
                    return self.reply(200, fakes.ca_pem, "application/x-pem-file")
                return self.get_more()

            def get_more(self):
                self.reply(404, {"error": "not_found", "path": self.path})

        return H

    def _google_handler(self):
        fakes, base = self, self._base_handler()

        class G(base):
            def do_POST(self):  # noqa: N802
                raw = self.body()
                if self.path == "/v1/token":
                    # https://cloud.google.com/iam/docs/reference/sts/rest/v1/TopLevel/token
                    form = dict(urllib.parse.parse_qsl(raw))
                    wrong = [k for k, v in (
                        ("grant_type", "urn:ietf:params:oauth:grant-type:token-exchange"),
                        ("requested_token_type", "urn:ietf:params:oauth:token-type:access_token"),
                        ("subject_token_type", "urn:ietf:params:oauth:token-type:jwt")) if form.get(k) != v]
                    if not form.get("subject_token") or not form.get("audience", "").startswith("//iam.googleapis.com/"):
                        wrong.append("subject_token/audience")
                    answer = "fake-google-sts-" + uuid.uuid4().hex
                    fakes._record({"kind": "google-sts", "path": self.path, "form": form,
                                   "answer": None if wrong else answer})
                    if wrong:
                        return self.reply(400, {"error": "invalid_request", "error_description": f"bad {wrong}"})
                    return self.reply(200, {"access_token": answer, "expires_in": 3600, "token_type": "Bearer",
                                            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token"})
                m = re.fullmatch(r"/v1/projects/-/serviceAccounts/([^/:]+):generateAccessToken", self.path)
                if m:
                    # https://cloud.google.com/iam/docs/reference/credentials/rest/v1/projects.serviceAccounts/generateAccessToken
                    answer = "fake-google-sa-" + uuid.uuid4().hex
                    try:
                        body = json.loads(raw)
                    except ValueError:
                        body = None
                    auth = self.headers.get("authorization", "")
                    fakes._record({"kind": "google-iam", "path": self.path, "json": body,
                                   "authorization": auth, "answer": answer})
                    if not auth.startswith("Bearer fake-google-sts-") or not isinstance(body, dict) \
                            or not body.get("scope"):
                        return self.reply(400, {"error": {"code": 400, "message": "bad request"}})
                    exp = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1))
                    return self.reply(200, {"accessToken": answer, "expireTime": exp.strftime("%Y-%m-%dT%H:%M:%SZ")})
                return self.reply(404, {"error": "not_found"})

        return G

    def _azure_handler(self):
        fakes, base = self, self._base_handler()

        class A(base):
            def get_more(self):
                origin = f"https://{self.headers.get('host')}"
                m = re.fullmatch(r"/([^/]+)/v2\.0/\.well-known/openid-configuration", self.path)
                if m:
                    t = m.group(1)
                    return self.reply(200, {
                        "issuer": f"{origin}/{t}/v2.0",
                        "authorization_endpoint": f"{origin}/{t}/oauth2/v2.0/authorize",
                        "token_endpoint": f"{origin}/{t}/oauth2/v2.0/token",
                        "jwks_uri": f"{origin}/{t}/discovery/v2.0/keys",
                        "response_types_supported": ["code", "id_token"],
                        "subject_types_supported": ["pairwise"],
                        "id_token_signing_alg_values_supported": ["RS256"]})
                if self.path.startswith("/common/discovery/instance"):
                    host = self.headers.get("host")
                    return self.reply(200, {"tenant_discovery_endpoint":
                                            f"{origin}/common/v2.0/.well-known/openid-configuration",
                                            "api-version": "1.1",
                                            "metadata": [{"preferred_network": host, "preferred_cache": host,
                                                          "aliases": [host]}]})
                return self.reply(404, {"error": "not_found"})

            def do_POST(self):  # noqa: N802
                m = re.fullmatch(r"/([^/]+)/oauth2/v2\.0/token", self.path)
                if not m:
                    return self.reply(404, {"error": "not_found"})
                form = dict(urllib.parse.parse_qsl(self.body()))
                answer = "fake-azure-" + uuid.uuid4().hex
                ok = (form.get("grant_type") == "client_credentials" and form.get("client_id")
                      and form.get("client_assertion")
                      and form.get("client_assertion_type") == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
                fakes._record({"kind": "azure-token", "path": self.path, "form": form, "answer": answer if ok else None})
                if not ok:
                    return self.reply(400, {"error": "invalid_request", "error_description": "AADSTS900144: fake"})
                return self.reply(200, {"token_type": "Bearer", "expires_in": 3599, "ext_expires_in": 3599,
                                        "access_token": answer})

        return A


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_fakes(directory):
    os.makedirs(directory, exist_ok=True)
    fakes = Fakes(directory)
    tmp = os.path.join(directory, "fakes.json.tmp")
    with open(tmp, "w") as f:
        json.dump(fakes.config(), f, indent=2)
    os.replace(tmp, os.path.join(directory, "fakes.json"))
    print(json.dumps(fakes.config()), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    fakes.stop()
    return 0


# -------------------------------------------------------------------------- self-test
ISSUER = "https://mayfly.example.test"
SUB = "spiffe://example.org/ns/ci/sa/deployer"
GCP_AUD = "//iam.googleapis.com/projects/123456789012/locations/global/workloadIdentityPools/mayfly-pool/providers/mayfly"


class StandIn:
    """Mayfly's stand-in: keys, tokens, JWKS and discovery on loopback."""

    def __init__(self):
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        self.keys = {"rsa-1": ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
                     "ec-1": ("ES256", ec.generate_private_key(ec.SECP256R1()))}
        self.reset()
        stand_in = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):  # noqa: N802
                doc = {"/.well-known/jwks.json": stand_in.jwks,
                       "/.well-known/openid-configuration": stand_in.disco}.get(self.path)
                data = json.dumps(doc).encode()
                self.send_response(200 if doc is not None else 404)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.srv = _Recorder(("127.0.0.1", 0), H)
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.srv.server_address[1]}"

    def reset(self):
        keys = []
        for kid, (alg, k) in self.keys.items():
            cls = jwt.algorithms.RSAAlgorithm if alg.startswith("RS") else jwt.algorithms.ECAlgorithm
            j = json.loads(cls.to_jwk(k.public_key()))
            j = {f: v for f, v in j.items() if f in GCP_JWK_FIELDS}
            j.update(kid=kid, alg=alg, use="sig")
            keys.append(j)
        self.jwks = {"keys": keys}
        self.disco = {"issuer": ISSUER, "jwks_uri": ISSUER + "/.well-known/jwks.json",
                      "response_types_supported": ["id_token"], "subject_types_supported": ["public"],
                      "id_token_signing_alg_values_supported": ["ES256", "RS256"]}

    def mint(self, kid, aud, iss=ISSUER, sub=SUB, iat_offset=0, lifetime=900, header_kid=None):
        alg, key = self.keys[kid]
        now = int(time.time()) + iat_offset
        claims = {"iss": iss, "sub": sub, "aud": aud, "iat": now, "nbf": now, "exp": now + lifetime,
                  "jti": str(uuid.uuid4())}
        return jwt.encode(claims, key, algorithm=alg, headers={"kid": header_kid or kid, "typ": "JWT"})


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def exec_like_env(stand_in, fakes, workdir, impersonate=True, aws=None, gcp=None, azure=None, env_extra=None):
    """Writes the files and the environment as `mayfly exec --cloud ...` would."""
    aws, gcp, azure = aws or {}, gcp or {}, azure or {}
    d = os.path.join(workdir, "exec")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d, mode=0o700)
    tokens = {
        "aws": aws.get("token") or stand_in.mint(aws.get("kid", "ec-1"), "sts.amazonaws.com", **aws.get("mint", {})),
        "gcp": gcp.get("token") or stand_in.mint(gcp.get("kid", "rsa-1"), GCP_AUD, **gcp.get("mint", {})),
        "azure": azure.get("token") or stand_in.mint(azure.get("kid", "rsa-1"), AZURE_AUDIENCE,
                                                     **azure.get("mint", {})),
    }
    for k, t in tokens.items():
        write_private(os.path.join(d, f"{k}.jwt"), t + ("\n" if k in (gcp.get("newline_in"),) else ""))
    gac = {"type": "external_account", "audience": GCP_AUD,
           "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
           "token_url": fakes.config()["google_token_url"],
           "credential_source": {"file": os.path.join(d, "gcp.jwt"), "format": {"type": "text"}}}
    if impersonate:
        gac["service_account_impersonation_url"] = (fakes.config()["google_impersonation_url_prefix"]
                                                    + "deployer@my-project.iam.gserviceaccount.com:generateAccessToken")
    write_private(os.path.join(d, "google.json"), json.dumps(gac))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "AZURE_", "GOOGLE_", "MAYFLY_")) and k not in ("REQUESTS_CA_BUNDLE",)}
    env.update({
        "MAYFLY_URL": stand_in.url, "MAYFLY_EXPECT_ISSUER": ISSUER, "MAYFLY_EXPECT_SUB": SUB,
        "AWS_WEB_IDENTITY_TOKEN_FILE": os.path.join(d, "aws.jwt"),
        "AWS_ROLE_ARN": "arn:aws:iam::123456789012:role/mayfly-deployer",
        "AWS_ROLE_SESSION_NAME": aws.get("session", "task-0193f1d2e6a47c9b"),
        "AWS_ENDPOINT_URL_STS": fakes.config()["aws_endpoint_url_sts"],
        "AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-west-1",
        "GOOGLE_APPLICATION_CREDENTIALS": os.path.join(d, "google.json"),
        "AZURE_FEDERATED_TOKEN_FILE": os.path.join(d, "azure.jwt"),
        "AZURE_CLIENT_ID": "00000000-0000-0000-0000-00000000c11e",
        "AZURE_TENANT_ID": "00000000-0000-0000-0000-0000000ten7",
        "AZURE_AUTHORITY_HOST": fakes.config()["azure_authority_host"],
        # Keep the SDKs away from the user's own files.
        "AWS_CONFIG_FILE": os.path.join(d, "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": os.path.join(d, "no-aws-credentials"),
        "CLOUDSDK_CONFIG": os.path.join(d, "no-gcloud"),
    })
    env.update(env_extra or {})
    return {k: v for k, v in env.items() if v is not None}


def run_child(env, clouds):
    r = subprocess.run([sys.executable, os.path.abspath(__file__), *clouds], env=env, capture_output=True,
                       text=True, timeout=120)
    return r.returncode, r.stdout + r.stderr


def self_test():
    workdir = tempfile.mkdtemp(prefix="mayfly-cloud-selftest-")
    stand_in = StandIn()
    fakes = Fakes(workdir)
    print(f"stand-in Mayfly at {stand_in.url} (iss {ISSUER}); fakes: {json.dumps(fakes.config())}")
    failures = 0
    try:
        for label, imp in (("with service-account impersonation", True), ("without impersonation", False)):
            rc, out = run_child(exec_like_env(stand_in, fakes, workdir, impersonate=imp), ["aws", "gcp", "azure"])
            print("\n".join("    | " + line for line in out.splitlines()))
            if not check(f"self-test: the happy path passes ({label})", rc == 0, f"exit {rc}"):
                failures += 1

        # Each broken case must fail, with the named line among the FAILs.
        cases = [
            ("Azure token signed ES256", "azure", dict(azure={"kid": "ec-1"}), "FAIL azure: alg ES256"),
            ("Google token with AWS's audience", "gcp", dict(gcp={"token": stand_in.mint("rsa-1", "sts.amazonaws.com")}),
             "FAIL gcp: aud is the provider's full resource name"),
            ("AWS token with the wrong aud", "aws", dict(aws={"token": stand_in.mint("ec-1", "api://AzureADTokenExchange")}),
             "FAIL aws: aud == sts.amazonaws.com"),
            ("iss with a trailing slash", "azure", dict(azure={"mint": {"iss": ISSUER + "/"}}),
             "FAIL azure: iss == MAYFLY_EXPECT_ISSUER"),
            ("Azure lifetime of 2 days", "azure", dict(azure={"mint": {"lifetime": 2 * 86400}}),
             "FAIL azure: lifetime exp - iat at most 1 day"),
            ("Google iat 25 h old", "gcp", dict(gcp={"mint": {"iat_offset": -25 * 3600, "lifetime": 26 * 3600}}),
             "FAIL gcp: iat at most 24 h old"),
            ("Google sub over 127 bytes", "gcp", dict(gcp={"mint": {"sub": "spiffe://example.org/" + "x" * 120}}),
             "FAIL gcp: sub at most 127 bytes"),
            ("kid not in the JWKS", "aws", dict(aws={"mint": {"header_kid": "gone"}}), "FAIL aws: kid present and in the JWKS"),
            ("token file ends with a newline", "gcp", dict(gcp={"newline_in": "gcp"}),
             "FAIL gcp: token file holds exactly the JWT"),
            ("AWS session name with ':'", "aws", dict(aws={"session": "task:01/x"}),
             "FAIL aws: AWS_ROLE_SESSION_NAME matches"),
            ("AWS_REGION without AWS_DEFAULT_REGION", "aws",
             dict(env_extra={"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": None}),
             "FAIL aws: AWS_DEFAULT_REGION set (boto3 ignores AWS_REGION)"),
            ("static AWS keys in the environment", "aws",
             dict(env_extra={"AWS_ACCESS_KEY_ID": "AKIAFAKE", "AWS_SECRET_ACCESS_KEY": "fake"}),
             "FAIL aws: no static AWS keys"),
            ("http:// authority for Azure", "azure", dict(env_extra={"AZURE_AUTHORITY_HOST": "http://127.0.0.1:1/"}),
             "FAIL azure: AZURE_AUTHORITY_HOST is https"),
            ("Google token_url on the internet", "gcp", dict(), "FAIL gcp: token_url is loopback"),
            ("a JWK without use", "azure", dict(jwks="no-use"), "FAIL azure: every JWK carries kid, alg and use=sig"),
            ("discovery issuer with a trailing slash", "aws", dict(disco_issuer=ISSUER + "/"),
             "FAIL aws: discovery issuer == MAYFLY_EXPECT_ISSUER"),
        ]
        for name, cloud, kw, expect in cases:
            jwks_mode, disco_issuer = kw.pop("jwks", None), kw.pop("disco_issuer", None)
            env = exec_like_env(stand_in, fakes, workdir, **kw)
            if name == "Google token_url on the internet":
                with open(env["GOOGLE_APPLICATION_CREDENTIALS"]) as f:
                    gac = json.load(f)
                gac["token_url"] = "https://sts.googleapis.com/v1/token"
                write_private(env["GOOGLE_APPLICATION_CREDENTIALS"], json.dumps(gac))
            if jwks_mode == "no-use":
                for k in stand_in.jwks["keys"]:
                    k.pop("use")
            if disco_issuer:
                stand_in.disco["issuer"] = disco_issuer
            rc, out = run_child(env, [cloud])
            stand_in.reset()
            fails = [line for line in out.splitlines() if line.startswith("FAIL")]
            if not check(f"self-test: broken ({name}) fails", rc != 0 and any(l.startswith(expect) for l in fails),
                         f"exit {rc}; FAIL lines: {fails}"):
                failures += 1
            else:
                print("    | " + "\n    | ".join(fails))
    finally:
        fakes.stop()
        stand_in.srv.shutdown()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"self-test: {len(RESULTS) - failures} passed, {failures} failed")
    return 1 if failures else 0


def main(argv):
    if argv[:1] == ["--self-test"]:
        return self_test()
    if argv[:1] == ["--serve-fakes"] and len(argv) == 2:
        return serve_fakes(argv[1])
    clouds = argv or ["aws", "gcp", "azure"]
    unknown = [c for c in clouds if c not in ("aws", "gcp", "azure")]
    if unknown:
        print(__doc__)
        print(f"unknown argument(s): {unknown}", file=sys.stderr)
        return 2
    install_loopback_guard()
    for c in clouds:
        try:
            {"aws": aws_check, "gcp": gcp_check, "azure": azure_check}[c]()
        except Exception as e:  # noqa: BLE001
            check(f"{c}: no unexpected error", False, repr(e))
    failed = sum(1 for _, ok in RESULTS if not ok)
    print(f"{len(RESULTS) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
