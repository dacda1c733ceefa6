-- Suppressions expire: an entry lasts TERN_SUPPRESSION_KEEP_S (30 days by
-- default) from its last listing; policy sets expires_at when it lists or
-- refreshes an address, ignores expired entries, and sweeps them away (the
-- index). Entries listed before this migration get the default 30 days from
-- their listing.
ALTER TABLE suppressions ADD COLUMN expires_at timestamptz;
UPDATE suppressions SET expires_at = created_at + interval '30 days';
ALTER TABLE suppressions ALTER COLUMN expires_at SET NOT NULL;
ALTER TABLE suppressions ALTER COLUMN expires_at SET DEFAULT now() + interval '30 days';
CREATE INDEX suppressions_expires ON suppressions (expires_at);
