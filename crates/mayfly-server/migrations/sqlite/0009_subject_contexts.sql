-- What context-change signals said about a workload (by SPIFFE ID): applied over the
-- attributes of its later requests until it expires.
CREATE TABLE subject_contexts (
    subject    TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,   -- JSON object of strings
    updated_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
