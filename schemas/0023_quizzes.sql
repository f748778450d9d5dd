-- Quizzes scored on the server (issue 11): the quiz with its answer key, each member's attempts,
-- and each member's graded result (by the quiz's grading method), written in the submit
-- transaction. The answer key lives in quizzes.questions and is never sent to a member.

CREATE TABLE quizzes (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    scope_unit_id       text REFERENCES units (id),          -- NULL: created by an admin
    created_by          uuid,
    title               text NOT NULL,
    kind                text NOT NULL DEFAULT 'quiz' CHECK (kind IN ('quiz', 'exam')),
    questions           jsonb NOT NULL,                      -- WITH the answer key
    shuffle_questions   boolean NOT NULL DEFAULT false,
    shuffle_options     boolean NOT NULL DEFAULT false,
    attempts_allowed    int CHECK (attempts_allowed >= 1),   -- NULL: unlimited
    grading             text NOT NULL DEFAULT 'highest'
                        CHECK (grading IN ('highest', 'last', 'first', 'average')),
    time_limit_seconds  int CHECK (time_limit_seconds > 0),
    opens_at            timestamptz,
    closes_at           timestamptz,
    review              text NOT NULL DEFAULT 'score' CHECK (review IN ('score', 'answers', 'after_close')),
    pass_mark           numeric CHECK (pass_mark >= 0),
    max_score           numeric NOT NULL CHECK (max_score > 0),
    notice_id           uuid REFERENCES notices (id) ON DELETE SET NULL,  -- the notice it went out with
    created_at          timestamptz NOT NULL DEFAULT notifier_now(),
    updated_at          timestamptz NOT NULL DEFAULT notifier_now(),
    CHECK (closes_at IS NULL OR opens_at IS NULL OR closes_at > opens_at),
    CHECK (review <> 'after_close' OR closes_at IS NOT NULL)
);
CREATE INDEX quizzes_scope_idx ON quizzes (scope_unit_id, created_at DESC);
CREATE UNIQUE INDEX quizzes_notice_idx ON quizzes (notice_id) WHERE notice_id IS NOT NULL;

-- One row per attempt; at most one open (unsubmitted) attempt per member and quiz. The seed
-- fixes the question and option order of the attempt (stable on reload). deadline: the earlier
-- of started_at + time limit and the quiz's close; an open attempt past it is submitted as of
-- the deadline with the answers saved before it (by the tick, or by whoever touches it first).
CREATE TABLE quiz_attempts (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    quiz_id         uuid NOT NULL REFERENCES quizzes (id) ON DELETE CASCADE,
    member_id       text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    n               int NOT NULL CHECK (n >= 1),
    seed            bigint NOT NULL,
    started_at      timestamptz NOT NULL,
    deadline        timestamptz,
    answers         jsonb NOT NULL DEFAULT '{}'::jsonb,
    saved_at        timestamptz,
    submitted_at    timestamptz,
    auto_submitted  boolean NOT NULL DEFAULT false,
    score           numeric,
    question_scores jsonb,                                   -- {question id: points earned}
    UNIQUE (quiz_id, member_id, n),
    CHECK ((submitted_at IS NULL) = (score IS NULL))
);
CREATE UNIQUE INDEX quiz_attempts_open_idx ON quiz_attempts (quiz_id, member_id) WHERE submitted_at IS NULL;
CREATE INDEX quiz_attempts_due_idx ON quiz_attempts (deadline) WHERE submitted_at IS NULL AND deadline IS NOT NULL;
CREATE INDEX quiz_attempts_member_idx ON quiz_attempts (member_id, quiz_id);

-- The member's graded result by the quiz's grading method (derived from quiz_attempts, written by
-- the statement that submits). final: it can no longer change (attempts used up, the quiz closed,
-- or grading 'first'); final_at: when it first became final (points are awarded then, once).
CREATE TABLE quiz_results (
    quiz_id             uuid NOT NULL REFERENCES quizzes (id) ON DELETE CASCADE,
    member_id           text NOT NULL REFERENCES members (id) ON DELETE CASCADE,
    score               numeric NOT NULL,
    max_score           numeric NOT NULL,
    attempts            int NOT NULL,
    first_submitted_at  timestamptz NOT NULL,
    seconds_taken       numeric,                             -- of the attempt that counts (average: mean)
    attempt_id          uuid,                                -- the attempt that counts (NULL: average)
    final               boolean NOT NULL DEFAULT false,
    final_at            timestamptz,
    updated_at          timestamptz NOT NULL DEFAULT notifier_now(),
    PRIMARY KEY (quiz_id, member_id)
);
CREATE INDEX quiz_results_member_idx ON quiz_results (member_id);
CREATE INDEX quiz_results_open_idx ON quiz_results (quiz_id) WHERE NOT final;  -- finalised at close

-- A lesson's quiz is a quiz row (its notice is the lesson's); lessons.quiz (free-form JSON) stays
-- readable for lessons written before.
ALTER TABLE lessons ADD COLUMN quiz_id uuid REFERENCES quizzes (id) ON DELETE SET NULL;

-- An Idempotency-Key of POST /v1/quizzes names the quiz's notice, or none (a quiz not sent yet).
ALTER TABLE idempotency_keys ALTER COLUMN notice_id DROP NOT NULL;
