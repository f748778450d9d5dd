-- Escalation at 100k recipients, and a ceiling on what one notice's escalation may send.

-- A step counts the unread (index-only), reminds them and places them in units from this index;
-- ``?status=unread`` (and the delivery states, which imply unread) pages through it by member id.
CREATE INDEX recipients_unread_idx ON recipients (notice_id, member_id) WHERE read_at IS NULL;
CREATE INDEX recipients_read_idx ON recipients (notice_id, member_id) WHERE read_at IS NOT NULL;

-- Events: one aggregated row per step names the members it concerns (not one row per member);
-- /events pages by (at, id); a recipient's timeline reads the notice-wide events apart from its own.
ALTER TABLE notice_events ADD COLUMN members text[];
CREATE INDEX notice_events_page_idx ON notice_events (notice_id, at, id);
CREATE INDEX notice_events_notice_wide_idx ON notice_events (notice_id, at, id) WHERE member_id IS NULL;
DROP INDEX notice_events_notice_idx;
DROP INDEX notice_events_member_idx;
CREATE INDEX notice_events_member_idx ON notice_events (notice_id, member_id, at, id) WHERE member_id IS NOT NULL;

-- Sends made so far by the notice's escalation (reminders and summary deliveries), kept by the
-- step that makes them, under the timer's row lock.
ALTER TABLE escalations ADD COLUMN sends bigint NOT NULL DEFAULT 0;
