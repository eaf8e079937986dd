//! Delivery's configuration: the listener and its limits, DPoP at the token endpoint.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// DPoP settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DpopConfig {
    /// How old a proof may be (default 60s); each proof is accepted once within that window.
    #[serde(default = "crate::clock::secs::<60>", with = "humantime_serde")]
    pub max_age: Duration,
    /// Require a server nonce in proofs (RFC 9449 §8); clients learn it from `DPoP-Nonce`.
    #[serde(default)]
    pub require_nonce: bool,
    /// How often the server nonce changes (default 5m; the previous one stays valid).
    #[serde(default = "crate::clock::secs::<300>", with = "humantime_serde")]
    pub nonce_period: Duration,
}

impl Default for DpopConfig {
    fn default() -> Self {
        Self { max_age: crate::clock::secs::<60>(), require_nonce: false, nonce_period: crate::clock::secs::<300>() }
    }
}

/// Listener settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address to listen on, e.g. `127.0.0.1:8443`.
    pub addr: SocketAddr,
    /// PEM certificate chain for TLS.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: when set, clients may present certificates signed by it.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: reject clients without a certificate.
    #[serde(default)]
    pub require_client_cert: bool,
    /// Serve plain HTTP on a non-loopback address. Tokens then cross the network in clear text.
    #[serde(default)]
    pub dangerously_allow_plaintext: bool,
    /// A connection must complete its TLS handshake, and then send a whole request head, within
    /// this time each (default 10s); an HTTP/1 keep-alive connection waits this long for its next head.
    #[serde(default = "crate::clock::secs::<10>", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A connection with no request in progress and no byte moving either way for this long is
    /// closed (default 60s). A streaming response (the revocation stream) is cut only after
    /// nothing moved for this or 60s, whichever is longer.
    #[serde(default = "crate::clock::secs::<60>", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Longest time from a complete request head to the response head, reading the body
    /// included (default 30s); the client then gets 408. Streaming bodies are not cut by it.
    #[serde(default = "crate::clock::secs::<30>", with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most connections served at once (default 4096); further ones wait in the kernel's accept queue.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most connections one client address holds at once (default 256): one client cannot
    /// take every slot of `max_connections`. Past it, its new connections are closed at once.
    #[serde(default = "default_max_connections_per_ip")]
    pub max_connections_per_ip: usize,
    /// Largest request head (request line and header fields) in bytes, HTTP/1 and HTTP/2
    /// (default 32768: room for a 16 KiB bearer token or DPoP proof; 8192 to 1048576).
    /// Larger heads get 431 (HTTP/2 may reset the connection instead).
    #[serde(default = "default_max_header_bytes")]
    pub max_header_bytes: usize,
    /// Most header fields in one request, HTTP/1 and HTTP/2 (default 100). More get 431.
    #[serde(default = "default_max_headers")]
    pub max_headers: usize,
}

impl ListenConfig {
    /// Plain HTTP on `addr` with every limit at its default.
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            require_client_cert: false,
            dangerously_allow_plaintext: false,
            header_read_timeout: crate::clock::secs::<10>(),
            idle_timeout: crate::clock::secs::<60>(),
            request_timeout: crate::clock::secs::<30>(),
            max_connections: default_max_connections(),
            max_connections_per_ip: default_max_connections_per_ip(),
            max_header_bytes: default_max_header_bytes(),
            max_headers: default_max_headers(),
        }
    }
}

fn default_max_connections_per_ip() -> usize {
    256
}

fn default_max_connections() -> usize {
    4096
}

fn default_max_header_bytes() -> usize {
    32 * 1024
}

fn default_max_headers() -> usize {
    100
}
