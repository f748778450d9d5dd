-- Study points: rules per organisation (a root unit), the ledger, and the page views that
-- measure how long a member had a notice open (the server's clock, never the client's total).

-- A rule of one organisation: `points` per action, at most `daily_cap` points of it per member per
-- local day (NULL: no cap), earned only after `min_dwell_seconds` on the page (notice sources).
CREATE TABLE point_rules (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    root_unit_id        text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    code                text NOT NULL CHECK (code ~ '^[a-z][a-z0-9_]{0,63}$'),
    name                text,
    points              int NOT NULL CHECK (points BETWEEN 1 AND 1000),
    daily_cap           int CHECK (daily_cap BETWEEN 1 AND 100000),
    min_dwell_seconds   int NOT NULL DEFAULT 0 CHECK (min_dwell_seconds BETWEEN 0 AND 86400),
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    UNIQUE (root_unit_id, code)
);
CREATE INDEX point_rules_code_idx ON point_rules (code, root_unit_id);

-- One row per (member, rule code, source): a replayed receipt finds its row and earns nothing.
-- `points` is what was actually awarded (0 when the day's cap was already reached: the action
-- still counts as done, so a replay on another day earns nothing either). `day` is the member's
-- local date at `awarded_at` -- the day the cap is counted in.
CREATE TABLE point_awards (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    member_id       text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    code            text NOT NULL,
    source          text NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
    root_unit_id    text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    points          int NOT NULL CHECK (points >= 0),
    day             date NOT NULL,
    awarded_at      timestamptz NOT NULL,
    UNIQUE (member_id, code, source)
);
CREATE INDEX point_awards_day_idx ON point_awards (member_id, code, day);
CREATE INDEX point_awards_root_day_idx ON point_awards (root_unit_id, day, member_id);

-- A member's page view of a notice: opened and closed at the server's clock. `visible_seconds`
-- is what the page says it was visible; the dwell is the lesser of that and the server's span.
CREATE TABLE notice_views (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    notice_id       uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    member_id       text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    opened_at       timestamptz NOT NULL,
    closed_at       timestamptz,
    visible_seconds double precision CHECK (visible_seconds >= 0),
    CHECK (closed_at IS NULL OR closed_at >= opened_at)
);
CREATE INDEX notice_views_member_idx ON notice_views (member_id, notice_id);
