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

-- An escalation summary is about someone else's notice: the fan-out no longer lists it under the
-- units it reaches (a summary to a member shared with another branch showed that branch the title
-- of a notice it never saw, in the member's history and its notice list). What earlier fan-outs
-- listed goes; the listing under its creating unit and those above (0010's trigger) stays.
WITH RECURSIVE up (notice_id, id, parent_id, depth) AS (
    SELECT n.id, u.id, u.parent_id, 0 FROM notices n JOIN units u ON u.id = n.scope_unit_id
    WHERE n.parent_notice_id IS NOT NULL
    UNION ALL
    SELECT up.notice_id, p.id, p.parent_id, up.depth + 1 FROM up JOIN units p ON p.id = up.parent_id
    WHERE up.depth < 1000
)
DELETE FROM notice_reach r USING notices n
WHERE n.id = r.notice_id AND n.parent_notice_id IS NOT NULL
  AND NOT EXISTS (SELECT 1 FROM up WHERE up.notice_id = r.notice_id AND up.id = r.unit_id);
