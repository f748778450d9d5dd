-- Contacts are unique per (member, channel, normalised target), keyed on a SHA-256 of the
-- target rather than the target itself: a btree entry may hold at most ~2.7 KB, and a 2 KB URL
-- of non-ASCII text is three times that. jsonb's text form is canonical (key order, spacing), so
-- equal targets hash equally. The wrapper fixes the encoding, which makes it immutable.
CREATE FUNCTION contact_target_hash(target jsonb) RETURNS bytea
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN sha256(convert_to(target::text, 'UTF8'));

ALTER TABLE contacts ADD COLUMN target_hash bytea
    GENERATED ALWAYS AS (contact_target_hash(target)) STORED NOT NULL;
ALTER TABLE contacts DROP CONSTRAINT contacts_member_id_channel_target_key;
CREATE UNIQUE INDEX contacts_target_key ON contacts (member_id, channel, target_hash);

-- API keys may expire; last_used_at is refreshed at most once a minute per key (not a write per
-- request). Revoking a key revokes every key it issued, found through created_by.
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz, ADD COLUMN last_used_at timestamptz;
CREATE INDEX api_keys_created_by_idx ON api_keys (created_by) WHERE created_by IS NOT NULL;
