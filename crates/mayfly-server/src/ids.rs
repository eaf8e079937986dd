//! Random identifiers and secrets.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand::RngCore;

/// `n` random bytes (from the thread-local CSPRNG) as lowercase hex.
pub fn random_hex(n: usize) -> String {
    hex::encode(random_bytes(n))
}

/// `n` random bytes as unpadded base64url.
pub fn random_b64(n: usize) -> String {
    B64.encode(random_bytes(n))
}

/// `n` random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    buf
}

/// A time-ordered unique id: the millisecond timestamp as 12 hex digits (which sort
/// like the numbers they encode), then 96 random bits as base64url. Consecutive ids
/// land next to each other in a B-tree, so a batch of inserts touches a few pages
/// instead of one random page per row.
pub fn time_ordered_id() -> String {
    let ms = crate::clock::now_unix_ms().max(0) as u64 & 0xffff_ffff_ffff;
    format!("{ms:012x}{}", random_b64(12))
}
