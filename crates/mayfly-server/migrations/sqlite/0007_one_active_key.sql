-- At most one signing key and one SVID authority generation sign at a time.
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys ((retired_at IS NULL)) WHERE retired_at IS NULL;
CREATE UNIQUE INDEX svid_authorities_one_active ON svid_authorities ((retired_at IS NULL)) WHERE retired_at IS NULL;
