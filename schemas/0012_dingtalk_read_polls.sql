-- DingTalk read import: one timer row per work-notification task (``asyncsend_v2`` task id, the
-- deliveries' provider_ref). The tick polls ``getsendresult`` for each due row while DingTalk can
-- answer (24 h after the send), backing off 10 s, 30 s, 1 min, 5 min, then every 15 min. The
-- same row is the timer for withdrawing the task on DingTalk when its notice is recalled.

-- The schedule, in one place: the wait before poll number n + 1 (n polls done so far).
CREATE FUNCTION dingtalk_poll_delay(polls int) RETURNS interval LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN polls <= 0 THEN interval '10 seconds' WHEN polls = 1 THEN interval '30 seconds'
                WHEN polls = 2 THEN interval '1 minute' WHEN polls = 3 THEN interval '5 minutes'
                ELSE interval '15 minutes' END
$$;

CREATE TABLE dingtalk_read_polls (
    task_id      text PRIMARY KEY,
    notice_id    uuid NOT NULL,
    sent_at      timestamptz NOT NULL,         -- DingTalk answers (and recalls) for 24 h from here
    polls        int NOT NULL DEFAULT 0,
    next_poll_at timestamptz NOT NULL,
    done_at      timestamptz,                  -- nothing left to learn, or the window is over
    last_error   text,
    recall_due_at timestamptz,                 -- the notice was recalled: withdraw the task then
    recalled_at  timestamptz,                  -- DingTalk withdrew it
    recall_error text                          -- or why it could not
);
CREATE INDEX dingtalk_read_polls_due_idx ON dingtalk_read_polls (next_poll_at) WHERE done_at IS NULL;
CREATE INDEX dingtalk_read_polls_notice_idx ON dingtalk_read_polls (notice_id);
CREATE INDEX dingtalk_read_polls_recall_idx ON dingtalk_read_polls (recall_due_at) WHERE recall_due_at IS NOT NULL;

-- The write-back that records a task id as a delivery's provider_ref starts its timer, in the
-- same statement: no task is sent without one, and none is polled twice (one row per task).
CREATE FUNCTION dingtalk_read_polls_start() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dingtalk_read_polls (task_id, notice_id, sent_at, next_poll_at)
    SELECT DISTINCT ON (n.provider_ref) n.provider_ref, n.notice_id, notifier_now(),
           notifier_now() + dingtalk_poll_delay(0)
    FROM after_rows n
    WHERE n.channel = 'dingtalk' AND n.state = 'sent' AND n.provider_ref IS NOT NULL
    ON CONFLICT (task_id) DO NOTHING;
    RETURN NULL;
END $$;

CREATE TRIGGER deliveries_start_dingtalk_read_polls AFTER UPDATE ON deliveries
    REFERENCING NEW TABLE AS after_rows FOR EACH STATEMENT EXECUTE FUNCTION dingtalk_read_polls_start();
