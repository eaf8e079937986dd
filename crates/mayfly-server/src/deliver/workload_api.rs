//! The SPIFFE Workload API over gRPC on a unix socket, as `SPIFFE_Workload_Endpoint.md`
//! and `workloadapi.proto` specify it: every call needs the `workload.spiffe.io: true`
//! metadata, callers are identified by the kernel (peer credentials), streams carry the
//! full state in every message. Broker errors map to gRPC status codes here, once.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use mayfly_proto::workload::spiffe_workload_api_server::{SpiffeWorkloadApi, SpiffeWorkloadApiServer};
use mayfly_proto::workload::{
    JwtBundlesRequest, JwtBundlesResponse, Jwtsvid, JwtsvidRequest, JwtsvidResponse, ValidateJwtsvidRequest,
    ValidateJwtsvidResponse, X509BundlesRequest, X509BundlesResponse, X509svid, X509svidRequest, X509svidResponse,
};
use tokio::sync::{broadcast, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use crate::attest::unix::{PeerCredentials, UnixWorkload};
use crate::broker::svids::HeldX509Svid;
use crate::broker::{Broker, BrokerError};

/// Largest request message accepted (a JWT-SVID to validate is the largest legitimate one).
const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// Streams re-check their caller at least this often (entries, revocations, process liveness).
const RECHECK: Duration = Duration::from_secs(30);

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The Workload API service.
pub struct WorkloadApiService {
    broker: Arc<Broker>,
    stopping: watch::Receiver<bool>,
}

/// Why the socket could not be served.
#[derive(Debug, thiserror::Error)]
#[error("Workload API socket {path}: {cause}")]
pub struct SocketError {
    path: String,
    cause: String,
}

/// Binds the socket (replacing a stale one) and serves until `stopping` turns true.
pub fn serve(
    broker: Arc<Broker>,
    path: &Path,
    stopping: watch::Receiver<bool>,
) -> Result<tokio::task::JoinHandle<()>, SocketError> {
    let err = |cause: String| SocketError { path: path.display().to_string(), cause };
    {
        // Others must not be able to swap the socket for something else, before or after bind.
        use std::os::unix::fs::PermissionsExt;
        let parent = path.parent().ok_or_else(|| err("has no parent directory".into()))?;
        let mode = std::fs::metadata(parent).map_err(|e| err(format!("its directory: {e}")))?.permissions().mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(err(
                "its directory is writable by others (and not sticky); use a directory only Mayfly writes".into(),
            ));
        }
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(err("exists and is not a socket; refusing to replace it".into()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err("another server is listening on it".into()));
        }
        std::fs::remove_file(path).map_err(|e| err(e.to_string()))?;
    }
    let listener = tokio::net::UnixListener::bind(path).map_err(|e| err(e.to_string()))?;
    // Any local process may connect: who it is comes from the kernel, not from file permissions.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).map_err(|e| err(e.to_string()))?;
    }
    let service = SpiffeWorkloadApiServer::new(WorkloadApiService { broker, stopping: stopping.clone() })
        .max_decoding_message_size(MAX_REQUEST_BYTES);
    let incoming = tokio_stream::StreamExt::map(tokio_stream::wrappers::UnixListenerStream::new(listener), |conn| {
        conn.map(PeerStream::new)
    });
    let socket: PathBuf = path.to_owned();
    let bound = file_identity(path);
    let mut stop = stopping;
    Ok(tokio::spawn(async move {
        let result = tonic::transport::Server::builder()
            .concurrency_limit_per_connection(64)
            .http2_keepalive_interval(Some(Duration::from_secs(60)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "Workload API server failed");
        }
        // Only our own socket: a successor may already have bound the path.
        if bound.is_some() && file_identity(&socket) == bound {
            let _ = std::fs::remove_file(&socket);
        }
    }))
}

/// (device, inode) of the file at `path` itself (not a link's target).
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The SSRF guard of the specification: without it, `InvalidArgument` (and clients do not retry).
fn check_metadata<T>(req: &Request<T>) -> Result<(), Status> {
    match req.metadata().get("workload.spiffe.io").map(|v| v.to_str()) {
        Some(Ok("true")) => Ok(()),
        _ => Err(Status::invalid_argument("security header missing from request (workload.spiffe.io: true)")),
    }
}

fn peer_of<T>(req: &Request<T>) -> Result<PeerCredentials, Status> {
    let info = req.extensions().get::<PeerConnectInfo>();
    let cred = info
        .and_then(|i| i.cred)
        .ok_or_else(|| Status::permission_denied("the caller's process could not be identified"))?;
    Ok(PeerCredentials {
        pid: cred.pid().unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
        pidfd: info.and_then(|i| i.pidfd.clone()),
    })
}

/// A Workload API connection, with what the kernel said of its peer when it connected:
/// its credentials (`SO_PEERCRED`) and, where the kernel has it (Linux 6.5+), a pidfd of
/// the very process that connected (`SO_PEERPIDFD`).
struct PeerStream {
    inner: tokio::net::UnixStream,
    info: PeerConnectInfo,
}

/// What [`PeerStream`] hands to each request.
#[derive(Debug, Clone)]
struct PeerConnectInfo {
    cred: Option<tokio::net::unix::UCred>,
    pidfd: Option<Arc<std::os::fd::OwnedFd>>,
}

impl PeerStream {
    fn new(inner: tokio::net::UnixStream) -> Self {
        let pidfd = nix::sys::socket::getsockopt(&inner, nix::sys::socket::sockopt::PeerPidfd).ok().map(Arc::new);
        let info = PeerConnectInfo { cred: inner.peer_cred().ok(), pidfd };
        Self { inner, info }
    }
}

impl tonic::transport::server::Connected for PeerStream {
    type ConnectInfo = PeerConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.info.clone()
    }
}

impl tokio::io::AsyncRead for PeerStream {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for PeerStream {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The one mapping from broker errors to gRPC status codes.
fn status(e: BrokerError) -> Status {
    match e {
        BrokerError::Attest(e) => Status::permission_denied(e.to_string()),
        BrokerError::Denied(d) => Status::permission_denied(format!("denied by policy: {}", d.reason())),
        BrokerError::Forbidden(m) => Status::permission_denied(m.to_string()),
        BrokerError::Blocked(b) => Status::permission_denied(b.to_string()),
        e @ (BrokerError::InvalidTarget(_) | BrokerError::InvalidRequest(_) | BrokerError::InvalidScope(_)) => {
            Status::invalid_argument(e.to_string())
        }
        BrokerError::NotFound(m) => Status::not_found(m.to_string()),
        BrokerError::Unavailable(m) => Status::unavailable(m.to_string()),
        BrokerError::Ledger(e) => {
            tracing::error!(error = %e, "Workload API: issuance could not be recorded");
            Status::unavailable("the ledger is unavailable; nothing was issued, retry")
        }
        other => {
            tracing::error!(error = %other, "Workload API request failed");
            Status::internal("internal error")
        }
    }
}

fn no_identity() -> Status {
    Status::permission_denied("no identity issued: no registration entry matches this process")
}

impl WorkloadApiService {
    /// Checks the security header, then attests the caller.
    async fn attest<T>(&self, req: &Request<T>) -> Result<(PeerCredentials, UnixWorkload), Status> {
        check_metadata(req)?;
        self.attest_caller(req).await
    }

    /// Attests the caller (the security header already checked).
    async fn attest_caller<T>(&self, req: &Request<T>) -> Result<(PeerCredentials, UnixWorkload), Status> {
        let peer = peer_of(req)?;
        let w = self.broker.attest_local(peer.clone()).await.map_err(status)?;
        Ok((peer, w))
    }

    /// The bundles as `render` shows them, now and after every change, until the server stops.
    fn bundle_stream<T: Send + 'static>(
        &self,
        render: impl Fn(&crate::issue::svid::SvidAuthorities) -> T + Send + 'static,
    ) -> ResponseStream<T> {
        let authorities = self.broker.svid_authorities().clone();
        let mut changes = Changes::new(&self.broker, &self.stopping);
        Box::pin(async_stream::stream! {
            loop {
                yield Ok(render(&authorities));
                tokio::select! {
                    r = changes.bundles.changed() => if r.is_err() { break },
                    _ = changes.stopping.wait_for(|s| *s) => break,
                }
            }
        })
    }

    fn x509_response(&self, held: &[HeldX509Svid]) -> X509svidResponse {
        let bundle = self.broker.svid_authorities().x509_bundle();
        X509svidResponse {
            svids: held
                .iter()
                .map(|h| X509svid {
                    spiffe_id: h.entry.spec.spiffe_id.clone(),
                    x509_svid: h.svid.cert.clone(),
                    x509_svid_key: h.svid.key_pkcs8.clone(),
                    bundle: bundle.clone(),
                    hint: h.entry.spec.hint.clone().unwrap_or_default(),
                })
                .collect(),
            crl: Vec::new(),
            federated_bundles: Default::default(),
        }
    }
}

/// Waits for anything that can change what a stream should carry.
struct Changes {
    entries: watch::Receiver<u64>,
    bundles: watch::Receiver<u64>,
    revocations: broadcast::Receiver<crate::ledger::Revocation>,
    stopping: watch::Receiver<bool>,
}

impl Changes {
    fn new(broker: &Broker, stopping: &watch::Receiver<bool>) -> Self {
        Self {
            entries: broker.entries().subscribe(),
            bundles: broker.svid_authorities().subscribe(),
            revocations: broker.revocations().subscribe(),
            stopping: stopping.clone(),
        }
    }

    /// What woke the stream; `None` when it should end (server stopping).
    async fn next(&mut self, deadline: tokio::time::Instant) -> Option<Wake> {
        if *self.stopping.borrow() {
            return None;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => Some(Wake::Other),
            r = self.entries.changed() => r.is_ok().then_some(Wake::Other),
            r = self.bundles.changed() => r.is_ok().then_some(Wake::Other),
            r = self.revocations.recv() => match r {
                Ok(_) => Some(Wake::Revocation),
                // Missed some: look at everything again.
                Err(broadcast::error::RecvError::Lagged(_)) => Some(Wake::Other),
                Err(broadcast::error::RecvError::Closed) => None,
            },
            _ = self.stopping.wait_for(|s| *s) => None,
        }
    }
}

/// Why a stream woke up.
enum Wake {
    /// A revocation: only matters if it covers what the caller holds.
    Revocation,
    /// A timer, an entry or bundle change, or missed revocations.
    Other,
}

fn deadline_for(held: &[HeldX509Svid]) -> tokio::time::Instant {
    let now = crate::clock::now_unix();
    let next = held.iter().map(|h| h.rotate_at).min().unwrap_or(now).saturating_sub(now).max(0) as u64;
    tokio::time::Instant::now() + Duration::from_secs(next).min(RECHECK)
}

#[tonic::async_trait]
impl SpiffeWorkloadApi for WorkloadApiService {
    type FetchX509SVIDStream = ResponseStream<X509svidResponse>;
    type FetchX509BundlesStream = ResponseStream<X509BundlesResponse>;
    type FetchJWTBundlesStream = ResponseStream<JwtBundlesResponse>;

    async fn fetch_x509svid(
        &self,
        req: Request<X509svidRequest>,
    ) -> Result<Response<Self::FetchX509SVIDStream>, Status> {
        let (peer, mut w) = self.attest(&req).await?;
        let mut changes = Changes::new(&self.broker, &self.stopping);
        // Marked seen before the first answer is built: a rotation after this point is pushed.
        let mut bundle_version = *changes.bundles.borrow_and_update();
        let mut held = self.broker.x509_svids(&w, &[]).await.map_err(status)?;
        if held.is_empty() {
            return Err(no_identity());
        }
        let first = self.x509_response(&held);
        let this = WorkloadApiService { broker: self.broker.clone(), stopping: self.stopping.clone() };
        let stream = async_stream::stream! {
            yield Ok(first);
            while let Some(wake) = changes.next(deadline_for(&held)).await {
                if matches!(wake, Wake::Revocation)
                    && !held.iter().any(|h| this.broker.x509_svid_revoked(h)
                        || this.broker.revocations().names_subject(&h.entry.spec.spiffe_id))
                {
                    continue;
                }
                // Re-attested at every renewal: the stream stays with the process it attested,
                // as long as it runs the same executable under the same user and group; if not,
                // it ends. The hash is not re-read, so a binary replaced on disk by an upgrade
                // does not cost a running service its identity.
                if let Err(changed) = crate::attest::unix::still_the_same(&w) {
                    yield Err(Status::permission_denied(changed));
                    break;
                }
                if w.sha256.is_none() && this.broker.entries().uses_selector("sha256") {
                    match this.broker.attest_local(peer.clone()).await {
                        Ok(again) if again.started == w.started => w = again,
                        Ok(_) => { yield Err(Status::permission_denied("the calling process has exited")); break; }
                        Err(e) => { yield Err(status(e)); break; }
                    }
                }
                let next = match this.broker.x509_svids(&w, &held).await {
                    Ok(n) => n,
                    Err(e) => { yield Err(status(e)); break; }
                };
                if next.is_empty() {
                    yield Err(no_identity());
                    break;
                }
                let same = next.len() == held.len()
                    && next.iter().zip(&held).all(|(a, b)| a.svid.serial == b.svid.serial);
                let version = *changes.bundles.borrow();
                held = next;
                if same && version == bundle_version {
                    continue;
                }
                bundle_version = version;
                yield Ok(this.x509_response(&held));
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn fetch_x509_bundles(
        &self,
        req: Request<X509BundlesRequest>,
    ) -> Result<Response<Self::FetchX509BundlesStream>, Status> {
        self.attest(&req).await?;
        Ok(Response::new(self.bundle_stream(|a| X509BundlesResponse {
            crl: Vec::new(),
            bundles: [(a.trust_domain_id(), a.x509_bundle())].into_iter().collect(),
        })))
    }

    async fn fetch_jwtsvid(&self, req: Request<JwtsvidRequest>) -> Result<Response<JwtsvidResponse>, Status> {
        check_metadata(&req)?;
        if req.get_ref().audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        let (_, w) = self.attest_caller(&req).await?;
        let r = req.get_ref();
        let wanted = (!r.spiffe_id.is_empty()).then_some(r.spiffe_id.as_str());
        let svids = self.broker.jwt_svids(&w, &r.audience, wanted).await.map_err(status)?;
        if svids.is_empty() {
            return Err(match wanted {
                Some(id) => {
                    Status::permission_denied(format!("no identity issued: this process is not entitled to {id}"))
                }
                None => no_identity(),
            });
        }
        let svids = svids
            .into_iter()
            .map(|s| Jwtsvid { spiffe_id: s.spiffe_id, svid: s.svid.token, hint: s.hint.unwrap_or_default() })
            .collect();
        Ok(Response::new(JwtsvidResponse { svids }))
    }

    async fn fetch_jwt_bundles(
        &self,
        req: Request<JwtBundlesRequest>,
    ) -> Result<Response<Self::FetchJWTBundlesStream>, Status> {
        self.attest(&req).await?;
        Ok(Response::new(self.bundle_stream(|a| JwtBundlesResponse {
            bundles:
                [(a.trust_domain_id(), serde_json::to_vec(&a.jwt_bundle()).unwrap_or_default())].into_iter().collect(),
        })))
    }

    async fn validate_jwtsvid(
        &self,
        req: Request<ValidateJwtsvidRequest>,
    ) -> Result<Response<ValidateJwtsvidResponse>, Status> {
        check_metadata(&req)?;
        let r = req.get_ref();
        if r.audience.is_empty() {
            return Err(Status::invalid_argument("audience must be specified"));
        }
        if r.svid.is_empty() {
            return Err(Status::invalid_argument("svid must be specified"));
        }
        self.attest_caller(&req).await?;
        let (spiffe_id, claims) = self.broker.validate_jwt_svid(&r.svid, &r.audience).map_err(status)?;
        Ok(Response::new(ValidateJwtsvidResponse { spiffe_id, claims: Some(to_struct(claims)) }))
    }
}

fn to_struct(map: serde_json::Map<String, serde_json::Value>) -> prost_types::Struct {
    prost_types::Struct { fields: map.into_iter().map(|(k, v)| (k, to_value(v))).collect() }
}

fn to_value(v: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => {
            Kind::ListValue(prost_types::ListValue { values: a.into_iter().map(to_value).collect() })
        }
        serde_json::Value::Object(o) => Kind::StructValue(to_struct(o)),
    };
    prost_types::Value { kind: Some(kind) }
}
