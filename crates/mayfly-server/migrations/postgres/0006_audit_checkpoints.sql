-- Signed checkpoints of the audit chain's head: the leader signs (seq, hash) of the last
-- event every N events or T seconds, with Mayfly's own signing key, as a compact JWS
-- (`typ: mayfly-audit-checkpoint+jwt`). The JWS is the checkpoint; the other columns
-- repeat its claims for lookups and are never trusted on their own. Writing one is not
-- an audit event (it would move the head it anchors). A replica that has just lost the
-- lead may race its successor for the same head: the primary key keeps one.
CREATE TABLE audit_checkpoints (
    seq        BIGINT PRIMARY KEY,
    hash       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    kid        TEXT NOT NULL,
    jws        TEXT NOT NULL
);

-- Append-only, as the chain it anchors: an accident cannot rewrite one (an attacker who
-- can drop triggers can, which is why operators keep exported checkpoints elsewhere).
CREATE FUNCTION audit_checkpoints_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'audit_checkpoints is append-only'; END $$;
CREATE TRIGGER audit_checkpoints_no_change BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoints_append_only();
