//! Accepts TCP connections, optionally TLS (rustls, with optional client
//! certificates), and serves the router on each. The peer's address and TLS
//! client certificate reach handlers as a [`PeerInfo`] request extension.
//!
//! The edge holds under abuse ([`Limits`]): a bounded number of connections, a deadline for
//! the TLS handshake and for each request head, idle connections closed, a deadline for each
//! response head, and the same head-size and header-count limits on HTTP/1 and HTTP/2.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::response::IntoResponse;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use tower::ServiceExt;

use crate::deliver::config::ListenConfig;
use crate::deliver::http::ApiError;

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

/// What one client may hold of the listener. `[listen]` in the config sets them.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Deadline for the TLS handshake, and then for each request head (from the connection's
    /// start, or for HTTP/1 from the end of the previous response).
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no byte moving either way is closed after this.
    pub idle_timeout: Duration,
    /// Deadline from a complete request head to the response head (reading the body included).
    pub request_timeout: Duration,
    /// Connections served at once; further ones wait in the kernel's accept queue.
    pub max_connections: usize,
    /// Connections one client address may hold at once; past it, new ones are closed.
    pub max_connections_per_ip: usize,
    /// Largest request head in bytes.
    pub max_header_bytes: usize,
    /// Most header fields in one request.
    pub max_headers: usize,
    /// How the listener's own refusals (too many header fields, a request past its deadline)
    /// are written: a problem document by default; the Vault-compatible listener writes
    /// Vault's `{"errors": [...]}`.
    pub render: fn(ApiError) -> axum::response::Response,
}

impl From<&ListenConfig> for Limits {
    fn from(l: &ListenConfig) -> Self {
        Self {
            header_read_timeout: l.header_read_timeout,
            idle_timeout: l.idle_timeout,
            request_timeout: l.request_timeout,
            max_connections: l.max_connections,
            max_connections_per_ip: l.max_connections_per_ip,
            max_header_bytes: l.max_header_bytes,
            max_headers: l.max_headers,
            render: |e| e.into_response(),
        }
    }
}

/// A response still streaming (the revocation stream sends a comment every 15 s) is cut only
/// when nothing moved for this long, or the idle timeout if that is longer: a client that
/// stopped reading does not hold its connection for ever, one that reads is never cut.
const STREAM_STALL_MIN: Duration = Duration::from_secs(60);

/// hyper's HTTP/1 default header-field count; setting it explicitly moves the parser's
/// header array from the stack to the heap, so it is set only when it differs.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper refuses (panics on) an HTTP/1 read buffer below this.
const HYPER_MIN_BUF: usize = 8 * 1024;

/// Serves `app` on `listener` until `shutdown` resolves, then drains open connections (at most 10 s).
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) {
    let graceful = GracefulShutdown::new();
    let builder = http_builder(&limits);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let slots = Arc::new(Semaphore::new(limits.max_connections.clamp(1, Semaphore::MAX_PERMITS)));
    let per_ip = super::quota::Quota::new(limits.max_connections_per_ip);
    let limits = Arc::new(limits);
    let mut warned_full: Option<Instant> = None;
    let mut warned_ip: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        // A slot before accepting: at the limit, new connections wait in the kernel's queue
        // (bounded by its backlog) instead of each costing a task and buffers here.
        let slot = match slots.clone().try_acquire_owned() {
            Ok(s) => s,
            Err(_) => {
                if warned_full.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                    tracing::warn!(max = limits.max_connections, "connection limit reached; new connections wait");
                    warned_full = Some(Instant::now());
                }
                tokio::select! {
                    s = slots.clone().acquire_owned() => match s {
                        Ok(s) => s,
                        Err(_) => break,
                    },
                    _ = &mut shutdown => break,
                }
            }
        };
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
        // One client address cannot hold every slot.
        let Some(per_ip) = per_ip.take(addr.ip()) else {
            if warned_ip.is_none_or(|t| t.elapsed() > Duration::from_secs(60)) {
                tracing::warn!(ip = %addr.ip(), max = limits.max_connections_per_ip,
                               "a client holds as many connections as one may; closing its new ones");
                warned_ip = Some(Instant::now());
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let builder = builder.clone();
        let acceptor = acceptor.clone();
        let limits = limits.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let _per_ip = per_ip;
            match acceptor {
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%addr, "TLS handshake not completed in time");
                            return;
                        }
                    };
                    let client_cert = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned());
                    let peer = PeerInfo { addr, client_cert };
                    serve_connection(tls, &builder, watcher, ConnParts { app, peer, limits }).await;
                }
                None => {
                    let peer = PeerInfo { addr, client_cert: None };
                    serve_connection(stream, &builder, watcher, ConnParts { app, peer, limits }).await;
                }
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after 10 s; closing them");
    }
}

/// HTTP/1 and HTTP/2 with the same head limits; hyper's own timer runs the HTTP/1 head deadline.
fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    let head_bytes = limits.max_header_bytes.max(HYPER_MIN_BUF);
    // An HTTP/1 head that does not fit the read buffer is answered with 431 and the
    // connection closed (hyper-util's builder does not expose hyper's max_header_size).
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).max_buf_size(head_bytes);
    if limits.max_headers != HYPER_DEFAULT_MAX_HEADERS {
        builder.http1().max_headers(limits.max_headers);
    }
    // HTTP/2 answers an oversized header list with 431 and resets the stream; the field
    // count is checked per request in ConnService (h2 has no such limit).
    builder.http2().max_header_list_size(u32::try_from(head_bytes).unwrap_or(u32::MAX));
    builder
}

/// What a connection is served with, besides its IO.
struct ConnParts {
    app: Router,
    peer: PeerInfo,
    limits: Arc<Limits>,
}

/// Serves one connection (plain or TLS) until it ends, or until [`Activity::expired`] says it
/// has had its time.
async fn serve_connection<T>(
    io: T,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
    ConnParts { app, peer, limits }: ConnParts,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let addr = peer.addr;
    let activity = Activity::new();
    let io = TokioIo::new(Tracked { inner: io, activity: activity.clone() });
    let service = ConnService { app, peer, activity: activity.clone(), limits: limits.clone() };
    let conn = watcher.watch(builder.serve_connection_with_upgrades(io, service));
    tokio::select! {
        _ = conn => {}
        why = activity.expired(&limits) => {
            // Dropping the connection closes the socket.
            tracing::debug!(%addr, why, "closing connection");
        }
    }
}

/// One connection's traffic and requests, shared by its IO, its service and its watchdog.
struct Activity {
    /// When the connection started (after the TLS handshake).
    start: Instant,
    /// Milliseconds from `start` to the last byte read or written.
    last_ms: AtomicU64,
    /// Whether a request head has arrived yet.
    served: AtomicBool,
    /// Requests waiting for their response head (bounded by the request timeout).
    pending: AtomicUsize,
    /// Response bodies still being sent.
    streaming: AtomicUsize,
    /// Set while the watchdog waits with no deadline or a long one: only then does the end of
    /// a request wake it (a busy connection costs no wake-ups; the deadline is re-checked).
    wants_news: AtomicBool,
    /// Wakes the watchdog.
    changed: Notify,
}

/// Why the watchdog closes a connection, and when.
enum Deadline {
    /// No request head yet.
    Head(Instant),
    /// Nothing in progress: the idle timeout from the last byte.
    Idle(Instant),
    /// A response body is being sent: the stall limit from the last byte.
    Stalled(Instant),
    /// A request waits for its response head: the request timeout answers it.
    None,
}

impl Activity {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            served: AtomicBool::new(false),
            pending: AtomicUsize::new(0),
            streaming: AtomicUsize::new(0),
            wants_news: AtomicBool::new(false),
            changed: Notify::new(),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    fn deadline(&self, limits: &Limits) -> Deadline {
        let last = self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        if !self.served.load(Ordering::SeqCst) {
            // HTTP/1 heads have hyper's own deadline too; this one also covers a client that
            // sends nothing, or only part of the HTTP/2 preface or of a HEADERS frame.
            Deadline::Head(self.start + limits.header_read_timeout)
        } else if self.pending.load(Ordering::SeqCst) > 0 {
            Deadline::None
        } else if self.streaming.load(Ordering::SeqCst) > 0 {
            Deadline::Stalled(last + limits.idle_timeout.max(STREAM_STALL_MIN))
        } else {
            Deadline::Idle(last + limits.idle_timeout)
        }
    }

    /// Resolves when the connection has gone without a request head, or silent, for too long.
    async fn expired(&self, limits: &Limits) -> &'static str {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            // Set before the counters are read, and a request's end reads it after changing
            // them (both SeqCst): either we see the change or it sees the flag and wakes us.
            self.wants_news.store(true, Ordering::SeqCst);
            let (at, why) = match self.deadline(limits) {
                Deadline::None => {
                    changed.await;
                    continue;
                }
                Deadline::Stalled(at) => (at, "response stalled"),
                // The first request's end may bring the idle deadline before this one.
                Deadline::Head(at) => (at, "no request head within header_read_timeout"),
                Deadline::Idle(at) => {
                    // Only a later deadline can follow (bytes move, a request comes and goes):
                    // re-checked when due.
                    self.wants_news.store(false, Ordering::SeqCst);
                    (at, "idle")
                }
            };
            if Instant::now() >= at {
                return why;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {}
                _ = changed => {}
            }
        }
    }

    /// Tells the watchdog a request moved on, when it is waiting for that.
    fn moved_on(&self) {
        if self.wants_news.load(Ordering::SeqCst) {
            self.changed.notify_one();
        }
    }
}

/// The connection's IO, noting when bytes move.
struct Tracked<T> {
    inner: T,
    activity: Arc<Activity>,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Counts one request from its head to the end of its response body.
struct InFlight {
    activity: Arc<Activity>,
    streaming: bool,
}

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.pending.fetch_add(1, Ordering::SeqCst);
        activity.served.store(true, Ordering::SeqCst);
        Self { activity, streaming: false }
    }

    /// The response head is out; its body follows.
    fn streaming(mut self) -> Self {
        // Counted as streaming before it stops pending: the watchdog never sees neither.
        self.activity.streaming.fetch_add(1, Ordering::SeqCst);
        self.activity.pending.fetch_sub(1, Ordering::SeqCst);
        self.streaming = true;
        self.activity.moved_on();
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let counter = if self.streaming { &self.activity.streaming } else { &self.activity.pending };
        counter.fetch_sub(1, Ordering::SeqCst);
        self.activity.moved_on();
    }
}

/// A response body that keeps its request counted until it is sent or dropped.
struct CountedBody {
    inner: Body,
    _in_flight: InFlight,
}

impl hyper::body::Body for CountedBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The router as one connection serves it: the peer attached, the header-field count checked,
/// the response head due within the request timeout, every request counted for the watchdog.
#[derive(Clone)]
struct ConnService {
    app: Router,
    peer: PeerInfo,
    activity: Arc<Activity>,
    limits: Arc<Limits>,
}

impl hyper::service::Service<hyper::Request<Incoming>> for ConnService {
    type Response = hyper::Response<CountedBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, mut req: hyper::Request<Incoming>) -> Self::Future {
        let in_flight = InFlight::start(self.activity.clone());
        req.extensions_mut().insert(self.peer.clone());
        // hyper counts HTTP/1 header fields itself; h2 only bounds their total size.
        let too_many = req.headers().len() > self.limits.max_headers;
        let (app, limits) = (self.app.clone(), self.limits.clone());
        Box::pin(async move {
            let resp = if too_many {
                (limits.render)(ApiError::HeaderFieldsTooLarge(limits.max_headers))
            } else {
                // The body is read inside the handler, so a slow upload is cut here too; a
                // streaming response body is not (it is sent after the head).
                match tokio::time::timeout(limits.request_timeout, app.oneshot(req)).await {
                    Ok(Ok(resp)) => resp,
                    Ok(Err(never)) => match never {},
                    Err(_) => (limits.render)(ApiError::RequestTimeout(limits.request_timeout)),
                }
            };
            let in_flight = in_flight.streaming();
            Ok(resp.map(|inner| CountedBody { inner, _in_flight: in_flight }))
        })
    }
}
