-- Check-in photos: a member's photo taken at check-in lives in the records' photo store
-- (meeting_photos) as kind 'checkin', linked from its check-in; only 'site' photos are the
-- secretary's record (and count against its cap). On a meeting with photo_required, an accepted
-- check-in counts as attendance only once its photo is linked.
ALTER TABLE meeting_photos ADD COLUMN kind text NOT NULL DEFAULT 'site' CHECK (kind IN ('site', 'checkin'));

ALTER TABLE meeting_checkins
    ADD CONSTRAINT meeting_checkins_photo_fk FOREIGN KEY (photo_id) REFERENCES meeting_photos (id) ON DELETE SET NULL;
-- One photo proves one member's presence: the same photo is never linked to two check-ins.
CREATE UNIQUE INDEX meeting_checkins_photo_idx ON meeting_checkins (photo_id) WHERE photo_id IS NOT NULL;

-- The one home of "this check-in counts as attendance": accepted, and with its photo when the
-- meeting requires one (db/records.py attendance, db/supervision.py report).
CREATE VIEW meeting_presences AS
SELECT k.notice_id, k.member_id, k.at, k.id AS checkin_id
FROM meeting_checkins k JOIN meetings m ON m.notice_id = k.notice_id
WHERE k.verdict = 'ok' AND (k.photo_id IS NOT NULL OR NOT m.photo_required);
