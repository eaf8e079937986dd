-- Several named admin tokens, each revocable by a non-secret id: an id for each
-- existing token, names unique, and when each was last used (to within a minute).
ALTER TABLE admin_tokens ADD COLUMN id TEXT;
UPDATE admin_tokens SET id = substr(md5(random()::text || clock_timestamp()::text || token_hash), 1, 16);
ALTER TABLE admin_tokens ALTER COLUMN id SET NOT NULL;
CREATE UNIQUE INDEX admin_tokens_id ON admin_tokens (id);
-- Replicas that started together on an empty database could each store a token named
-- `initial`: the oldest keeps the name, the others get their id as a suffix.
UPDATE admin_tokens t SET name = t.name || '-' || t.id
WHERE EXISTS (SELECT 1 FROM admin_tokens o
              WHERE o.name = t.name AND (o.created_at, o.token_hash) < (t.created_at, t.token_hash));
CREATE UNIQUE INDEX admin_tokens_name ON admin_tokens (name);
ALTER TABLE admin_tokens ADD COLUMN last_used_at BIGINT;
