//! `mayfly exec --cloud NAME`: the credential sources the clouds' own SDKs and CLIs read,
//! written into the command's private directory, renewed while it runs, removed at exit.
//!
//! - AWS: `AWS_WEB_IDENTITY_TOKEN_FILE`, `AWS_ROLE_ARN`, `AWS_ROLE_SESSION_NAME` (the task id),
//!   and `AWS_REGION`/`AWS_DEFAULT_REGION` (botocore reads only the latter) when configured.
//! - Google: `GOOGLE_APPLICATION_CREDENTIALS` (and gcloud's `CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE`)
//!   naming an `external_account` file whose subject token is read from a file.
//! - Azure: `AZURE_FEDERATED_TOKEN_FILE`, `AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_AUTHORITY_HOST`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use mayfly_proto::{CloudSetup, CloudTokenRequest, CloudTokenResponse, TOKEN_TYPE_TASK};

use super::secrets::write_secret;
use super::session::Session;
use crate::client::call;

/// The Mayfly-side audience a task must name to get tokens for a cloud profile.
pub(super) fn task_audience(profile: &str) -> String {
    format!("cloud:{profile}")
}

/// Checks `--cloud` names: distinct (the SDKs' variables hold one of each kind, checked
/// once the kinds are known).
pub(super) fn check_names(names: &[String]) -> anyhow::Result<()> {
    for (i, n) in names.iter().enumerate() {
        if n.is_empty() || !n.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
            bail!("--cloud {n:?}: a cloud profile's name is a-z, 0-9, - and _");
        }
        if names[..i].contains(n) {
            bail!("--cloud {n} is given twice");
        }
    }
    Ok(())
}

impl Session {
    /// A fresh token for a cloud profile, under the task.
    pub(super) async fn cloud_token(&self, profile: &str) -> anyhow::Result<CloudTokenResponse> {
        let url = self.remote.endpoint(&format!("/v1/clouds/{profile}/token"));
        let body = CloudTokenRequest {
            subject_token_type: TOKEN_TYPE_TASK.to_owned(),
            subject_token: self.task_token.clone(),
        };
        let resp = call(self.client.post(&url).json(&body), &url).await;
        resp.inspect_err(|e| {
            self.ended_by(e);
        })
    }
}

/// The token file of a profile.
fn token_file(dir: &Path, resp: &CloudTokenResponse) -> String {
    let kind = match resp.setup {
        CloudSetup::Aws { .. } => "aws",
        CloudSetup::Gcp { .. } => "gcp",
        CloudSetup::Azure { .. } => "azure",
    };
    dir.join(format!("{kind}-{}.jwt", resp.profile)).display().to_string()
}

/// Writes the token (exactly the JWT: the SDKs send the file's bytes as they are) and the
/// files around it, and returns the variables that point the SDKs at them.
pub(super) fn lay_out(dir: &Path, resp: &CloudTokenResponse) -> anyhow::Result<BTreeMap<String, String>> {
    let token_path = token_file(dir, resp);
    let name = Path::new(&token_path).file_name().and_then(|n| n.to_str()).unwrap_or("cloud.jwt").to_owned();
    write_secret(dir, &name, &resp.token).with_context(|| format!("writing {token_path}"))?;
    let mut vars = BTreeMap::new();
    let mut set = |k: &str, v: &str| {
        vars.insert(k.to_owned(), v.to_owned());
    };
    match &resp.setup {
        CloudSetup::Aws { role_arn, session_name, region } => {
            set("AWS_WEB_IDENTITY_TOKEN_FILE", &token_path);
            set("AWS_ROLE_ARN", role_arn);
            set("AWS_ROLE_SESSION_NAME", session_name);
            if let Some(r) = region {
                set("AWS_REGION", r);
                set("AWS_DEFAULT_REGION", r);
            }
        }
        CloudSetup::Gcp { audience, token_url, service_account_impersonation_url } => {
            // The shape `gcloud iam workload-identity-pools create-cred-config` writes.
            let mut config = serde_json::json!({
                "type": "external_account",
                "audience": audience,
                "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
                "token_url": token_url,
                "credential_source": {"file": token_path, "format": {"type": "text"}},
            });
            if let (Some(url), Some(obj)) = (service_account_impersonation_url, config.as_object_mut()) {
                obj.insert("service_account_impersonation_url".into(), url.clone().into());
            }
            let file = format!("gcp-{}.json", resp.profile);
            let path = write_secret(dir, &file, &config.to_string()).with_context(|| format!("writing {file}"))?;
            let path = path.display().to_string();
            set("GOOGLE_APPLICATION_CREDENTIALS", &path);
            set("CLOUDSDK_AUTH_CREDENTIAL_FILE_OVERRIDE", &path);
        }
        CloudSetup::Azure { tenant_id, client_id, authority_host } => {
            set("AZURE_FEDERATED_TOKEN_FILE", &token_path);
            set("AZURE_CLIENT_ID", client_id);
            set("AZURE_TENANT_ID", tenant_id);
            set("AZURE_AUTHORITY_HOST", authority_host);
        }
    }
    Ok(vars)
}

/// Gets each profile's first token and lays the files out; refuses two profiles of one
/// kind (their variables would collide).
pub(super) async fn prepare(
    session: &Session,
    dir: &Path,
    profiles: &[String],
) -> anyhow::Result<(BTreeMap<String, String>, Vec<(String, u64)>)> {
    let mut vars = BTreeMap::new();
    let mut renew = Vec::new();
    let mut kinds: Vec<(&'static str, String)> = Vec::new();
    for p in profiles {
        let resp = session.cloud_token(p).await.with_context(|| format!("getting a token for cloud profile {p}"))?;
        // File names come from the name asked for, checked above, never from the answer.
        if resp.profile != *p {
            bail!("the server answered for cloud profile {:?} when {p:?} was asked for", resp.profile);
        }
        let kind = match resp.setup {
            CloudSetup::Aws { .. } => "aws",
            CloudSetup::Gcp { .. } => "gcp",
            CloudSetup::Azure { .. } => "azure",
        };
        if let Some((_, other)) = kinds.iter().find(|(k, _)| *k == kind) {
            bail!(
                "--cloud {other} and --cloud {p} are both {kind}: the SDK's variables hold one profile of each cloud"
            );
        }
        kinds.push((kind, p.clone()));
        vars.extend(lay_out(dir, &resp)?);
        let lifetime = u64::try_from(resp.expires_at - resp.issued_at).unwrap_or(0);
        renew.push((p.clone(), lifetime));
    }
    Ok((vars, renew))
}

/// Replaces a profile's token before it expires, until the task ends. Renewed at half its
/// lifetime: azure-identity keeps the file's content for up to 10 minutes.
pub(super) async fn renew(session: std::sync::Arc<Session>, profile: String, dir: PathBuf, mut lifetime: u64) {
    loop {
        tokio::time::sleep(Duration::from_secs((lifetime / 2).max(1))).await;
        session.reattest().await;
        if session.is_ended() {
            return;
        }
        match session.cloud_token(&profile).await {
            Ok(resp) if resp.profile != profile => {
                eprintln!("mayfly exec: the server answered for another cloud profile than {profile}; not written");
                lifetime = 12;
            }
            Ok(resp) => match lay_out(&dir, &resp) {
                Ok(_) => lifetime = u64::try_from(resp.expires_at - resp.issued_at).unwrap_or(12),
                Err(e) => {
                    eprintln!("mayfly exec: cannot write the renewed token of cloud profile {profile}: {e:#}");
                    lifetime = 12;
                }
            },
            Err(_) if session.is_ended() => return,
            Err(e) => {
                eprintln!("mayfly exec: renewing the token of cloud profile {profile} failed: {e:#}");
                lifetime = 12;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn response(setup: CloudSetup) -> CloudTokenResponse {
        CloudTokenResponse {
            profile: "prod".into(),
            token: "eyJhbGciOiJSUzI1NiJ9.e30.c2ln".into(),
            jti: "j".into(),
            subject: "spiffe://example.org/ci".into(),
            audience: "a".into(),
            issued_at: 1,
            expires_at: 601,
            setup,
        }
    }

    #[test]
    fn each_cloud_gets_the_variables_and_files_its_sdk_reads() {
        let dir = tempfile::tempdir().unwrap();
        let aws = lay_out(
            dir.path(),
            &response(CloudSetup::Aws {
                role_arn: "arn:aws:iam::123456789012:role/ci".into(),
                session_name: "t1".into(),
                region: Some("eu-west-1".into()),
            }),
        )
        .unwrap();
        let token_file = &aws["AWS_WEB_IDENTITY_TOKEN_FILE"];
        assert_eq!(std::fs::read_to_string(token_file).unwrap(), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln", "exactly the JWT");
        assert_eq!(std::fs::metadata(token_file).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!((aws["AWS_REGION"].as_str(), aws["AWS_DEFAULT_REGION"].as_str()), ("eu-west-1", "eu-west-1"));

        let gcp = lay_out(
            dir.path(),
            &response(CloudSetup::Gcp {
                audience: "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q".into(),
                token_url: "https://sts.googleapis.com/v1/token".into(),
                service_account_impersonation_url: None,
            }),
        )
        .unwrap();
        let file: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&gcp["GOOGLE_APPLICATION_CREDENTIALS"]).unwrap()).unwrap();
        assert_eq!(file["type"], "external_account");
        assert_eq!(file["credential_source"]["format"]["type"], "text");
        let subject = file["credential_source"]["file"].as_str().unwrap();
        assert_eq!(std::fs::read_to_string(subject).unwrap(), "eyJhbGciOiJSUzI1NiJ9.e30.c2ln");
        assert!(file.get("service_account_impersonation_url").is_none());

        let azure = lay_out(
            dir.path(),
            &response(CloudSetup::Azure {
                tenant_id: "t".into(),
                client_id: "c".into(),
                authority_host: "https://login.microsoftonline.com/".into(),
            }),
        )
        .unwrap();
        assert!(azure["AZURE_FEDERATED_TOKEN_FILE"].ends_with("azure-prod.jwt"));
        assert_eq!(azure["AZURE_CLIENT_ID"], "c");
    }

    #[test]
    fn cloud_names_are_checked() {
        assert!(check_names(&["prod-aws".into(), "gcp".into()]).is_ok());
        assert!(check_names(&["a".into(), "a".into()]).is_err());
        assert!(check_names(&["../x".into()]).is_err());
    }
}
