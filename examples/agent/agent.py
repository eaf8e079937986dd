#!/usr/bin/env python3
"""An agent that holds credentials for one workflow only.

The agent starts a Mayfly task for its workflow ("summarise alice's open tickets"),
exchanges the task token for a short-lived access token for the tickets service,
calls the service, and ends the task when the workflow is done. The same access
token is refused afterwards: the agent's access died with its workflow.

The tickets service is a small resource server in this same file: it accepts a
request only if Mayfly's introspection (RFC 7662) says the token is active, for its
audience, with the scope it needs.

Standard library only. Run it against a dev server (`mayfly server --dev`):

    MAYFLY_URL=http://127.0.0.1:8270 \
    MAYFLY_JOIN_TOKEN=<a join token> \
    MAYFLY_VERIFIER_TOKEN=<the admin token, or a token for urn:mayfly:introspect:<the tool's audience>> \
    python3 examples/agent/agent.py

In a real deployment the agent's evidence would be its platform identity token
(set MAYFLY_SUBJECT_TOKEN_FILE to, e.g., a Kubernetes projected token).
"""

import json
import os
import sys
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAYFLY = os.environ.get("MAYFLY_URL", "http://127.0.0.1:8270").rstrip("/")
TICKETS_AUDIENCE = "https://tickets.example"
TASK_TOKEN_TYPE = "urn:mayfly:params:oauth:token-type:task"


def http(method, url, *, json_body=None, form=None, bearer=None):
    """One HTTP call; returns (status, parsed JSON body or None)."""
    headers = {}
    data = None
    if json_body is not None:
        data = json.dumps(json_body).encode()
        headers["Content-Type"] = "application/json"
    if form is not None:
        data = urllib.parse.urlencode(form).encode()
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    if bearer:
        headers["Authorization"] = f"Bearer {bearer}"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
            return resp.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:
            return e.code, None


# --- The protected resource -------------------------------------------------------


class TicketsService(BaseHTTPRequestHandler):
    """GET /tickets needs an active Mayfly token for the tickets audience with tickets:read."""

    verifier_token = os.environ.get("MAYFLY_VERIFIER_TOKEN", "")

    def do_GET(self):
        auth = self.headers.get("Authorization", "")
        token = auth[len("Bearer "):] if auth.startswith("Bearer ") else ""
        status, info = http("POST", f"{MAYFLY}/v1/introspect", form={"token": token}, bearer=self.verifier_token)
        ok = (
            status == 200
            and info.get("active")
            and info.get("aud") == TICKETS_AUDIENCE
            and "tickets:read" in (info.get("scope") or "").split()
        )
        if not ok:
            self.reply(401, {"error": "invalid_token"})
            return
        who = info["sub"]
        actor = (info.get("act") or {}).get("sub")
        self.reply(200, {"tickets": ["#101 printer on fire", "#102 VPN drops"], "for": who, "via": actor})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


# --- The agent ----------------------------------------------------------------------


def evidence():
    """The agent's own identity evidence: a platform token file, or a join token."""
    path = os.environ.get("MAYFLY_SUBJECT_TOKEN_FILE")
    if path:
        with open(path) as f:
            return f.read().strip(), "urn:ietf:params:oauth:token-type:jwt"
    token = os.environ.get("MAYFLY_JOIN_TOKEN")
    if not token:
        sys.exit("set MAYFLY_SUBJECT_TOKEN_FILE or MAYFLY_JOIN_TOKEN")
    return token, "urn:mayfly:params:oauth:token-type:join-token"


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), TicketsService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    tickets_url = f"http://127.0.0.1:{server.server_address[1]}/tickets"

    # 1. The workflow starts: take a task for it, acting for the user who asked.
    token, token_type = evidence()
    status, started = http("POST", f"{MAYFLY}/v1/tasks", json_body={
        "subject_token_type": token_type,
        "subject_token": token,
        "purpose": "summarise alice's open tickets",
        "scope": "tickets:read",
        "audiences": [TICKETS_AUDIENCE],
        "ttl_seconds": 600,
        "on_behalf_of": "user:alice",
    })
    if status != 201:
        sys.exit(f"starting the task failed: {status} {started}")
    task = started["task"]
    task_token = started["task_token"]
    print(f"task {task['id']} started ({task['spiffe_id']}), state {task['state']}")

    # 2. Get a credential for the tickets service, under the task.
    status, issued = http("POST", f"{MAYFLY}/v1/token", form={
        "grant_type": "urn:ietf:params:oauth:grant-type:token-exchange",
        "subject_token": task_token,
        "subject_token_type": TASK_TOKEN_TYPE,
        "audience": TICKETS_AUDIENCE,
    })
    if status != 200:
        sys.exit(f"token exchange failed: {status} {issued}")
    access_token = issued["access_token"]
    print(f"got a token for {TICKETS_AUDIENCE}, scope {issued.get('scope')}, {issued['expires_in']} s")

    # 3. Do the work.
    status, body = http("GET", tickets_url, bearer=access_token)
    print(f"during the workflow: tickets service answered {status}: {body}")
    if status != 200:
        sys.exit("the tickets service refused a live task's token")

    # 4. The workflow is done: end the task. Everything issued under it dies now.
    status, ended = http("DELETE", f"{MAYFLY}/v1/tasks/{task['id']}", bearer=task_token,
                         json_body={"reason": "workflow finished"})
    if status != 200:
        sys.exit(f"ending the task failed: {status} {ended}")
    print(f"task {task['id']} ended")

    # 5. The same token no longer opens anything.
    status, body = http("GET", tickets_url, bearer=access_token)
    print(f"after the workflow: tickets service answered {status}: {body}")
    server.shutdown()
    if status != 401:
        sys.exit("the token still worked after the workflow ended")
    print("access ended with the workflow")


if __name__ == "__main__":
    main()
