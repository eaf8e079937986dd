-- Tasks: runtime identities that live for one job (spiffe://<td>/task/<id>).
-- Rows change state (pending → active → ended); the audit trail keeps the history.
CREATE TABLE tasks (
    id                TEXT PRIMARY KEY,
    parent_id         TEXT,
    path              TEXT NOT NULL,   -- ancestor ids then its own, joined by '/': a subtree is a range
    depth             INTEGER NOT NULL, -- 1 for a task without a parent
    creator           TEXT NOT NULL,   -- SPIFFE ID of the workload or parent task that created it
    on_behalf_of      TEXT,
    actor             TEXT NOT NULL,   -- RFC 8693 `act` claim (JSON) carried by its credentials
    attributes        TEXT NOT NULL,   -- the creator's attested attributes (JSON), for policy
    purpose           TEXT NOT NULL,
    scope             TEXT NOT NULL,
    audiences         TEXT,            -- JSON array, or NULL for any audience policy allows
    created_at        INTEGER NOT NULL,
    expires_at        INTEGER NOT NULL,
    state             TEXT NOT NULL,   -- pending | active | denied | ended | expired
    approval_deadline INTEGER,
    decided_by        TEXT,
    decided_at        INTEGER,
    ended_at          INTEGER,
    end_reason        TEXT
);
CREATE INDEX tasks_path ON tasks (path);
CREATE INDEX tasks_creator ON tasks (creator);
-- The upkeep sweep looks for live tasks whose time is up.
CREATE INDEX tasks_live_expiry ON tasks (expires_at) WHERE state IN ('pending', 'active');
CREATE INDEX credentials_task ON credentials (task_id) WHERE task_id IS NOT NULL;
