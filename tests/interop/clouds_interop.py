"""Interop: the clouds' own SDKs use what `mayfly exec --cloud` gives a command (issue 20).

Starts the loopback stand-ins of tests/interop/cloud_sdks.py (moto's STS, a fake Google
STS and IAM credentials, a fake Entra ID authority), a Mayfly server whose cloud
profiles point at them, and then:
  1. `mayfly exec --cloud it-aws --cloud it-gcp --cloud it-azure -- python3 cloud_sdks.py
     aws gcp azure`: boto3 and the AWS CLI, google-auth and azure-identity read the files
     exec wrote and run their own token flows; each token is checked against the cloud's
     documented rules (exit status 0 required);
  2. `POST /v1/credentials/aws/it-aws`: Mayfly itself calls STS (moto) and hands out the
     temporary credentials, which boto3 then uses against moto.
Nothing reaches the internet. Prints 'N passed, N failed'; exits non-zero on a failure.

Usage: python3 tests/interop/clouds_interop.py PATH/TO/mayfly
"""
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

from checks import check, finish, free_port, server_files, wait

HERE = os.path.dirname(os.path.abspath(__file__))
SDKS = os.path.join(HERE, "cloud_sdks.py")
ISSUER = "https://mayfly.test"
TRUST_DOMAIN = "interop.test"
SUBJECT = f"spiffe://{TRUST_DOMAIN}/ci/deployer"

POLICIES = """
@id("ci-may-start-tasks")
permit (principal, action == Mayfly::Action::"start_task", resource)
when { principal.attestor == "join_token" };

@id("tasks-may-use-clouds")
permit (principal is Mayfly::Task, action == Mayfly::Action::"cloud", resource);

@id("ci-may-get-aws-credentials")
permit (principal is Mayfly::Workload, action == Mayfly::Action::"cloud", resource == Mayfly::Cloud::"it-aws")
when { context.exchange };
"""




def request(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")



def config(tmp, port, fakes):
    kek, policies = server_files(tmp, POLICIES)
    iam_base = fakes["google_impersonation_url_prefix"].split("/v1/")[0]
    text = f"""
trust_domain = "{TRUST_DOMAIN}"
data_dir = "{tmp}/data"
public_url = "{ISSUER}"

[listen]
addr = "127.0.0.1:{port}"

[keys]
kek_file = "{kek}"

[[keys.profiles]]
name = "clouds"
algorithm = "RS256"

[policy]
dir = "{policies}"

[[clouds]]
name = "it-aws"
kind = "aws"
signing_profile = "clouds"
role_arn = "arn:aws:iam::123456789012:role/deployer"
region = "eu-west-1"
sts_endpoint = "{fakes['aws_endpoint_url_sts']}"

[[clouds]]
name = "it-gcp"
kind = "gcp"
signing_profile = "clouds"
project_number = "123456789012"
pool = "mayfly-pool"
provider = "mayfly"
service_account = "deployer@acme-prod.iam.gserviceaccount.com"
token_url = "{fakes['google_token_url']}"
iam_credentials_url = "{iam_base}"

[[clouds]]
name = "it-azure"
kind = "azure"
signing_profile = "clouds"
tenant_id = "72f988bf-86f1-41af-91ab-2d7cd011db47"
client_id = "00000000-1111-2222-3333-444444444444"
authority_host = "{fakes['azure_authority_host']}"
"""
    path = os.path.join(tmp, "mayfly.toml")
    with open(path, "w") as f:
        f.write(text)
    return path


def main():
    binary = os.path.abspath(sys.argv[1])
    procs = []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fakes_dir = os.path.join(tmp, "fakes")
            procs.append(subprocess.Popen([sys.executable, SDKS, "--serve-fakes", fakes_dir]))
            check("the loopback stand-ins start", wait(lambda: os.path.exists(os.path.join(fakes_dir, "fakes.json")), 60, 0.1))
            with open(os.path.join(fakes_dir, "fakes.json")) as f:
                fakes = json.load(f)

            port = free_port()
            cfg = config(tmp, port, fakes)
            server = subprocess.Popen([binary, "server", "--config", cfg], stderr=subprocess.DEVNULL,
                                      stdout=subprocess.DEVNULL, env={**os.environ, "MAYFLY_LOG": "warn"})
            procs.append(server)
            url = f"http://127.0.0.1:{port}"
            ready = False
            for _ in range(300):
                try:
                    ready = request("GET", url + "/readyz")[0] == 200
                except OSError:
                    pass
                if ready:
                    break
                time.sleep(0.1)
            check("mayfly server starts with three cloud profiles", ready)
            admin = open(os.path.join(tmp, "data", "admin-token")).read().strip()

            status, created = request("POST", url + "/v1/join-tokens", {"spiffe_path": "ci/deployer"}, admin)
            check("a join token for the CI job", status == 201, created)
            env = {
                **os.environ,
                "MAYFLY_URL": url,
                "MAYFLY_JOIN_TOKEN": created["token"],
                "MAYFLY_EXPECT_ISSUER": ISSUER,
                "MAYFLY_EXPECT_SUB": SUBJECT,
                "AWS_ENDPOINT_URL_STS": fakes["aws_endpoint_url_sts"],
                "REQUESTS_CA_BUNDLE": fakes["ca_file"],
            }
            for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
                env.pop(k, None)
            # Only what this run leaves counts: an earlier exec killed with SIGKILL may have left one.
            before = set(os.listdir(os.environ.get("XDG_RUNTIME_DIR", tempfile.gettempdir())))
            run = subprocess.run(
                [binary, "exec", "--cloud", "it-aws", "--cloud", "it-gcp", "--cloud", "it-azure", "--",
                 sys.executable, SDKS, "aws", "gcp", "azure"],
                env=env, capture_output=True, text=True, timeout=600,
            )
            sys.stdout.write("".join("    | " + line + "\n" for line in run.stdout.splitlines()))
            check("boto3, the AWS CLI, google-auth and azure-identity use what mayfly exec wrote",
                  run.returncode == 0, run.stderr[-2000:])
            leftovers = [p for p in os.listdir(os.environ.get("XDG_RUNTIME_DIR", tempfile.gettempdir()))
                         if p.startswith("mayfly-exec-") and p not in before]
            check("the credentials directory is removed at exit", not leftovers, leftovers)

            # Mayfly as the exchanger: STS (moto) is called by the server.
            status, created = request("POST", url + "/v1/join-tokens", {"spiffe_path": "ci/deployer"}, admin)
            status, creds = request("POST", url + "/v1/credentials/aws/it-aws", {
                "subject_token_type": "urn:mayfly:params:oauth:token-type:join-token",
                "subject_token": created["token"],
            })
            check("POST /v1/credentials/aws/it-aws returns STS's credentials", status == 201, creds)
            if status == 201:
                import boto3
                sts = boto3.client(
                    "sts", region_name="eu-west-1", endpoint_url=fakes["aws_endpoint_url_sts"],
                    aws_access_key_id=creds["access_key_id"], aws_secret_access_key=creds["secret_access_key"],
                    aws_session_token=creds["session_token"],
                )
                arn = sts.get_caller_identity()["Arn"]
                check("boto3 uses them", arn.startswith("arn:aws:sts::123456789012:assumed-role/deployer/"), arn)
            status, audit = request("GET", url + "/v1/audit?kind=cloud.&limit=100", token=admin)
            text = json.dumps(audit)
            check("the exchange is audited without the secrets",
                  status == 200 and "cloud.aws.credentials_issued" in text
                  and creds.get("secret_access_key", "-") not in text and creds.get("session_token", "-") not in text)
        finally:
            for p in reversed(procs):
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    finish()


if __name__ == "__main__":
    main()
