//! Accepts TCP connections, optionally TLS (rustls, with optional client
//! certificates), and serves the router on each. The peer's address and TLS
//! client certificate reach handlers as a [`PeerInfo`] request extension.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower::util::MapRequest;

/// Who is on the other end of a connection.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The remote address.
    pub addr: SocketAddr,
    /// The TLS client certificate (leaf), when one was presented and verified.
    pub client_cert: Option<CertificateDer<'static>>,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("TLS: {0}")]
pub struct TlsSetupError(String);

/// Builds a rustls server configuration from PEM files.
pub fn tls_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    require_client_cert: bool,
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let e = |what: &str, p: &Path, err: &dyn std::fmt::Display| TlsSetupError(format!("{what} {}: {err}", p.display()));
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|err| e("cannot read certificate", cert, &err))?
        .collect::<Result<_, _>>()
        .map_err(|err| e("bad certificate PEM in", cert, &err))?;
    if certs.is_empty() {
        return Err(TlsSetupError(format!("no certificate in {}", cert.display())));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|err| e("cannot read private key", key, &err))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|err| TlsSetupError(err.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca).map_err(|err| e("cannot read client CA", ca, &err))? {
                let c = c.map_err(|err| e("bad client CA PEM in", ca, &err))?;
                roots.add(c).map_err(|err| e("bad client CA in", ca, &err))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().map_err(|err| TlsSetupError(err.to_string()))?)
        }
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key_der).map_err(|err| TlsSetupError(err.to_string()))?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains open connections (at most 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = auto::Builder::new(TokioExecutor::new());
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    tokio::pin!(shutdown);
    loop {
        let (stream, addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                    let peer = PeerInfo { addr, client_cert };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service(app, peer));
                    let _ = watcher.watch(conn.into_owned()).await;
                }
                None => {
                    let peer = PeerInfo { addr, client_cert: None };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service(app, peer));
                    let _ = watcher.watch(conn.into_owned()).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

fn service(
    app: Router,
    peer: PeerInfo,
) -> TowerToHyperService<MapRequest<Router, impl FnMut(hyper::Request<Incoming>) -> hyper::Request<Incoming> + Clone>> {
    TowerToHyperService::new(app.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(peer.clone());
        req
    }))
}
