-- The SPIFFE Workload API.

-- SVID authorities, one row per generation: an X.509 CA (EC P-256) and a JWT-SVID
-- key (ES256), rotated together. Private keys are sealed under the key-encryption key.
CREATE TABLE svid_authorities (
    id              TEXT PRIMARY KEY,
    ca_cert         BLOB NOT NULL,    -- DER, public
    sealed_ca_key   BLOB NOT NULL,    -- PKCS#8, sealed
    sealed_jwt_key  BLOB NOT NULL,    -- PKCS#8, sealed
    created_at      INTEGER NOT NULL,
    not_after       INTEGER NOT NULL, -- the CA certificate's expiry
    retired_at      INTEGER,          -- when it stopped signing
    published_until INTEGER           -- when it leaves the bundles
);

-- Registration entries made through the admin API (config-file entries are not stored).
CREATE TABLE workload_entries (
    id         TEXT PRIMARY KEY,
    spec       TEXT NOT NULL,         -- JSON: SPIFFE ID, selectors, hint, DNS names, lifetimes, attributes
    created_at INTEGER NOT NULL
);
