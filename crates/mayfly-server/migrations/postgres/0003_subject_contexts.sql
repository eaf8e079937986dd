-- What context-change signals said about a workload (by SPIFFE ID): applied over the
-- attributes of its later requests until it expires.
CREATE TABLE subject_contexts (
    subject    TEXT PRIMARY KEY,
    attributes TEXT NOT NULL,
    updated_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE TRIGGER subject_contexts_announce AFTER INSERT OR UPDATE OR DELETE ON subject_contexts
    FOR EACH STATEMENT EXECUTE FUNCTION mayfly_announce('subject_contexts');
