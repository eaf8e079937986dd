//! Writes a self-contained benchmark setup into a directory: a Mayfly config, a
//! Cedar policy, a key-encryption key, a test OIDC issuer's JWKS, a platform JWT
//! signed by that issuer, and a wrk script that exchanges it.
//!
//! Usage: mayfly-bench-fixture DIR PORT [SYNC]
#![forbid(unsafe_code)]

use std::path::Path;
use std::process::ExitCode;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_SHA256, RsaKeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use serde_json::json;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(port)) = (args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok())) else {
        eprintln!("usage: mayfly-bench-fixture DIR PORT [full|normal]");
        return ExitCode::from(2);
    };
    let sync = args.get(3).map(String::as_str).unwrap_or("full");
    match write_fixture(Path::new(dir), port, sync) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn write_fixture(dir: &Path, port: u16, sync: &str) -> Result<(), Box<dyn std::error::Error>> {
    std::fs::create_dir_all(dir.join("policies"))?;
    let mut kek = [0u8; 32];
    aws_lc_rs::rand::fill(&mut kek).map_err(|_| "random")?;
    std::fs::write(dir.join("kek"), hex::encode(kek))?;

    // The platform issuer (think: a Kubernetes API server) signs with RS256, as most do.
    let key = RsaKeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).map_err(|_| "rsa keygen")?;
    let pk = key.public_key();
    let jwks = json!({"keys": [{
        "kty": "RSA", "kid": "bench-1", "alg": "RS256", "use": "sig",
        "n": B64.encode(pk.modulus().big_endian_without_leading_zero()),
        "e": B64.encode(pk.exponent().big_endian_without_leading_zero()),
    }]});
    std::fs::write(dir.join("jwks.json"), jwks.to_string())?;

    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let claims = json!({
        "iss": "https://k8s.bench.local", "aud": ["mayfly"], "sub": "system:serviceaccount:prod:web",
        "iat": now, "nbf": now, "exp": now + 4 * 3600,
        "kubernetes.io": {"namespace": "prod", "serviceaccount": {"name": "web", "uid": "u-1"},
                          "pod": {"name": "web-1", "uid": "p-1"}, "node": {"name": "n-1", "uid": "n-1"}}
    });
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "bench-1"});
    let input = format!("{}.{}", B64.encode(header.to_string()), B64.encode(claims.to_string()));
    let mut sig = vec![0u8; key.public_modulus_len()];
    key.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), input.as_bytes(), &mut sig).map_err(|_| "sign")?;
    let jwt = format!("{input}.{}", B64.encode(sig));
    std::fs::write(dir.join("platform.jwt"), &jwt)?;

    std::fs::write(
        dir.join("policies/bench.cedar"),
        r#"@id("bench")
permit (principal, action == Mayfly::Action::"exchange", resource == Mayfly::Audience::"https://api.bench")
when { principal.hasTag("namespace") && principal.getTag("namespace") == "prod" && context.ttl_seconds <= 900 };
@id("no-admin")
forbid (principal, action, resource) when { context.scopes.contains("admin") };
"#,
    )?;
    std::fs::write(
        dir.join("mayfly.toml"),
        format!(
            r#"trust_domain = "bench.local"
data_dir = "data"
[listen]
addr = "127.0.0.1:{port}"
[keys]
kek_file = "kek"
[policy]
dir = "policies"
[ledger]
sync = "{sync}"
[[attest.oidc]]
name = "k8s"
preset = "kubernetes"
issuer = "https://k8s.bench.local"
jwks_file = "jwks.json"
audiences = ["mayfly"]
"#
        ),
    )?;
    let body = format!(
        "grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Atoken-exchange&subject_token_type=urn%3Aietf%3Aparams%3Aoauth%3Atoken-type%3Ajwt&audience=https%3A%2F%2Fapi.bench&scope=read&subject_token={jwt}"
    );
    std::fs::write(
        dir.join("exchange.lua"),
        format!(
            "wrk.method = \"POST\"\nwrk.headers[\"Content-Type\"] = \"application/x-www-form-urlencoded\"\nwrk.body = \"{body}\"\n\
             function response(status, headers, body)\n  if status ~= 200 then\n    io.stderr:write(\"unexpected status \" .. status .. \"\\n\")\n  end\nend\n"
        ),
    )?;
    Ok(())
}
