"""Interop: a standard OAuth/JOSE stack that is not Mayfly's code.

Starts `mayfly server --dev`, performs the RFC 8693 exchange with plain HTTP
(urllib), verifies the token with PyJWT through the published JWKS
(PyJWKClient) and the discovery document, checks RFC 7662 introspection and
revocation, and binds a token with a DPoP proof made by PyJWT (RFC 9449). Prints 'N passed, N failed' and exits non-zero on any failure.

Usage: python3 tests/interop/pyjwt_interop.py PATH/TO/mayfly
"""
import base64
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from checks import check, finish

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
JOIN_TYPE = "urn:mayfly:params:oauth:token-type:join-token"



def post(url, data, headers=None, json_body=False):
    body = json.dumps(data).encode() if json_body else urllib.parse.urlencode(data).encode()
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    req.add_header("content-type", "application/json" if json_body else "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def dpop_checks(url, auth, jwks):
    """RFC 9449 with a DPoP proof made by PyJWT and `cryptography`, not by Mayfly."""
    status, _, created = post(url + "/v1/join-tokens", {}, auth, json_body=True)
    check("a second join token", status == 201, created)
    key = ec.generate_private_key(ec.SECP256R1())
    full = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(key.public_key()))
    public_jwk = {k: full[k] for k in ("kty", "crv", "x", "y")}
    canonical = json.dumps(public_jwk, separators=(",", ":"), sort_keys=True).encode()
    thumbprint = b64url(hashlib.sha256(canonical).digest())
    proof = jwt.encode(
        {"jti": str(uuid.uuid4()), "htm": "POST", "htu": url + "/v1/token", "iat": int(time.time())},
        key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": public_jwk},
    )
    form = {"grant_type": TOKEN_EXCHANGE, "subject_token": created["token"], "subject_token_type": JOIN_TYPE,
            "audience": "https://api.example"}
    status, _, tok = post(url + "/v1/token", form, {"DPoP": proof})
    check("a PyJWT-made DPoP proof is accepted", status == 200 and tok.get("token_type") == "DPoP", tok)
    if status == 200:
        signing = jwks.get_signing_key_from_jwt(tok["access_token"])
        claims = jwt.decode(tok["access_token"], signing.key, algorithms=["EdDSA", "ES256"],
                            audience="https://api.example", issuer=url)
        check("cnf.jkt is the RFC 7638 thumbprint of the proof key",
              claims.get("cnf", {}).get("jkt") == thumbprint, claims.get("cnf"))
    # The replay carries fresh evidence (a join token is single use): what refuses it is
    # the proof's spent jti, which Mayfly spends only for requests whose evidence attested.
    status, _, third = post(url + "/v1/join-tokens", {}, auth, json_body=True)
    check("a third join token", status == 201, third)
    form = dict(form, subject_token=third["token"])
    status, _, problem = post(url + "/v1/token", form, {"DPoP": proof})
    check("a replayed proof is refused with invalid_dpop_proof",
          status == 400 and problem.get("error") == "invalid_dpop_proof", problem)


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as data:
        proc = subprocess.Popen(
            [binary, "server", "--dev", "--listen", "127.0.0.1:0", "--data-dir", data],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            env={**os.environ, "MAYFLY_LOG": "warn"},
        )
        try:
            banner = {}
            deadline = time.time() + 60
            while len(banner) < 3 and time.time() < deadline:
                line = proc.stdout.readline().strip()
                for key in ("URL:", "Admin token:", "Join token:"):
                    if line.startswith(key):
                        banner[key] = line[len(key):].strip()
            url, admin, join = banner["URL:"], banner["Admin token:"], banner["Join token:"]

            meta = json.load(urllib.request.urlopen(url + "/.well-known/openid-configuration", timeout=10))
            check("discovery names the issuer", meta["issuer"] == url)

            status, headers, tok = post(url + "/v1/token", {
                "grant_type": TOKEN_EXCHANGE, "subject_token": join, "subject_token_type": JOIN_TYPE,
                "audience": "https://api.example", "scope": "read",
            })
            check("RFC 8693 exchange answers 200", status == 200, tok)
            check("token response is not cacheable", headers.get("cache-control") == "no-store")
            check("issued_token_type is access_token",
                  tok.get("issued_token_type") == "urn:ietf:params:oauth:token-type:access_token")
            access = tok["access_token"]

            jwks = jwt.PyJWKClient(meta["jwks_uri"])
            key = jwks.get_signing_key_from_jwt(access)
            header = jwt.get_unverified_header(access)
            check("RFC 9068 typ at+jwt", header.get("typ") == "at+jwt", header)
            claims = jwt.decode(access, key.key, algorithms=["EdDSA", "ES256"], audience="https://api.example",
                                issuer=url, options={"require": ["exp", "iat", "sub", "aud", "iss", "jti"]})
            check("PyJWT verifies the token against the JWKS", claims["sub"].startswith("spiffe://"))
            check("client_id and scope claims", claims.get("client_id") == claims["sub"] and claims.get("scope") == "read")
            try:
                jwt.decode(access, key.key, algorithms=["EdDSA", "ES256"], audience="https://other.example", issuer=url)
                check("wrong audience is refused by PyJWT", False)
            except jwt.InvalidAudienceError:
                check("wrong audience is refused by PyJWT", True)

            auth = {"authorization": "Bearer " + admin}
            status, _, intro = post(url + "/v1/introspect", {"token": access}, auth)
            check("RFC 7662 active token", status == 200 and intro.get("active") is True and intro.get("sub") == claims["sub"], intro)
            status, _, rev = post(url + "/v1/revocations", {"jti": claims["jti"]}, auth, json_body=True)
            check("revocation by jti", status == 201, rev)
            status, _, intro = post(url + "/v1/introspect", {"token": access}, auth)
            check("revoked token is inactive", intro == {"active": False}, intro)
            dpop_checks(url, auth, jwks)
            status, headers, problem = post(url + "/v1/token", {"grant_type": TOKEN_EXCHANGE})
            check("errors are RFC 9457 problems with an OAuth error code",
                  status == 400 and headers.get("content-type") == "application/problem+json"
                  and problem.get("error") == "invalid_request", problem)
        except Exception as e:  # any unexpected failure is a failed check, not a crash
            check("interop run completes", False, repr(e))
        finally:
            proc.terminate()
            proc.wait(timeout=15)
    finish()


if __name__ == "__main__":
    main()
