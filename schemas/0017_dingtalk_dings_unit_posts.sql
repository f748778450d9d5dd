-- DingTalk, part two: DINGs (robot/ding/send) and their recall; robot one-to-one message timers; unit-level contacts and group posts.

-- Which contact channel a delivery channel reaches a member through: a DING goes to the same
-- DingTalk userid as a work notification, so ``dingtalk_ding`` uses the member's ``dingtalk``
-- contact (one userid to keep, one to disable when DingTalk says it is gone). The one rule's
-- helper (notifier/db/contacts.py newest_working) asks this function.
CREATE FUNCTION contact_channel(channel text) RETURNS text LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT CASE channel WHEN 'dingtalk_ding' THEN 'dingtalk' ELSE channel END
$$;

-- One row per DING (its openDingId, the deliveries' provider_ref): the timer for withdrawing it
-- when its notice is recalled. Started by the write-back that records the id, like the work
-- notifications' read-poll timers (0012).
CREATE TABLE dingtalk_dings (
    open_ding_id  text PRIMARY KEY,
    notice_id     uuid NOT NULL,
    sent_at       timestamptz NOT NULL,
    recall_due_at timestamptz,                 -- the notice was recalled: withdraw the DING then
    recalled_at   timestamptz,
    recall_error  text
);
CREATE INDEX dingtalk_dings_notice_idx ON dingtalk_dings (notice_id);
CREATE INDEX dingtalk_dings_recall_idx ON dingtalk_dings (recall_due_at) WHERE recall_due_at IS NOT NULL;

CREATE FUNCTION dingtalk_dings_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dingtalk_dings (open_ding_id, notice_id, sent_at)
    SELECT DISTINCT ON (n.provider_ref) n.provider_ref, n.notice_id, notifier_now()
    FROM after_rows n
    WHERE n.channel = 'dingtalk_ding' AND n.state IN ('sent', 'failed', 'unknown') AND n.provider_ref IS NOT NULL
    ON CONFLICT (open_ding_id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_start_dingtalk_dings AFTER UPDATE ON deliveries
    REFERENCING NEW TABLE AS after_rows FOR EACH STATEMENT EXECUTE FUNCTION dingtalk_dings_start();

-- Robot one-to-one messages (the dingtalk channel with robot_messages on) record each member's
-- provider ref as "{processQueryKey}/{userId}" (reads are reported per send and user); one read
-- poll timer per send, as for a work-notification task (whose ids hold no "/": unchanged).
CREATE OR REPLACE FUNCTION dingtalk_read_polls_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dingtalk_read_polls (task_id, notice_id, sent_at, next_poll_at)
    SELECT DISTINCT ON (split_part(n.provider_ref, '/', 1)) split_part(n.provider_ref, '/', 1), n.notice_id,
           notifier_now(), notifier_now() + dingtalk_poll_delay(0)
    FROM after_rows n
    WHERE n.channel = 'dingtalk' AND n.state = 'sent' AND n.provider_ref IS NOT NULL
    ON CONFLICT (task_id) DO NOTHING;
    RETURN NULL;
END $$;

-- Unit-level contacts: where a unit as a whole is reached (its group chat's robot), set with
-- PUT /v1/units/{id}/contacts. One per unit and channel.
CREATE TABLE unit_contacts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    unit_id         text NOT NULL REFERENCES units (id) ON DELETE CASCADE,
    channel         text NOT NULL,
    target          jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT notifier_now(),
    disabled_at     timestamptz,
    disabled_reason text,
    UNIQUE (unit_id, channel)
);

-- A notice posted in a unit's group: one post per (notice, unit, channel), never one per member.
-- The row is the post's state and its timer (next_attempt_at), sent by a part of the tick.
CREATE TABLE unit_posts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    notice_id       uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    unit_id         text NOT NULL,
    channel         text NOT NULL,
    contact_id      uuid REFERENCES unit_contacts (id) ON DELETE SET NULL,
    state           text NOT NULL DEFAULT 'queued'
                    CHECK (state IN ('queued', 'sending', 'sent', 'failed', 'cancelled')),
    attempts        int NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT notifier_now(),
    wait_reason     text,
    error           text,
    created_at      timestamptz NOT NULL DEFAULT notifier_now(),
    sent_at         timestamptz,
    UNIQUE (notice_id, unit_id, channel)
);
CREATE INDEX unit_posts_due_idx ON unit_posts (next_attempt_at) WHERE state IN ('queued', 'sending');

-- When a notice goes out (its fan-out done), each unit its audience names that has a working
-- unit-level contact on one of the notice's channels gets its post, in the same statement.
CREATE FUNCTION unit_posts_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO unit_posts (notice_id, unit_id, channel, contact_id)
    SELECT NEW.id, uc.unit_id, uc.channel, uc.id
    FROM unit_contacts uc
    WHERE uc.disabled_at IS NULL AND uc.channel = ANY(NEW.channels)
      AND uc.unit_id IN (SELECT jsonb_array_elements_text(coalesce(NEW.audience -> 'units', '[]')))
    ON CONFLICT (notice_id, unit_id, channel) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER notices_start_unit_posts AFTER UPDATE OF state ON notices
    FOR EACH ROW WHEN (NEW.state = 'active' AND OLD.state IS DISTINCT FROM 'active')
    EXECUTE FUNCTION unit_posts_start();
