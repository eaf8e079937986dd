-- Revocations are selectors, not per-token rows: revoking a subject with 100,000
-- live tokens writes one row. `seq` is the feed cursor (AUTOINCREMENT: never reused,
-- so a cursor never points backwards after garbage collection).
CREATE TABLE revocations (
    seq           INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT NOT NULL,    -- jti | subject | subject_prefix | audience | task | issued_before
    value         TEXT NOT NULL,
    issued_before INTEGER NOT NULL, -- covers credentials issued at or before this time
    revoked_at    INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL, -- everything it covers has expired by then: it can be dropped
    reason        TEXT
);
CREATE INDEX revocations_expires ON revocations (expires_at);
