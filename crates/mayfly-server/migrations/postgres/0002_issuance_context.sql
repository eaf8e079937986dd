-- The attested context a credential was issued under (attestor, attributes, source
-- address; JSON, never a secret), so a context-change signal can re-decide it.
ALTER TABLE credentials ADD COLUMN context TEXT;
ALTER TABLE db_leases ADD COLUMN context TEXT;
