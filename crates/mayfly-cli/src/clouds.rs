//! `mayfly clouds`: the cloud profiles, and the one-time set-up each needs on the cloud's
//! side; `mayfly oidc export`: the discovery document and JWKS as static files.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::Subcommand;
use mayfly_proto::{AwsCredentialsResponse, CloudProfileInfo, CloudTokenRequest};

use crate::client::{AdminRemote, Evidence, Remote, call, print_json};

/// `mayfly clouds …`
#[derive(Subcommand)]
pub enum CloudsCommand {
    /// List the cloud profiles.
    List {
        #[command(flatten)]
        remote: AdminRemote,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
    /// Print the commands that set a profile up on the cloud's side, with this server's values.
    Setup {
        #[command(flatten)]
        remote: AdminRemote,
        /// The cloud profile.
        name: String,
    },
    /// Temporary AWS credentials for an aws profile, got by Mayfly from STS with the caller's
    /// evidence; printed as `export AWS_…=…` lines for `eval` (or JSON).
    AwsCredentials {
        #[command(flatten)]
        remote: Remote,
        #[command(flatten)]
        evidence: Evidence,
        /// The cloud profile.
        name: String,
        /// JSON output.
        #[arg(long)]
        json: bool,
    },
}

impl CloudsCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        match self {
            CloudsCommand::List { remote, json } => {
                let profiles = fetch(remote).await?;
                if json {
                    print_json(&profiles)?;
                } else {
                    println!("{:<20} {:<6} {:<8} AUDIENCE", "NAME", "KIND", "ALG");
                    for p in profiles {
                        println!("{:<20} {:<6} {:<8} {}", p.name, p.kind, p.algorithm, p.audience);
                    }
                }
            }
            CloudsCommand::AwsCredentials { remote, evidence, name, json } => {
                let (subject_token, subject_token_type) = evidence.read()?;
                let url = remote.endpoint(&format!("/v1/credentials/aws/{name}"));
                let body = CloudTokenRequest { subject_token_type: subject_token_type.to_owned(), subject_token };
                let creds: AwsCredentialsResponse = call(remote.client()?.post(&url).json(&body), &url).await?;
                if json {
                    print_json(&creds)?;
                } else {
                    // The shape of `aws configure export-credentials --format env`.
                    println!("export AWS_ACCESS_KEY_ID={}", creds.access_key_id);
                    println!("export AWS_SECRET_ACCESS_KEY={}", creds.secret_access_key);
                    println!("export AWS_SESSION_TOKEN={}", creds.session_token);
                    println!("export AWS_CREDENTIAL_EXPIRATION={}", creds.expiration);
                }
            }
            CloudsCommand::Setup { remote, name } => {
                let profiles = fetch(remote).await?;
                let Some(p) = profiles.into_iter().find(|p| p.name == name) else {
                    bail!("no cloud profile is named {name:?} (mayfly clouds list)");
                };
                print!("{}", setup_text(&p));
            }
        }
        Ok(ExitCode::SUCCESS)
    }
}

async fn fetch(remote: AdminRemote) -> anyhow::Result<Vec<CloudProfileInfo>> {
    let remote = remote.resolve()?;
    let url = remote.remote.endpoint("/v1/clouds");
    let req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
    call(req, &url).await
}

/// The set-up commands for a profile, with `<SUB>` standing for the workload's SPIFFE ID.
fn setup_text(p: &CloudProfileInfo) -> String {
    let get = |k: &str| p.settings.get(k).map(String::as_str).unwrap_or("<unset>");
    let host = p.issuer.trim_start_matches("https://");
    let mut out = format!(
        "# Cloud profile {} ({}): tokens signed {} by signing profile {}, iss = {}, aud = {}\n\
         # The cloud fetches {}/.well-known/openid-configuration and {}.\n\
         # <SUB> is the SPIFFE ID of the workload (for a task, the workload that started it).\n\n",
        p.name, p.kind, p.algorithm, p.signing_profile, p.issuer, p.audience, p.issuer, p.jwks_uri
    );
    let role_name = get("role_arn").rsplit('/').next().unwrap_or("<ROLE>");
    match p.kind.as_str() {
        "aws" => out.push_str(&format!(
            "aws iam create-open-id-connect-provider --url {issuer} --client-id-list {aud}\n\n\
             # Trust policy of role {role_name} ({arn}):\n\
             cat > trust.json <<'JSON'\n\
             {{\"Version\": \"2012-10-17\", \"Statement\": [{{\"Effect\": \"Allow\",\n\
             \x20 \"Principal\": {{\"Federated\": \"arn:aws:iam::<ACCOUNT>:oidc-provider/{host}\"}},\n\
             \x20 \"Action\": \"sts:AssumeRoleWithWebIdentity\",\n\
             \x20 \"Condition\": {{\"StringEquals\": {{\"{host}:aud\": \"{aud}\", \"{host}:sub\": \"<SUB>\"}}}}}}]}}\n\
             JSON\n\
             aws iam update-assume-role-policy --role-name {role_name} --policy-document file://trust.json\n",
            issuer = p.issuer,
            aud = p.audience,
            arn = get("role_arn"),
        )),
        "gcp" => out.push_str(&format!(
            "gcloud iam workload-identity-pools create {pool} --location=global\n\
             gcloud iam workload-identity-pools providers create-oidc {provider} --location=global \\\n\
             \x20 --workload-identity-pool={pool} --issuer-uri={issuer} \\\n\
             \x20 --attribute-mapping=google.subject=assertion.sub\n\
             # Mayfly private? Upload its keys instead: mayfly oidc export DIR, then add --jwk-json-path=DIR/jwks.json\n\
             gcloud iam service-accounts add-iam-policy-binding {sa} --role=roles/iam.workloadIdentityUser \\\n\
             \x20 --member=principal://iam.googleapis.com/projects/{project}/locations/global/workloadIdentityPools/{pool}/subject/<SUB>\n",
            pool = get("pool"),
            provider = get("provider"),
            issuer = p.issuer,
            sa = p.settings.get("service_account").map(String::as_str).unwrap_or("<SERVICE_ACCOUNT>"),
            project = get("project_number"),
        )),
        "azure" => out.push_str(&format!(
            "az identity federated-credential create --name mayfly-{name} --identity-name <IDENTITY> \\\n\
             \x20 --resource-group <GROUP> --issuer {issuer} --subject <SUB> --audiences {aud}\n\
             # The identity's client id must be {client} (tenant {tenant}).\n",
            name = p.name,
            issuer = p.issuer,
            aud = p.audience,
            client = get("client_id"),
            tenant = get("tenant_id"),
        )),
        _ => {}
    }
    out.push_str(&format!("\n# Then: mayfly exec --cloud {} -- <command>\n", p.name));
    out
}

/// `mayfly oidc …`
#[derive(Subcommand)]
pub enum OidcCommand {
    /// Write the discovery document and the JWKS as static files, for a public bucket or CDN
    /// that the clouds fetch while Mayfly stays private: DIR/.well-known/openid-configuration
    /// and DIR/.well-known/jwks.json (the paths the documents name under `public_url`).
    Export {
        #[command(flatten)]
        remote: Remote,
        /// Where to write.
        dir: PathBuf,
    },
}

impl OidcCommand {
    pub async fn run(self) -> anyhow::Result<ExitCode> {
        let OidcCommand::Export { remote, dir } = self;
        let client = remote.client()?;
        let well_known = dir.join(".well-known");
        std::fs::create_dir_all(&well_known).with_context(|| format!("creating {}", well_known.display()))?;
        for (path, file) in
            [("/.well-known/openid-configuration", "openid-configuration"), ("/.well-known/jwks.json", "jwks.json")]
        {
            let url = remote.endpoint(path);
            let doc: serde_json::Value = call(client.get(&url), &url).await?;
            let text = serde_json::to_string_pretty(&doc)?;
            let target = well_known.join(file);
            std::fs::write(&target, text + "\n").with_context(|| format!("writing {}", target.display()))?;
            println!("wrote {}", target.display());
        }
        // gcloud's --jwk-json-path takes the set as written; Google refuses x5c/x5t members
        // (Mayfly's JWKs have none).
        Ok(ExitCode::SUCCESS)
    }
}
