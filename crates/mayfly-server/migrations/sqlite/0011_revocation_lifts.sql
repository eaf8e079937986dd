-- A lift ends the blocks on a selector (a block is a revocation whose issued_before lies
-- in the future: nothing it covers is issued until then).
ALTER TABLE revocations ADD COLUMN lift INTEGER NOT NULL DEFAULT 0;
CREATE INDEX revocations_selector ON revocations (kind, value);
