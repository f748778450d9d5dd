-- The inbox lists a notice at the notice's time, not at the time the fan-out happened to reach
-- the member: two notices fanned out concurrently (or a big one still fanning out while a small
-- one overtakes it) keep the order they were sent in. An in-app reminder (step > 0) is listed at
-- its own time (it brings the notice back to the top, as before). The key is stored on the row
-- and never changes, so a keyset cursor over (listed_at, notice_id) neither repeats nor skips a
-- row that existed when the walk began. recipients.created_at stays the fan-out time (it feeds
-- the time-to-read figures).
--   step 0: the notice's time, coalesce(send_at, created_at) -- when it went out, the time its
--           escalation counts from (db/notices.py CLAIM_FANOUT went_out_at)
--   step n: the reminder's time
-- (The default, the insert's time, is what rows of other channels carry; only in-app rows are read.)
ALTER TABLE deliveries ADD COLUMN listed_at timestamptz NOT NULL DEFAULT now();

UPDATE deliveries d
SET listed_at = CASE WHEN d.step > 0 THEN d.created_at ELSE coalesce(n.send_at, n.created_at) END
FROM notices n
WHERE n.id = d.notice_id AND d.channel = 'inapp';

DROP INDEX deliveries_inbox_idx;
CREATE INDEX deliveries_inbox_idx ON deliveries (member_id, listed_at DESC, notice_id DESC) WHERE channel = 'inapp';
