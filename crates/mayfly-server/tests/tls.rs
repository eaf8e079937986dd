//! The rustls listener, with and without client certificates.

use mayfly_testkit::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use serde_json::Value;

struct Pki {
    ca_pem: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
    client_der: Vec<u8>,
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
        client_der: client.der().to_vec(),
    }
}

async fn start_tls(require_client: bool) -> (TestServer, Pki, TestIssuer) {
    let (k8s, gh) = (TestIssuer::new(K8S_ISSUER), TestIssuer::new(GITHUB_TEST_ISSUER));
    let pki = pki();
    let config = TestConfig::standard(&k8s, &gh)
        .file("server.pem", &pki.server_cert)
        .file("server.key", &pki.server_key)
        .file("ca.pem", &pki.ca_pem)
        .set(
            "listen",
            &format!(
                "tls_cert = \"server.pem\"\ntls_key = \"server.key\"\nclient_ca = \"ca.pem\"\nrequire_client_cert = {require_client}"
            ),
        );
    let mut srv = TestServer::start_with(config).await;
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

#[tokio::test]
async fn a_client_certificate_binds_the_token_to_it() {
    let (mut srv, pki, k8s) = start_tls(false).await;
    srv.http = client(&pki, true);
    let r = srv.exchange_jwt(&k8s.k8s_token("prod", "web"), "https://api.test").await;
    assert_eq!(r.status(), 200);
    let token = r.json::<Value>().await.unwrap()["access_token"].as_str().unwrap().to_owned();
    let claims = srv.verify(&token, "https://api.test").await;
    let expected = {
        use base64::Engine;
        use sha2::Digest;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(&pki.client_der))
    };
    assert_eq!(claims["cnf"]["x5t#S256"], expected, "RFC 8705 thumbprint of the client certificate");

    // The SDK accepts it only from a connection that presented that certificate.
    let mut cfg = mayfly_verify::VerifierConfig::new(srv.url.clone(), "https://api.test");
    cfg.http = client(&pki, false);
    let verifier = mayfly_verify::Verifier::new(cfg).await.unwrap();
    let auth = format!("Bearer {token}");
    let ok = verifier.verify(&presented(&auth, Some(&pki.client_der))).await.unwrap();
    assert_eq!(ok.binding, mayfly_verify::Binding::Certificate(expected));
    let other = self::pki().client_der;
    let refused = verifier.verify(&presented(&auth, Some(&other))).await;
    assert!(matches!(refused, Err(mayfly_verify::VerifyError::CertificateMismatch)));
    let refused = verifier.verify(&presented(&auth, None)).await;
    assert!(matches!(refused, Err(mayfly_verify::VerifyError::CertificateMismatch)));
    srv.stop().await;
}

fn presented<'a>(authorization: &'a str, client_cert: Option<&'a [u8]>) -> mayfly_verify::Presented<'a> {
    mayfly_verify::Presented {
        authorization: Some(authorization),
        dpop: None,
        method: "GET",
        url: "https://api.test/x",
        client_cert,
    }
}
