-- Cost guard (issue 14): per-unit daily budgets for paid channels (SMS, voice).
--
-- A budget set on a unit covers every notice scoped to it or to a unit below it (the nearest
-- unit up the tree with a budget for the channel governs, and its spend is shared by its
-- subtree). A day is the governing unit's local day. Beyond the budget a delivery waits, queued
-- with wait_reason 'budget_exhausted', until the next local midnight or an admin raises the
-- budget or overrides it (override_until: no limit until then).
CREATE TABLE unit_budgets (
    unit_id        text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    channel        text NOT NULL,
    daily_limit    integer NOT NULL CHECK (daily_limit >= 0),
    override_until timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (unit_id, channel)
);

-- Sends charged so far, per governing unit, channel and local day (the row is locked while a
-- batch is charged, so concurrent workers never spend one unit twice).
CREATE TABLE budget_spend (
    unit_id text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    channel text NOT NULL,
    day     date NOT NULL,
    used    integer NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (unit_id, channel, day)
);

ALTER TABLE deliveries DROP CONSTRAINT deliveries_wait_reason_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_wait_reason_check
    CHECK (wait_reason IN ('retry', 'throttled', 'capped', 'circuit_open', 'quiet_hours', 'budget_exhausted'));

-- A row held by the budget is moot once read, like every held row (deliveries.HELD_REASONS).
DROP INDEX deliveries_queued_held_idx;
CREATE INDEX deliveries_queued_held_idx ON deliveries (notice_id, member_id)
    WHERE state = 'queued'
      AND wait_reason IN ('quiet_hours', 'throttled', 'capped', 'circuit_open', 'budget_exhausted');

-- Secrets rotation (issue 14): an API key rotated to a new token keeps accepting the old one
-- until previous_valid_until (db/api_keys.py AUTHENTICATE).
ALTER TABLE api_keys ADD COLUMN previous_token_hash bytea UNIQUE,
                     ADD COLUMN previous_valid_until timestamptz;
