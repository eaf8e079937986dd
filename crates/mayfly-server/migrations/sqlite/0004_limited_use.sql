-- Limited-use tokens: the broker counts each use at introspection; the N+1th fails.
ALTER TABLE credentials ADD COLUMN max_uses INTEGER;
ALTER TABLE credentials ADD COLUMN uses INTEGER NOT NULL DEFAULT 0;
