-- A big notice fans out in parts at once (issue 13, target 3): notifier/workers/fanout.py.
--
-- The first chunk runs alone (the notice row locked, its cursor on the notice, as before): a
-- notice that fits in it never gets here. When it shows more remain, that transaction splits
-- the rest of the audience into `parts` consecutive ranges of member ids above the first
-- chunk's last member, one row each (ranges, not a hash of the id: two parts writing the same
-- index pages at once cost a third more CPU per recipient); fan-out jobs claim the rows FOR
-- UPDATE SKIP LOCKED, so each part has one writer and its own cursor, and the parts run
-- concurrently. The part that finds every other part done sets the notice 'active' (and starts
-- its escalation).
CREATE TABLE fanout_parts (
    notice_id  uuid NOT NULL REFERENCES notices (id) ON DELETE CASCADE,
    part       smallint NOT NULL,
    parts      smallint NOT NULL CHECK (parts > 1 AND part >= 0 AND part < parts),
    cursor     text NOT NULL,         -- the part's members lie above it: the last one fanned out
    upper      text,                  -- ... and up to this one (NULL: no end)
    done       boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (notice_id, part)
);
