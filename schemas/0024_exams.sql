-- Monthly tests (issue 11): a quiz of kind 'exam' sent as a notice of kind 'exam', with reminders
-- to those who have not taken it (the notice's escalation policy), ranked per member and per
-- branch after it. The quiz (0023) holds the questions, window, pass mark and results.

CREATE TABLE exams (
    quiz_id       uuid PRIMARY KEY REFERENCES quizzes (id) ON DELETE CASCADE,
    notice_id     uuid NOT NULL UNIQUE REFERENCES notices (id) ON DELETE CASCADE,
    -- 'time': of two equal scores the one taken in less time ranks higher; 'none': they tie.
    tie_break     text NOT NULL DEFAULT 'none' CHECK (tie_break IN ('none', 'time')),
    remind_before double precision[] NOT NULL DEFAULT '{}',  -- seconds before the close, as asked
    created_at    timestamptz NOT NULL DEFAULT notifier_now()
);

-- Members excused from a test (leave, illness): not expected takers, so not in any denominator.
CREATE TABLE exam_excused (
    quiz_id    uuid NOT NULL REFERENCES exams (quiz_id) ON DELETE CASCADE,
    member_id  text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    reason     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (quiz_id, member_id)
);

-- Per organisation (keyed on its root unit): whether members see their branch's leaderboard with
-- names. Off by default -- a member sees their own result and rank only.
CREATE TABLE ranking_settings (
    unit_id    text PRIMARY KEY REFERENCES units (id) ON DELETE CASCADE,
    show_names boolean NOT NULL DEFAULT false,
    updated_at timestamptz NOT NULL DEFAULT notifier_now()
);

-- After a test closes its results are frozen: no attempt starts, no answer is saved, nothing is
-- submitted or regraded. The one change allowed is the auto-submission of an attempt that was
-- open at the close, as of its deadline (which is never later than the close) with the answers
-- saved before it. The API refuses these first (409); this guard holds whatever path writes.
CREATE FUNCTION exam_attempts_frozen() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    closes timestamptz;
BEGIN
    SELECT q.closes_at INTO closes FROM quizzes q
    WHERE q.id = NEW.quiz_id AND q.kind = 'exam';
    IF closes IS NULL OR closes > notifier_now() THEN
        RETURN NEW;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.submitted_at IS NULL AND NEW.submitted_at IS NOT NULL
       AND NEW.submitted_at <= closes AND NEW.answers = OLD.answers THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'the test % closed at %; its results are frozen', NEW.quiz_id, closes
        USING ERRCODE = 'check_violation', CONSTRAINT = 'exam_frozen';
END $$;
CREATE TRIGGER exam_attempts_frozen BEFORE INSERT OR UPDATE ON quiz_attempts
    FOR EACH ROW EXECUTE FUNCTION exam_attempts_frozen();
