-- The tick looks for today's unsent lessons every second: find them by day, not by scanning.
CREATE INDEX lessons_day_idx ON lessons (day);
