//! `<pki mount>/issue/<role>` and `<pki mount>/ca/pem`: certificates from Mayfly's CA.

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{VaultCaller, VaultError, VaultState, body, caller, envelope, not_served, with_token};
use crate::broker::certificates::CertificateParams;
use crate::deliver::listener::PeerInfo;

#[derive(Deserialize)]
struct IssueBody {
    #[serde(default)]
    common_name: Option<String>,
    #[serde(default)]
    alt_names: Option<String>,
    #[serde(default)]
    ip_sans: Option<String>,
    #[serde(default)]
    uri_sans: Option<String>,
    #[serde(default)]
    other_sans: Option<String>,
    #[serde(default)]
    ttl: Option<Value>,
    #[serde(default)]
    format: Option<String>,
}

fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
        .trim_end()
        .to_owned()
}

/// Requests under the PKI mount: `issue/<role>` and `ca/pem`.
pub(super) async fn serve(
    state: &VaultState,
    peer: &PeerInfo,
    method: &Method,
    headers: &HeaderMap,
    rest: &str,
    bytes: &Bytes,
) -> Result<Response, VaultError> {
    if rest == "ca/pem" && *method == Method::GET {
        // Public, as in Vault: the CA certificates that verify what this mount issues.
        let authorities = state.app.broker.svid_authorities().x509_authorities();
        let pems: Vec<String> = authorities.iter().map(|der| pem("CERTIFICATE", der)).collect();
        return Ok(
            ([(header::CONTENT_TYPE, "application/pem-certificate-chain")], pems.join("\n") + "\n").into_response()
        );
    }
    let Some(role_name) = rest.strip_prefix("issue/").filter(|r| !r.is_empty() && !r.contains('/')) else {
        return Err(not_served(&format!("/v1/{}/{rest}", state.cfg.pki_mount)));
    };
    if !matches!(*method, Method::POST | Method::PUT) {
        return Err(VaultError::new(StatusCode::METHOD_NOT_ALLOWED, format!("{method} is not supported on issue")));
    }
    let VaultCaller::Login(token) = caller(state, headers).await? else {
        return Err(VaultError::permission_denied(
            "an admin token holds no workload identity: certificates go to logged-in workloads",
        ));
    };
    let role = state.cfg.pki_roles.iter().find(|r| r.name == role_name).ok_or_else(|| {
        VaultError::bad_request(format!("unknown role: {}", role_name.chars().take(128).collect::<String>()))
    })?;
    let req: IssueBody = body(bytes)?;
    let unsupported = [("ip_sans", &req.ip_sans), ("uri_sans", &req.uri_sans), ("other_sans", &req.other_sans)];
    if let Some((field, _)) = unsupported.iter().find(|(_, v)| v.as_deref().is_some_and(|v| !v.trim().is_empty())) {
        return Err(VaultError::bad_request(format!(
            "{field} is not issued: a Mayfly certificate's only URI SAN is the caller's SPIFFE ID, and it names DNS names only"
        )));
    }
    if req.format.as_deref().is_some_and(|f| f != "pem") {
        return Err(VaultError::bad_request("format: only \"pem\" is issued"));
    }
    let common_name = req
        .common_name
        .filter(|c| !c.trim().is_empty())
        .ok_or_else(|| VaultError::bad_request("missing common_name"))?;
    let mut dns_names = vec![common_name];
    dns_names.extend(
        req.alt_names.iter().flat_map(|a| a.split(',')).map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned),
    );
    let ttl = super::database::increment(&req.ttl)
        .map_err(|_| VaultError::bad_request("ttl is seconds or a duration such as \"1h\""))?;
    let cert_role = role.certificate_role();
    let cert = state
        .app
        .broker
        .issue_certificate(CertificateParams {
            token_type: mayfly_proto::TOKEN_TYPE_TASK,
            token: &token,
            role: &cert_role,
            dns_names,
            ttl_seconds: ttl,
            source_ip: peer.addr.ip(),
        })
        .await
        .map_err(with_token)?;
    let issuing_ca = pem("CERTIFICATE", &cert.issuer_cert);
    let serial =
        cert.serial.as_bytes().chunks(2).map(|c| String::from_utf8_lossy(c).into_owned()).collect::<Vec<_>>().join(":");
    let data = json!({
        "certificate": pem("CERTIFICATE", &cert.cert),
        "issuing_ca": issuing_ca,
        "ca_chain": [issuing_ca],
        "private_key": pem("PRIVATE KEY", &cert.key_pkcs8),
        "private_key_type": "ec",
        "serial_number": serial,
        "expiration": cert.expires_at,
    });
    Ok(envelope(None, data, Value::Null, Vec::new()))
}
