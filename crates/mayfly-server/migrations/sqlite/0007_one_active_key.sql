-- At most one signing key and one SVID authority generation sign at a time.
-- Earlier versions could leave an expired CA unretired beside its successor (a restart
-- after the CA's lifetime): retire all but the newest active generation first.
UPDATE svid_authorities SET retired_at = created_at, published_until = not_after
WHERE retired_at IS NULL
  AND id <> (SELECT id FROM svid_authorities WHERE retired_at IS NULL ORDER BY created_at DESC, id DESC LIMIT 1);
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;
CREATE UNIQUE INDEX svid_authorities_one_active ON svid_authorities ((retired_at IS NULL)) WHERE retired_at IS NULL;
