-- A step over many unread reminds them in parallel parts (issue 13, target 7):
-- notifier/workers/escalation_parts.py.
--
-- The chunks of 0034 ran one after another in the tick (about 13 us of PostgreSQL per
-- reminder: 1.3 s for 100,000 unread on one backend). Now, when a step's unread exceed one chunk,
-- the tick splits them into `parts` consecutive ranges of member ids (cut where the unread divide
-- evenly), one row each, and as many jobs remind them at once, in chunks, each part claimed FOR
-- UPDATE SKIP LOCKED (one writer at a time, its own cursor). Each part keeps what it has done;
-- the part that finds every other part done fires the step (its summary, its `step_fired` event
-- and the move to the next step), exactly once, and deletes the rows. The reminders' unique key
-- keeps every member reminded once per step, also after a crash.
CREATE TABLE escalation_parts (
    notice_id  uuid NOT NULL REFERENCES escalations (notice_id) ON DELETE CASCADE,
    step       int NOT NULL,              -- the step's code (domain.escalation.step_code)
    part       smallint NOT NULL,
    parts      smallint NOT NULL CHECK (parts > 1 AND part >= 0 AND part < parts),
    cursor     text NOT NULL,             -- the part's unread lie above it: the last one reminded
    upper      text,                      -- ... and up to this one (NULL: no end)
    done       boolean NOT NULL DEFAULT false,
    reached    jsonb NOT NULL DEFAULT '{}',  -- members reminded so far, per channel
    sends      int NOT NULL DEFAULT 0,
    chunks     int NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (notice_id, step, part)
);
