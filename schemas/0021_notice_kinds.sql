-- A monthly test goes out as a notice of its own kind; meetings already have theirs.
ALTER TABLE notices DROP CONSTRAINT notices_kind_check;
ALTER TABLE notices ADD CONSTRAINT notices_kind_check
    CHECK (kind IN ('ding', 'notice', 'lesson', 'meeting', 'exam'));
