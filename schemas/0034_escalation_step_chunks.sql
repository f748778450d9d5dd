-- A step over many unread reminds them in chunks, one transaction each (issue 13, target 7):
-- a reminder insert locks its recipients' rows until commit (the insert trigger of 0028), so one
-- statement over 100,000 unread held a read of any of them for the whole step. Between chunks the
-- timer stays due and says where its step is: the last member the step has reminded (NULL: no
-- step in progress) and what it has counted so far (the unread and recipients when it began, the
-- members reminded per channel, the chunks done). A crash resumes after the last committed chunk;
-- the reminders' unique key keeps every member reminded once.
ALTER TABLE escalations ADD COLUMN step_cursor text, ADD COLUMN step_progress jsonb;
