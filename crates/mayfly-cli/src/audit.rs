//! `mayfly audit verify` and `mayfly audit checkpoint`: the audit chain checked link by
//! link and against signed checkpoints of its head, remotely (`--url` and an admin token)
//! or on the server's own box (`--config`, reading the database directly).
//!
//! An exported checkpoint's signature is checked here, against keys this command trusts:
//! those given with `--jwk`, then the server's published JWKS, then the keys its storage
//! holds (retired ones included; remotely through `GET /v1/audit/keys`, with `--config`
//! opened under the KEK). Never against a key the checkpoint file carries.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use mayfly_server::checkpoints::{self, CheckpointError, VerifiedCheckpoint};
use serde_json::{Value, json};

use crate::client::{AdminRemote, call, print_json};

/// Largest checkpoint or key file read.
const MAX_FILE: u64 = 1024 * 1024;

/// `mayfly audit checkpoint [--json]`.
pub async fn checkpoint(remote: AdminRemote, as_json: bool) -> anyhow::Result<ExitCode> {
    let remote = remote.resolve()?;
    let url = remote.remote.endpoint("/v1/audit/checkpoints/latest");
    let req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
    let latest: Value = call(req, &url).await?;
    let jws = latest["checkpoint"].as_str().ok_or_else(|| anyhow!("unexpected answer from {url}"))?.to_owned();
    // Checked before it is handed out: a checkpoint planted in the database (or one whose
    // key is gone) is refused now rather than kept as evidence that cannot hold.
    let mut keys = published_keys(&remote).await?;
    keys.extend(stored_keys(&remote).await?);
    let verified =
        checkpoints::verify(&jws, &keys).map_err(|e| anyhow!("the server's latest checkpoint is refused: {e}"))?;
    let (claims, kid) = (verified.claims, verified.kid);
    if as_json {
        // The key, so that the file can be verified once the key has left the JWKS too
        // (with --jwk: a key is trusted only when the operator says so).
        let jwk = keys
            .into_iter()
            .find(|k| mayfly_server::keys::jwk_thumbprint(k).as_deref() == Some(kid.as_str()))
            .unwrap_or(Value::Null);
        print_json(&json!({
            "checkpoint": jws, "iss": claims.iss, "seq": claims.seq, "hash": claims.hash, "iat": claims.iat,
            "kid": kid, "jwk": jwk,
        }))?;
    } else {
        println!("{jws}");
        eprintln!(
            "checkpoint of audit event {} (hash {}), signed {} by key {kid}",
            claims.seq,
            claims.hash,
            mayfly_server::clock::rfc3339(claims.iat)
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `mayfly audit verify [--checkpoint FILE [--jwk FILE]]`.
pub async fn verify(
    remote: AdminRemote,
    checkpoint: Option<PathBuf>,
    jwk: Option<PathBuf>,
) -> anyhow::Result<ExitCode> {
    let exported = checkpoint.as_deref().map(|p| read_checkpoint(p).map(|jws| (p, jws))).transpose()?;
    let given = jwk.as_deref().map(read_keys).transpose()?.unwrap_or_default();
    let (report, verified) = match &remote.config {
        Some(path) => offline(path, exported.as_ref().map(|(p, j)| (*p, j.as_str())), &given).await?,
        None => online(remote, exported.as_ref().map(|(p, j)| (*p, j.as_str())), &given).await?,
    };
    let checked = report["checked"].as_u64().unwrap_or(0);
    if report["ok"].as_bool() != Some(true) {
        let kind = report["break_kind"].as_str().unwrap_or("broken").replace('_', " ");
        bail!(
            "audit chain check failed ({kind}) after {checked} good events: {}",
            report["first_break"].as_str().unwrap_or("unknown")
        );
    }
    let anchors = report["checkpoints_checked"].as_u64().unwrap_or(0);
    println!("audit chain intact: {checked} events verified, against {anchors} checkpoints");
    if let Some((v, via, path)) = verified {
        println!(
            "checkpoint {}: the chain still holds event {} with the hash it had when signed ({}, key {} {via})",
            path.display(),
            v.claims.seq,
            mayfly_server::clock::rfc3339(v.claims.iat),
            v.kid
        );
    }
    Ok(ExitCode::SUCCESS)
}

type Verified<'a> = Option<(VerifiedCheckpoint, &'static str, &'a Path)>;

/// On the server's box: the database read directly, the stored keys opened under the KEK.
async fn offline<'a>(
    config: &Path,
    exported: Option<(&'a Path, &str)>,
    given: &[Value],
) -> anyhow::Result<(Value, Verified<'a>)> {
    let mut cfg = mayfly_server::config::Config::load(config)?;
    let storage = cfg.storage()?;
    if let mayfly_server::config::Storage::Sqlite(db) = &storage
        && !db.exists()
    {
        bail!("no database at {}", db.display());
    }
    // An offline check should fail, not wait forever, when the database is down.
    if cfg.postgres.start_timeout.is_zero() {
        cfg.postgres.start_timeout = std::time::Duration::from_secs(10);
    }
    let store =
        mayfly_server::server::open_store(&cfg).await.with_context(|| format!("opening storage {storage:?}"))?;
    // The KEK is what vouches for the stored keys; without it they cannot be opened.
    let stored: Result<Vec<Value>, String> =
        match mayfly_server::server::kek_source(&cfg).and_then(|s| mayfly_server::keys::Kek::load(&s)) {
            Ok(kek) => mayfly_server::keys::stored_public_keys(store.as_ref(), &kek).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
    let verified = match exported {
        Some((path, jws)) => {
            let mut found = first_match(jws, path, given, "given with --jwk")?;
            if found.is_none() {
                match &stored {
                    Ok(keys) => found = first_match(jws, path, keys, "held in the server's storage")?,
                    Err(why) if given.is_empty() => bail!(
                        "cannot check the signature of {}: the stored signing keys cannot be opened here ({why}); \
                         run where the key-encryption key is readable, or pass the public key with --jwk FILE",
                        path.display()
                    ),
                    Err(_) => {}
                }
            }
            Some(found.ok_or_else(|| refused(path, unknown(jws)))?)
        }
        None => None,
    };
    if let Err(why) = &stored {
        eprintln!("note: stored checkpoints are checked without their signatures: {why}");
    }
    let anchor = verified.as_ref().map(|(v, _, path)| v.anchor(source(path, v)));
    let report = checkpoints::verify_chain(store.as_ref(), stored.as_deref().ok(), anchor).await?;
    Ok((serde_json::to_value(report)?, verified))
}

/// Against a running server: keys from its JWKS and `/v1/audit/keys`, the chain checked by it.
async fn online<'a>(
    remote: AdminRemote,
    exported: Option<(&'a Path, &str)>,
    given: &[Value],
) -> anyhow::Result<(Value, Verified<'a>)> {
    let remote = remote.resolve()?;
    let verified = match exported {
        Some((path, jws)) => {
            let mut found = first_match(jws, path, given, "given with --jwk")?;
            if found.is_none() {
                found = first_match(jws, path, &published_keys(&remote).await?, "published in the server's JWKS")?;
            }
            if found.is_none() {
                found = first_match(
                    jws,
                    path,
                    &stored_keys(&remote).await?,
                    "retired from the JWKS, held in the server's storage",
                )?;
            }
            Some(found.ok_or_else(|| refused(path, unknown(jws)))?)
        }
        None => None,
    };
    let url = remote.remote.endpoint("/v1/audit/verify");
    let mut req = remote.remote.client()?.get(&url).bearer_auth(remote.token()?);
    if let Some((v, _, _)) = &verified {
        req = req.query(&[("seq", v.claims.seq.to_string()), ("hash", v.claims.hash.clone())]);
    }
    let report: Value = call(req, &url).await?;
    Ok((report, verified))
}

/// The checkpoint verified with `keys`; `None` when none of them has its `kid`.
fn first_match<'a>(
    jws: &str,
    path: &'a Path,
    keys: &[Value],
    via: &'static str,
) -> anyhow::Result<Option<(VerifiedCheckpoint, &'static str, &'a Path)>> {
    match checkpoints::verify(jws, keys) {
        Ok(v) => Ok(Some((v, via, path))),
        Err(CheckpointError::UnknownKey { .. }) => Ok(None),
        Err(e) => Err(refused(path, e)),
    }
}

fn unknown(jws: &str) -> CheckpointError {
    match checkpoints::verify(jws, &[]) {
        Err(e) => e,
        Ok(_) => CheckpointError::UnknownKey { kid: String::new() },
    }
}

fn refused(path: &Path, e: CheckpointError) -> anyhow::Error {
    anyhow!("checkpoint {} is refused: {e}", path.display())
}

fn source(path: &Path, v: &VerifiedCheckpoint) -> String {
    format!("the checkpoint in {} (signed {})", path.display(), mayfly_server::clock::rfc3339(v.claims.iat))
}

/// The server's published keys (`/.well-known/jwks.json`).
async fn published_keys(remote: &AdminRemote) -> anyhow::Result<Vec<Value>> {
    let url = remote.remote.endpoint("/.well-known/jwks.json");
    let set: Value = call(remote.remote.client()?.get(&url), &url).await?;
    Ok(set["keys"].as_array().cloned().unwrap_or_default())
}

/// Every signing key the server's storage holds, retired ones included (`/v1/audit/keys`).
async fn stored_keys(remote: &AdminRemote) -> anyhow::Result<Vec<Value>> {
    let url = remote.remote.endpoint("/v1/audit/keys");
    let set: Value = call(remote.remote.client()?.get(&url).bearer_auth(remote.token()?), &url).await?;
    Ok(set["keys"].as_array().cloned().unwrap_or_default())
}

fn read_small(path: &Path) -> anyhow::Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?.len();
    if len > MAX_FILE {
        bail!("{} is larger than {MAX_FILE} bytes", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// A compact JWS, or the `--json` output of `mayfly audit checkpoint` (its `checkpoint`).
fn read_checkpoint(path: &Path) -> anyhow::Result<String> {
    let text = read_small(path)?;
    let text = text.trim();
    if text.starts_with('{') {
        let v: Value = serde_json::from_str(text).with_context(|| format!("{} is not valid JSON", path.display()))?;
        return v["checkpoint"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("{}: a JSON checkpoint file has a \"checkpoint\" member", path.display()));
    }
    Ok(text.to_owned())
}

/// A JWK, a JWK Set, or an object with a `jwk` member (`mayfly audit checkpoint --json`).
fn read_keys(path: &Path) -> anyhow::Result<Vec<Value>> {
    let v: Value = serde_json::from_str(&read_small(path)?)
        .with_context(|| format!("{} is not a JWK, a JWK Set or a checkpoint's --json output", path.display()))?;
    let keys = if let Some(keys) = v["keys"].as_array() {
        keys.clone()
    } else if v["jwk"].is_object() {
        vec![v["jwk"].clone()]
    } else if v["kty"].is_string() {
        vec![v]
    } else {
        bail!("{}: expected a JWK, a JWK Set or a checkpoint's --json output", path.display())
    };
    Ok(keys)
}
