-- Named signing profiles (an RS256 key for the clouds beside the default EdDSA key):
-- each profile has its own active key, and a rotation may pre-publish the next key
-- before it signs (`activates_at`), so that verifiers caching the JWKS see it first.
ALTER TABLE signing_keys ADD COLUMN profile TEXT NOT NULL DEFAULT 'default';
ALTER TABLE signing_keys ADD COLUMN activates_at INTEGER;
DROP INDEX signing_keys_one_active;
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (profile) WHERE retired_at IS NULL;
