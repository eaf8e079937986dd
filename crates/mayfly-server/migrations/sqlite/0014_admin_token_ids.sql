-- Several named admin tokens, each revocable by a non-secret id. The table is rebuilt
-- (SQLite cannot add a NOT NULL column without a default): an id for each existing
-- token, names unique, and when each was last used (to within a minute).
CREATE TABLE admin_tokens_v2 (
    id           TEXT NOT NULL UNIQUE,
    token_hash   TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    created_at   INTEGER NOT NULL,
    last_used_at INTEGER
);
-- A name held twice (never made by Mayfly, but the old table allowed it) keeps the
-- oldest as it is; the others get a suffix.
INSERT INTO admin_tokens_v2 (id, token_hash, name, created_at)
SELECT lower(hex(randomblob(8))), token_hash,
       CASE WHEN EXISTS (SELECT 1 FROM admin_tokens o WHERE o.name = t.name AND o.rowid < t.rowid)
            THEN t.name || '-' || t.rowid ELSE t.name END,
       created_at
FROM admin_tokens t;
DROP TABLE admin_tokens;
ALTER TABLE admin_tokens_v2 RENAME TO admin_tokens;
