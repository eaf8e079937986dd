//! The rustls listener, with and without client certificates.

mod common;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::Value;

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);

    let server_key = KeyPair::generate().unwrap();
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    sp.subject_alt_names.push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let server = sp.signed_by(&server_key, &issuer).unwrap();

    let client_key = KeyPair::generate().unwrap();
    let mut cp = CertificateParams::new(Vec::<String>::new()).unwrap();
    cp.subject_alt_names.push(SanType::URI("spiffe://test.example/client".try_into().unwrap()));
    let client = cp.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn start_tls(require_client: bool) -> (TestServer, Pki, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("server.pem"), &pki.server_cert).unwrap();
    std::fs::write(dir.path().join("server.key"), &pki.server_key).unwrap();
    std::fs::write(dir.path().join("ca.pem"), &pki.ca_pem).unwrap();
    let path = write_config(dir.path(), &k8s, &gh, &Options::default());
    let text = std::fs::read_to_string(&path).unwrap().replace(
        "addr = \"127.0.0.1:0\"",
        &format!(
            "addr = \"127.0.0.1:0\"\ntls_cert = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = \"ca.pem\"\nrequire_client_cert = {require_client}"
        ),
    );
    std::fs::write(&path, text).unwrap();
    let mut srv = TestServer::start_in(dir, &path).await;
    assert!(srv.url.starts_with("https://127.0.0.1:"), "{}", srv.url);
    srv.http = client(&pki, false);
    (srv, pki, k8s)
}

fn client(pki: &Pki, with_cert: bool) -> reqwest::Client {
    let mut b =
        reqwest::Client::builder().tls_certs_only([reqwest::Certificate::from_pem(pki.ca_pem.as_bytes()).unwrap()]);
    if with_cert {
        let id = reqwest::Identity::from_pem(format!("{}{}", pki.client_cert, pki.client_key).as_bytes()).unwrap();
        b = b.identity(id);
    }
    b.build().unwrap()
}

#[tokio::test]
async fn serves_token_exchange_over_tls() {
    let (srv, pki, k8s) = start_tls(false).await;
    let r = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    srv.verify(v["access_token"].as_str().unwrap(), "https://api.test").await;
    // A client certificate is accepted when offered.
    let with_cert = client(&pki, true);
    assert_eq!(with_cert.get(format!("{}/healthz", srv.url)).send().await.unwrap().status(), 200);
    // Plain HTTP to the TLS port fails.
    let plain = srv.url.replace("https://", "http://");
    assert!(reqwest::get(format!("{plain}/healthz")).await.is_err(), "plain HTTP is not served on the TLS port");
    srv.stop().await;
}

#[tokio::test]
async fn required_client_certificates_are_enforced() {
    let (srv, pki, _) = start_tls(true).await;
    let without = srv.http.get(format!("{}/healthz", srv.url)).send().await;
    assert!(without.is_err(), "handshake without a client certificate must fail");
    let with_cert = client(&pki, true);
    assert_eq!(with_cert.get(format!("{}/healthz", srv.url)).send().await.unwrap().status(), 200);
    srv.stop().await;
}
