-- The time engine: escalation policies and their timers, duty rosters, secretaries, recall,
-- scheduled sends, daily lessons and quiet hours. Every timer is a row with a due time.

CREATE EXTENSION IF NOT EXISTS btree_gist;

-- Notices gain a schedule, an expiry, recall, and a snapshot of their escalation policy.
ALTER TABLE notices DROP CONSTRAINT notices_state_check;
ALTER TABLE notices ADD CONSTRAINT notices_state_check
    CHECK (state IN ('scheduled', 'queued', 'fanning_out', 'active', 'recalled', 'failed'));
ALTER TABLE notices ADD COLUMN send_at timestamptz;
ALTER TABLE notices ADD COLUMN expires_at timestamptz;
ALTER TABLE notices ADD COLUMN recalled_at timestamptz;
ALTER TABLE notices ADD COLUMN escalation jsonb;           -- {"policy": name|null, "steps": [...], "repeat": n}
ALTER TABLE notices ADD COLUMN parent_notice_id uuid REFERENCES notices (id);  -- summaries point at their DING
ALTER TABLE notices ADD COLUMN parent_step int;            -- which step (round * 100 + index + 1) made it
CREATE INDEX notices_scheduled_idx ON notices (send_at) WHERE state = 'scheduled';
-- One summary per (notice, round and step): a second tick cannot send a second one.
CREATE UNIQUE INDEX notices_parent_step_idx ON notices (parent_notice_id, parent_step) WHERE parent_notice_id IS NOT NULL;

-- 'cancelled': recalled, or the member read it before a reminder went out.
ALTER TABLE deliveries DROP CONSTRAINT deliveries_state_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_state_check
    CHECK (state IN ('queued', 'sending', 'sent', 'delivered', 'failed', 'unknown', 'cancelled'));
ALTER TABLE deliveries DROP CONSTRAINT deliveries_wait_reason_check;
ALTER TABLE deliveries ADD CONSTRAINT deliveries_wait_reason_check
    CHECK (wait_reason IN ('retry', 'throttled', 'capped', 'circuit_open', 'quiet_hours'));

-- Escalation policies, owned by a unit (NULL: global, made by an admin). Names are unique per owner.
CREATE TABLE escalation_policies (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    unit_id     text REFERENCES units (id),
    name        text NOT NULL,
    steps       jsonb NOT NULL,
    repeat      int NOT NULL DEFAULT 0 CHECK (repeat BETWEEN 0 AND 20),
    created_at  timestamptz NOT NULL DEFAULT notifier_now(),
    updated_at  timestamptz NOT NULL DEFAULT notifier_now()
);
CREATE UNIQUE INDEX escalation_policies_name_idx ON escalation_policies (coalesce(unit_id, ''), name);

-- One timer per escalating notice: the next step and when it is due.
CREATE TABLE escalations (
    notice_id   uuid PRIMARY KEY REFERENCES notices (id) ON DELETE CASCADE,
    started_at  timestamptz NOT NULL,
    round       int NOT NULL DEFAULT 0,
    next_step   int NOT NULL DEFAULT 0,
    due_at      timestamptz NOT NULL,
    state       text NOT NULL DEFAULT 'active' CHECK (state IN ('active', 'done', 'stopped')),
    updated_at  timestamptz NOT NULL DEFAULT notifier_now()
);
CREATE INDEX escalations_due_idx ON escalations (due_at) WHERE state = 'active';

-- Everything that happened to a notice that is not a delivery or a receipt: steps fired,
-- steps that reached nobody, recall, expiry. Never silent.
CREATE TABLE notice_events (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notice_id   uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    member_id   text,
    kind        text NOT NULL,
    detail      jsonb NOT NULL DEFAULT '{}',
    at          timestamptz NOT NULL DEFAULT notifier_now()
);
CREATE INDEX notice_events_notice_idx ON notice_events (notice_id, at);
CREATE INDEX notice_events_member_idx ON notice_events (notice_id, member_id, at) WHERE member_id IS NOT NULL;

-- Units: secretaries, a default policy for DINGs, local time settings for lessons and quiet hours.
CREATE TABLE unit_secretaries (
    unit_id     text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    member_id   text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    PRIMARY KEY (unit_id, member_id)
);
ALTER TABLE units ADD COLUMN default_policy text;
ALTER TABLE units ADD COLUMN timezone text;                 -- NULL: inherit, finally Asia/Shanghai
ALTER TABLE units ADD COLUMN lesson_time time;              -- NULL: inherit, finally 08:00
ALTER TABLE units ADD COLUMN lesson_reminder_time time;     -- optional evening reminder
ALTER TABLE units ADD COLUMN quiet_start time;              -- default quiet hours for members below
ALTER TABLE units ADD COLUMN quiet_end time;
ALTER TABLE members ADD COLUMN quiet_start time;
ALTER TABLE members ADD COLUMN quiet_end time;

-- Duty roster: who is on duty for a unit, by time range. The same member cannot hold two
-- overlapping shifts in one unit.
CREATE TABLE duty_shifts (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    unit_id     text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    member_id   text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    during      tstzrange NOT NULL CHECK (NOT isempty(during)),
    EXCLUDE USING gist (unit_id WITH =, member_id WITH =, during WITH &&)
);
CREATE INDEX duty_shifts_unit_idx ON duty_shifts USING gist (unit_id, during);

-- Daily lessons, one per unit and local date; lesson_runs makes "sent once" a constraint.
CREATE TABLE lessons (
    unit_id     text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    day         date NOT NULL,
    title       text NOT NULL,
    body        text NOT NULL,
    quiz        jsonb,
    created_at  timestamptz NOT NULL DEFAULT notifier_now(),
    updated_at  timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (unit_id, day)
);
CREATE TABLE lesson_runs (
    unit_id     text NOT NULL,
    day         date NOT NULL,
    notice_id   uuid NOT NULL REFERENCES notices (id),
    sent_at     timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (unit_id, day)
);
