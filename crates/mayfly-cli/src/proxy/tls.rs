//! The proxy's own CA: it signs, on demand, a certificate for each host whose TLS the
//! proxy terminates to inject a credential. The CA lives in memory only, as long
//! as the proxy process; the workload trusts its certificate (public) through the variables
//! `mayfly exec --proxy` sets.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// Host certificates kept before the cache starts over.
const MAX_CACHED_HOSTS: usize = 1024;
/// The CA outlives any proxy process (it is never stored; a restart makes a new one).
const CA_LIFETIME: time::Duration = time::Duration::days(365);
/// A host certificate lives a week, and is made again a day before it ends.
const HOST_LIFETIME: time::Duration = time::Duration::days(7);
const HOST_RENEW_BEFORE: time::Duration = time::Duration::days(1);

/// The proxy's CA and the host certificates it made.
pub struct ProxyCa {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    ca_der: CertificateDer<'static>,
    not_after: time::OffsetDateTime,
    /// Each host's TLS configuration and when its certificate ends.
    hosts: Mutex<HashMap<String, (Arc<ServerConfig>, time::OffsetDateTime)>>,
}

impl ProxyCa {
    /// A new CA with a fresh key.
    pub fn generate() -> anyhow::Result<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).context("generating the proxy CA key")?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Mayfly");
        dn.push(DnType::CommonName, "Mayfly proxy CA");
        params.distinguished_name = dn;
        // A path length of 0: it signs host certificates and nothing that signs.
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + CA_LIFETIME;
        let cert = params.self_signed(&key).context("signing the proxy CA")?;
        let cert_pem = cert.pem();
        let ca_der = cert.der().clone();
        let issuer = Issuer::from_ca_cert_der(cert.der(), key).context("loading the proxy CA")?;
        Ok(Self { issuer, cert_pem, ca_der, not_after: params.not_after, hosts: Mutex::new(HashMap::new()) })
    }

    /// The CA certificate (PEM), for the workload to trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The TLS configuration that presents a certificate for `host` (a DNS name or an IP address).
    pub fn server_config(&self, host: &str) -> anyhow::Result<Arc<ServerConfig>> {
        let now = time::OffsetDateTime::now_utc();
        let mut hosts = self.hosts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((c, not_after)) = hosts.get(host)
            && *not_after - now > HOST_RENEW_BEFORE
        {
            return Ok(c.clone());
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().context("the host is not a DNS name")?),
        }];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = (now + HOST_LIFETIME).min(self.not_after);
        let cert = params.signed_by(&key, &self.issuer).context("signing a host certificate")?;
        let chain = vec![cert.der().clone(), self.ca_der.clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // The proxy speaks HTTP/1.1 inside the tunnel.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        if hosts.len() >= MAX_CACHED_HOSTS {
            hosts.clear();
        }
        hosts.insert(host.to_owned(), (config.clone(), params.not_after));
        Ok(config)
    }
}
