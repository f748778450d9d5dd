-- The web console and the member pages: one-time sign-in links and server-side sessions.

-- A sign-in link: its id is signed into the URL (links.py); using it sets used_at once, so a link
-- cannot be replayed. member_id NULL: the bootstrap admin (`notifier dev` prints one).
-- A member's read link used as an inbox sign-in is recorded here too (id derived from the token).
CREATE TABLE console_links (
    id          uuid PRIMARY KEY,
    member_id   text REFERENCES members (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT notifier_now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz
);
CREATE INDEX console_links_expires_idx ON console_links (expires_at);

-- A signed-in browser. Only a SHA-256 of the cookie's random id is stored. The session acts as
-- `role` for `unit_id` (a secretary: one of the units the member is secretary of, re-checked on
-- every request against unit_secretaries); signed in with an API key, it is that key's principal
-- for as long as the key stays usable.
CREATE TABLE console_sessions (
    id_hash       bytea PRIMARY KEY,
    member_id     text REFERENCES members (id) ON DELETE CASCADE,
    key_id        uuid REFERENCES api_keys (id) ON DELETE CASCADE,
    role          text NOT NULL CHECK (role IN ('admin', 'service', 'secretary', 'member')),
    unit_id       text REFERENCES units (id) ON DELETE CASCADE,
    csrf          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT notifier_now(),
    last_seen_at  timestamptz NOT NULL DEFAULT notifier_now(),
    expires_at    timestamptz NOT NULL,
    ended_at      timestamptz,
    CHECK (role NOT IN ('service', 'secretary') OR unit_id IS NOT NULL),
    CHECK (role <> 'member' OR member_id IS NOT NULL)
);
CREATE INDEX console_sessions_expires_idx ON console_sessions (expires_at);
