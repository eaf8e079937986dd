//! A tower layer (usable with axum) that admits only requests with a valid Mayfly token.
//!
//! On success the [`Verified`] token is in the request's extensions; on failure the
//! client gets 401 (or 503) with a `WWW-Authenticate` challenge and a problem body.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, header};

use crate::verifier::{Presented, Verified, Verifier, VerifyError};

/// The TLS client certificate (DER) of the connection, for mTLS-bound tokens. The
/// server's TLS acceptor puts it into the request's extensions.
#[derive(Debug, Clone)]
pub struct ClientCertificate(pub Vec<u8>);

/// Wraps a service so that every request must carry a valid Mayfly token.
#[derive(Debug, Clone)]
pub struct RequireMayflyToken {
    verifier: Arc<Verifier>,
}

impl RequireMayflyToken {
    /// A layer verifying with `verifier`.
    pub fn new(verifier: Arc<Verifier>) -> Self {
        Self { verifier }
    }
}

impl<S> tower::Layer<S> for RequireMayflyToken {
    type Service = RequireMayflyTokenService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequireMayflyTokenService { inner, verifier: self.verifier.clone() }
    }
}

/// The service [`RequireMayflyToken`] builds.
#[derive(Debug, Clone)]
pub struct RequireMayflyTokenService<S> {
    inner: S,
    verifier: Arc<Verifier>,
}

/// The URL a client addressed, for DPoP `htu`: the configured public URL, else `Host`.
fn request_url<B>(verifier: &Verifier, req: &Request<B>) -> String {
    let path = req.uri().path();
    match &verifier.config().public_url {
        Some(base) => format!("{}{path}", base.trim_end_matches('/')),
        None => {
            let host = req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).unwrap_or("localhost");
            format!("http://{host}{path}")
        }
    }
}

fn refusal<B: Default>(e: &VerifyError) -> Response<B> {
    let mut resp = Response::new(B::default());
    *resp.status_mut() = e.status();
    if let Ok(v) = HeaderValue::from_str(&e.www_authenticate()) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    if let VerifyError::Dpop(d) = e
        && let Some(n) = d.nonce().and_then(|n| HeaderValue::from_str(n).ok())
    {
        resp.headers_mut().insert("dpop-nonce", n);
    }
    resp
}

impl<S, B, RB> tower::Service<Request<B>> for RequireMayflyTokenService<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    RB: Default + Send + 'static,
{
    type Response = Response<RB>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        let verifier = self.verifier.clone();
        // The clone that was made ready is the one that serves this request.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        // Owned copies: the request body need not be `Sync` to cross the await.
        let url = request_url(&verifier, &req);
        let text = |v: Option<&HeaderValue>| v.and_then(|v| v.to_str().ok()).map(str::to_owned);
        let authorization = text(req.headers().get(header::AUTHORIZATION));
        let dpop = text(req.headers().get("dpop"));
        let method = req.method().as_str().to_owned();
        let cert = req.extensions().get::<ClientCertificate>().map(|c| c.0.clone());
        Box::pin(async move {
            let presented = Presented {
                authorization: authorization.as_deref(),
                dpop: dpop.as_deref(),
                method: &method,
                url: &url,
                client_cert: cert.as_deref(),
            };
            let verified: Result<Verified, VerifyError> = verifier.verify(&presented).await;
            match verified {
                Ok(v) => {
                    req.extensions_mut().insert(v);
                    inner.call(req).await
                }
                Err(e) => {
                    tracing::debug!(reason = %e, "request refused");
                    Ok(refusal(&e))
                }
            }
        })
    }
}
