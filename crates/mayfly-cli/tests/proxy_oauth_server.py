"""An OAuth 2.0 upstream for the proxy tests, built on Authlib (a maintained OAuth server
library) with Flask: a client-credentials token endpoint (RFC 6749 §4.4, client secret by
HTTP basic authentication) and a resource that accepts only its own bearer tokens.

GET /api/me answers who the token was issued to; GET /stats how many tokens were issued.
Usage: proxy_oauth_server.py PORT_FILE CLIENT_ID CLIENT_SECRET
"""
import os
import sys
import time

from authlib.integrations.flask_oauth2 import AuthorizationServer, ResourceProtector, current_token
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6750 import BearerTokenValidator
from flask import Flask, jsonify
from werkzeug.serving import make_server

port_file, client_id, client_secret = sys.argv[1:4]
TOKENS = {}


class Client(ClientMixin):
    def get_client_id(self):
        return client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return " ".join(s for s in (scope or "").split() if s in ("payments:read",))

    def check_redirect_uri(self, redirect_uri):
        return False

    def check_client_secret(self, secret):
        return secret == client_secret

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "client_secret_basic"

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type == "client_credentials"


class Token(TokenMixin):
    def __init__(self, data):
        self.data = data
        self.issued_at = time.time()

    def check_client(self, client):
        return client.get_client_id() == client_id

    def get_scope(self):
        return self.data.get("scope", "")

    def get_expires_in(self):
        return self.data["expires_in"]

    def is_expired(self):
        return time.time() > self.issued_at + self.data["expires_in"]

    def is_revoked(self):
        return False


class Validator(BearerTokenValidator):
    def authenticate_token(self, token_string):
        return TOKENS.get(token_string)


app = Flask(__name__)
app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {"client_credentials": 600}
server = AuthorizationServer(
    app,
    query_client=lambda cid: Client() if cid == client_id else None,
    save_token=lambda token, request: TOKENS.__setitem__(token["access_token"], Token(token)),
)
server.register_grant(grants.ClientCredentialsGrant)
require_oauth = ResourceProtector()
require_oauth.register_token_validator(Validator())


@app.post("/oauth/token")
def issue_token():
    return server.create_token_response()


@app.get("/api/me")
@require_oauth()
def me():
    return jsonify({"client_id": client_id, "scope": current_token.get_scope()})


@app.get("/stats")
def stats():
    return jsonify({"tokens_issued": len(TOKENS)})


httpd = make_server("127.0.0.1", 0, app, threaded=True)
with open(port_file + ".tmp", "w") as f:
    f.write(str(httpd.server_port))
os.rename(port_file + ".tmp", port_file)
httpd.serve_forever()
