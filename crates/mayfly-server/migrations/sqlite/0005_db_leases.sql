-- Dynamic database credentials. A lease is written (state 'creating') before the user
-- exists, so a crash leaves a record the reconciler finishes or undoes on start.
CREATE TABLE db_leases (
    id              TEXT PRIMARY KEY,
    issuer          TEXT NOT NULL,
    role            TEXT NOT NULL,
    username        TEXT NOT NULL,
    subject         TEXT NOT NULL,
    task_id         TEXT,
    created_at      INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    max_expires_at  INTEGER NOT NULL,
    state           TEXT NOT NULL,    -- creating | active | revoking | revoked | expired | failed
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    last_error      TEXT,
    ended_at        INTEGER,
    end_reason      TEXT              -- expired | revoked (selector) | admin
);
CREATE INDEX db_leases_open ON db_leases (state) WHERE state IN ('creating', 'active', 'revoking');
CREATE INDEX db_leases_username ON db_leases (issuer, username);
