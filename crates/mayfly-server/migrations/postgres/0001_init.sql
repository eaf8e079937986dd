-- Mayfly's shared state on PostgreSQL: the same tables as the SQLite ledger (see
-- migrations/sqlite), for several replicas at once. Times are Unix seconds unless named *_ms.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);

-- Signing keys; private keys are sealed under the key-encryption key.
CREATE TABLE signing_keys (
    kid                TEXT PRIMARY KEY,
    alg                TEXT NOT NULL,
    sealed_private_key BYTEA NOT NULL,
    created_at         BIGINT NOT NULL,
    retired_at         BIGINT,
    published_until    BIGINT
);
-- At most one key signs: two replicas starting on an empty database cannot both create one.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;

CREATE TABLE admin_tokens (
    token_hash TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE join_tokens (
    id          TEXT PRIMARY KEY,
    token_hash  TEXT NOT NULL UNIQUE,
    spiffe_path TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);

-- Every issued credential, written before it is delivered; never the credential itself.
CREATE TABLE credentials (
    jti         TEXT PRIMARY KEY COLLATE "C",
    kind        TEXT NOT NULL,
    subject     TEXT NOT NULL COLLATE "C",
    audience    TEXT NOT NULL,
    scope       TEXT NOT NULL,
    task_id     TEXT,
    client_id   TEXT NOT NULL,
    issued_at   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    key_id      TEXT NOT NULL,
    binding     TEXT,
    fingerprint TEXT NOT NULL,
    max_uses    BIGINT,
    uses        BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX credentials_subject ON credentials (subject);
CREATE INDEX credentials_expires ON credentials (expires_at);
CREATE INDEX credentials_task ON credentials (task_id) WHERE task_id IS NOT NULL;

-- Append-only audit trail, one hash chain for every replica: appends serialise on the
-- row of ledger_heads (see below), so the chain stays linear under concurrent writers.
CREATE TABLE audit_events (
    seq       BIGINT PRIMARY KEY,
    ts_ms     BIGINT NOT NULL,
    kind      TEXT NOT NULL,
    subject   TEXT,
    detail    TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash      TEXT NOT NULL
);
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_events is append-only'; END $$;
CREATE TRIGGER audit_events_no_change BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Revocations are selectors; `seq` is the feed cursor, never reused.
CREATE TABLE revocations (
    seq           BIGINT PRIMARY KEY,
    kind          TEXT NOT NULL,
    value         TEXT NOT NULL,
    issued_before BIGINT NOT NULL,
    revoked_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    reason        TEXT
);
CREATE INDEX revocations_expires ON revocations (expires_at);

-- The heads of the audit chain and of the revocation cursor. A group commit locks this
-- row, places its events after the chain's head and numbers its revocations, then moves
-- the heads: the lock is held from there to the commit only.
CREATE TABLE ledger_heads (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    audit_seq      BIGINT NOT NULL,
    audit_hash     TEXT NOT NULL,
    revocation_seq BIGINT NOT NULL
);
INSERT INTO ledger_heads VALUES (1, 0, '0000000000000000000000000000000000000000000000000000000000000000', 0);

CREATE TABLE tasks (
    id                TEXT PRIMARY KEY COLLATE "C",
    parent_id         TEXT,
    path              TEXT NOT NULL COLLATE "C",
    depth             BIGINT NOT NULL,
    creator           TEXT NOT NULL,
    on_behalf_of      TEXT,
    actor             TEXT NOT NULL,
    attributes        TEXT NOT NULL,
    purpose           TEXT NOT NULL,
    scope             TEXT NOT NULL,
    audiences         TEXT,
    created_at        BIGINT NOT NULL,
    expires_at        BIGINT NOT NULL,
    state             TEXT NOT NULL,
    approval_deadline BIGINT,
    decided_by        TEXT,
    decided_at        BIGINT,
    ended_at          BIGINT,
    end_reason        TEXT
);
CREATE INDEX tasks_path ON tasks (path);
CREATE INDEX tasks_creator ON tasks (creator);
CREATE INDEX tasks_live_expiry ON tasks (expires_at) WHERE state IN ('pending', 'active');

CREATE TABLE db_leases (
    id              TEXT PRIMARY KEY COLLATE "C",
    issuer          TEXT NOT NULL,
    role            TEXT NOT NULL,
    username        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    task_id         TEXT,
    created_at      BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    max_expires_at  BIGINT NOT NULL,
    state           TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT,
    last_error      TEXT,
    ended_at        BIGINT,
    end_reason      TEXT
);
CREATE INDEX db_leases_open ON db_leases (state) WHERE state IN ('creating', 'active', 'revoking');
CREATE INDEX db_leases_username ON db_leases (issuer, username);

CREATE TABLE svid_authorities (
    id              TEXT PRIMARY KEY,
    ca_cert         BYTEA NOT NULL,
    sealed_ca_key   BYTEA NOT NULL,
    sealed_jwt_key  BYTEA NOT NULL,
    created_at      BIGINT NOT NULL,
    not_after       BIGINT NOT NULL,
    retired_at      BIGINT,
    published_until BIGINT
);
CREATE UNIQUE INDEX svid_authorities_one_active ON svid_authorities ((retired_at IS NULL)) WHERE retired_at IS NULL;

CREATE TABLE workload_entries (
    id         TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- Every replica LISTENs on mayfly_changes: what changed reaches them at commit, not at
-- their next poll (which still runs, for a notification missed while reconnecting).
CREATE FUNCTION mayfly_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_notify('mayfly_changes', TG_ARGV[0]); RETURN NULL; END $$;
CREATE TRIGGER revocations_announce AFTER INSERT ON revocations
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_announce('revocations');
CREATE TRIGGER signing_keys_announce AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_announce('signing_keys');
CREATE TRIGGER svid_authorities_announce AFTER INSERT OR UPDATE OR DELETE ON svid_authorities
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_announce('svid_authorities');
CREATE TRIGGER workload_entries_announce AFTER INSERT OR UPDATE OR DELETE ON workload_entries
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_announce('entries');
