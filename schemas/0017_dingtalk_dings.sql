-- DingTalk, part two: DINGs (robot/ding/send) and their recall; robot one-to-one message timers.

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
