//! Security Event Tokens (RFC 8417) from configured senders (RFC 8935): verified against
//! the sender's keys and turned into signals.

use std::collections::BTreeMap;
use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

use crate::spiffe::SpiffeId;

use super::model::*;

/// How old a SET's `iat` may be.
const MAX_SET_AGE_SECS: i64 = 300;
/// How far in the future a SET's `iat` may be (clock skew).
const MAX_SET_FUTURE_SECS: i64 = 60;

/// A configured SET sender, its keys loaded.
pub struct SignalSender {
    /// Name, for audit records.
    pub name: String,
    /// The `iss` of its SETs.
    pub issuer: String,
    /// The `aud` its SETs must carry.
    pub audience: String,
    /// What it may signal about (`None`: anything in the trust domain).
    pub subject_prefix: Option<String>,
    keys: JwkSet,
    algorithms: Vec<Algorithm>,
}

impl std::fmt::Debug for SignalSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignalSender").field("name", &self.name).field("issuer", &self.issuer).finish_non_exhaustive()
    }
}

impl SignalSender {
    /// Loads a sender's JWKS from a file; `none` and HMAC are never accepted.
    pub fn load(cfg: &crate::broker::config::SignalSenderConfig) -> Result<Self, String> {
        let keys = read_jwks(&cfg.jwks_file)?;
        let mut algorithms = Vec::new();
        for a in &cfg.algorithms {
            match a.as_str() {
                "RS256" => algorithms.push(Algorithm::RS256),
                "ES256" => algorithms.push(Algorithm::ES256),
                "EdDSA" => algorithms.push(Algorithm::EdDSA),
                "PS256" => algorithms.push(Algorithm::PS256),
                other => return Err(format!("signals.senders {:?}: algorithm {other:?} is not accepted", cfg.name)),
            }
        }
        let subject_prefix = cfg.subject_prefix.as_ref().map(|p| p.trim_end_matches('/').to_owned());
        if let Some(p) = &subject_prefix {
            SpiffeId::parse(p).map_err(|e| format!("signals.senders {:?}: subject_prefix: {e}", cfg.name))?;
        }
        Ok(Self {
            name: cfg.name.clone(),
            issuer: cfg.issuer.clone(),
            audience: cfg.audience.clone(),
            subject_prefix,
            keys,
            algorithms,
        })
    }
}

fn read_jwks(path: &Path) -> Result<JwkSet, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not a JWK Set: {e}", path.display()))
}

/// A verified SET's claims.
#[derive(Debug)]
pub struct VerifiedSet {
    /// The sender.
    pub sender: String,
    /// `jti`.
    pub jti: String,
    /// The signals its events mean.
    pub signals: Vec<Signal>,
}

/// Verifies a SET (RFC 8417) from one of `senders` and turns its events into signals.
pub fn verify_set(token: &str, senders: &[SignalSender], now: i64) -> Result<VerifiedSet, SignalError> {
    if token.len() > 16 * 1024 {
        return Err(SignalError::Invalid("the SET is larger than 16 KiB".into()));
    }
    let header = jsonwebtoken::decode_header(token)
        .map_err(|_| SignalError::Invalid("the body is not a compact JWS (an unsigned SET is refused)".into()))?;
    // RFC 7515 §4.1.9: the media type with or without its "application/" prefix.
    let typ = header.typ.as_deref().map(str::to_ascii_lowercase);
    if !matches!(typ.as_deref(), Some("secevent+jwt" | "application/secevent+jwt")) {
        return Err(SignalError::Invalid("a SET carries typ \"secevent+jwt\" (RFC 8417 §2.3)".into()));
    }
    // The issuer picks the keys; read unverified only to choose them.
    let unverified: Value = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| SignalError::Invalid("the SET's payload is not base64url JSON".into()))?;
    let iss = unverified["iss"].as_str().ok_or_else(|| SignalError::Invalid("the SET has no iss".into()))?;
    let sender = senders.iter().find(|s| s.issuer == iss).ok_or_else(|| {
        // Unverified text: bounded before it reaches an answer or the audit trail.
        let iss: String = iss.chars().take(200).collect();
        SignalError::UnknownSender(format!("no signal sender is configured for issuer {iss:?}"))
    })?;
    if !sender.algorithms.contains(&header.alg) {
        return Err(SignalError::BadSignature(format!(
            "algorithm {:?} is not accepted from {}",
            header.alg, sender.name
        )));
    }
    let candidates: Vec<_> = match &header.kid {
        Some(kid) => sender.keys.find(kid).into_iter().collect(),
        None => sender.keys.keys.iter().collect(),
    };
    if candidates.is_empty() {
        return Err(SignalError::BadSignature(format!("no key of {} matches the SET's kid", sender.name)));
    }
    let mut validation = Validation::new(header.alg);
    validation.algorithms = vec![header.alg];
    validation.validate_exp = false;
    validation.required_spec_claims = ["iss", "aud"].iter().map(|s| s.to_string()).collect();
    validation.set_issuer(&[&sender.issuer]);
    validation.set_audience(&[&sender.audience]);
    use jsonwebtoken::errors::ErrorKind;
    let mut audience_wrong = false;
    let claims = candidates.iter().find_map(|jwk| {
        let key = DecodingKey::from_jwk(jwk).ok()?;
        match jsonwebtoken::decode::<Value>(token, &key, &validation) {
            Ok(d) => Some(d.claims),
            Err(e) => {
                // The signature verified with this key; only the audience is wrong.
                let kind = e.into_kind();
                audience_wrong |= matches!(kind, ErrorKind::InvalidAudience)
                    || matches!(&kind, ErrorKind::MissingRequiredClaim(c) if c == "aud");
                None
            }
        }
    });
    let Some(claims) = claims else {
        return Err(if audience_wrong {
            SignalError::WrongAudience(format!("the SET is not addressed to {}", sender.audience))
        } else {
            SignalError::BadSignature(format!("the SET's signature does not verify with {}'s keys", sender.name))
        });
    };
    let iat = claims["iat"].as_i64().ok_or_else(|| SignalError::Invalid("the SET has no iat".into()))?;
    if iat < now - MAX_SET_AGE_SECS || iat > now + MAX_SET_FUTURE_SECS {
        return Err(SignalError::Invalid(format!("the SET's iat is more than {MAX_SET_AGE_SECS} s from now")));
    }
    let jti = claims["jti"].as_str().filter(|j| !j.is_empty() && j.len() <= 256);
    let jti = jti.ok_or_else(|| SignalError::Invalid("the SET has no jti (1 to 256 characters)".into()))?.to_owned();
    let events = claims["events"]
        .as_object()
        .filter(|e| !e.is_empty())
        .ok_or_else(|| SignalError::Invalid("the SET has no events".into()))?;
    let mut signals = Vec::new();
    let mut understood = 0;
    for (event_type, payload) in events {
        if event_type == SSF_VERIFICATION {
            understood += 1;
            continue;
        }
        if !is_known_event(event_type) {
            // RFC 8417 §2.2 leaves events a receiver does not know to be ignored; a SET
            // with no event Mayfly knows is refused below, so a typo does not pass silently.
            tracing::info!(event = %event_type.chars().take(200).collect::<String>(), "SET event not acted on");
            continue;
        }
        understood += 1;
        let subject = set_subject(payload.get("subject").or(claims.get("sub_id")))?;
        if let Some(signal) = event_signal(event_type, payload, subject)? {
            signals.push(signal);
        }
    }
    if let Some(scope) = &sender.subject_prefix {
        for sig in &signals {
            let s = &sig.subject;
            let inside = |id: &str| crate::ledger::revocations::under_prefix(id.trim_end_matches('/'), scope);
            let ok = match (&s.spiffe_id, &s.spiffe_prefix) {
                (Some(id), _) | (_, Some(id)) => inside(id),
                // Attribute and task subjects can reach anything: not for a scoped sender.
                _ => false,
            };
            if !ok {
                return Err(SignalError::OutOfScope(format!("{} may signal only about {scope}", sender.name)));
            }
        }
    }
    if understood == 0 {
        let names: Vec<String> = events.keys().map(|k| k.chars().take(200).collect()).collect();
        return Err(SignalError::Invalid(format!("no event Mayfly knows in this SET: unknown event type {names:?}")));
    }
    Ok(VerifiedSet { sender: sender.name.clone(), jti, signals })
}

/// An RFC 9493 subject identifier: `uri` (a SPIFFE ID), or Mayfly's `spiffe_prefix`,
/// `task` and `attributes` forms.
fn set_subject(v: Option<&Value>) -> Result<SignalSubject, SignalError> {
    let v = v.ok_or_else(|| SignalError::Invalid("the event names no subject (sub_id)".into()))?;
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
    let subject = match v.get("format").and_then(Value::as_str) {
        Some("uri") => SignalSubject { spiffe_id: text("uri"), ..Default::default() },
        Some("spiffe_prefix") => SignalSubject { spiffe_prefix: text("prefix"), ..Default::default() },
        Some("mayfly_task") => SignalSubject { task: text("id"), ..Default::default() },
        Some("mayfly_attributes") => SignalSubject {
            attributes: v.get("attributes").and_then(|a| serde_json::from_value(a.clone()).ok()),
            ..Default::default()
        },
        other => {
            return Err(SignalError::Invalid(format!(
                "subject format {other:?}: use uri (a SPIFFE ID), spiffe_prefix, mayfly_task or mayfly_attributes"
            )));
        }
    };
    Ok(subject)
}

fn is_known_event(t: &str) -> bool {
    matches!(
        t,
        CAEP_SESSION_REVOKED
            | CAEP_CREDENTIAL_CHANGE
            | CAEP_DEVICE_COMPLIANCE
            | CAEP_ASSURANCE_LEVEL
            | CAEP_TOKEN_CLAIMS
    ) || t.strip_prefix(MAYFLY_EVENT_PREFIX).is_some_and(|k| SignalKind::parse(k).is_some())
}

/// The signal an event means; `None` for an event that asks nothing of Mayfly (a
/// credential change that is not a revocation, a device becoming compliant).
fn event_signal(event_type: &str, payload: &Value, subject: SignalSubject) -> Result<Option<Signal>, SignalError> {
    let reason = payload.get("reason_admin").map(|r| r.to_string());
    let signal = |kind, attributes| Some(Signal { kind, subject: subject.clone(), attributes, reason: reason.clone() });
    let str_of = |k: &str| payload.get(k).and_then(Value::as_str);
    Ok(match event_type {
        CAEP_SESSION_REVOKED => signal(SignalKind::WorkloadCompromised, BTreeMap::new()),
        CAEP_CREDENTIAL_CHANGE => match str_of("change_type") {
            Some("revoke" | "delete") => signal(SignalKind::WorkloadCompromised, BTreeMap::new()),
            Some("create" | "update") => None,
            _ => return Err(SignalError::Invalid("credential-change needs change_type".into())),
        },
        CAEP_DEVICE_COMPLIANCE => match str_of("current_status") {
            Some("not-compliant") => signal(SignalKind::WorkloadCompromised, BTreeMap::new()),
            Some("compliant") => None,
            _ => return Err(SignalError::Invalid("device-compliance-change needs current_status".into())),
        },
        CAEP_ASSURANCE_LEVEL => {
            let level = str_of("current_level")
                .ok_or_else(|| SignalError::Invalid("assurance-level-change needs current_level".into()))?;
            signal(SignalKind::AttributeChanged, BTreeMap::from([("assurance_level".into(), level.into())]))
        }
        CAEP_TOKEN_CLAIMS => {
            let claims = payload
                .get("claims")
                .and_then(Value::as_object)
                .ok_or_else(|| SignalError::Invalid("token-claims-change needs claims".into()))?;
            // Policy sees attributes as strings: other JSON values keep their JSON text.
            let attributes = claims
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                .collect();
            signal(SignalKind::AttributeChanged, attributes)
        }
        t if t.starts_with(MAYFLY_EVENT_PREFIX) => {
            let kind = SignalKind::parse(&t[MAYFLY_EVENT_PREFIX.len()..])
                .ok_or_else(|| SignalError::Invalid(format!("unknown event type {t:?}")))?;
            let attributes = payload
                .get("attributes")
                .map(|a| serde_json::from_value(a.clone()))
                .transpose()
                .map_err(|_| SignalError::Invalid("attributes is an object of strings".into()))?
                .unwrap_or_default();
            signal(kind, attributes)
        }
        other => return Err(SignalError::Invalid(format!("unknown event type {other:?}"))),
    })
}
