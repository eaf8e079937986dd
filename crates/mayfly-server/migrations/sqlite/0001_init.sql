-- Mayfly's embedded state. Times are Unix seconds unless named *_ms.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
);

-- Signing keys; private keys are sealed under the key-encryption key.
CREATE TABLE signing_keys (
    kid                TEXT PRIMARY KEY,
    alg                TEXT NOT NULL,
    sealed_private_key BLOB NOT NULL,
    created_at         INTEGER NOT NULL,
    retired_at         INTEGER,
    published_until    INTEGER
);

-- Admin API tokens, stored as SHA-256 hashes.
CREATE TABLE admin_tokens (
    token_hash TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One-time join tokens, stored as SHA-256 hashes.
CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    spiffe_path TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
);

-- Every issued credential, written before it is delivered. No secret value is stored:
-- `fingerprint` is a keyed HMAC of the credential.
CREATE TABLE credentials (
    jti         TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL,
    audience    TEXT NOT NULL,
    scope       TEXT NOT NULL,
    task_id     TEXT,
    client_id   TEXT NOT NULL,
    issued_at   INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    key_id      TEXT NOT NULL,
    binding     TEXT,
    fingerprint TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX credentials_subject ON credentials (subject);
CREATE INDEX credentials_expires ON credentials (expires_at);

-- Append-only audit trail; each event's hash covers the previous event's hash.
CREATE TABLE audit_events (
    seq       INTEGER PRIMARY KEY,
    ts_ms     INTEGER NOT NULL,
    kind      TEXT NOT NULL,
    subject   TEXT,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
-- No secondary indexes: every index is written on the issuance path, while audit
-- reads (by time, subject or kind) are rare operator queries that can scan.

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;
