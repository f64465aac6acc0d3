-- The schema as it was before the fix: a row is written only when a task
-- finishes, so `running` is not a permitted status. finished_at, the token
-- counts, cost_usd, turns and artifacts are NULLable.
--
-- Native types: uuid ids, timestamptz times (microsecond precision, the
-- precision tasktrail stores everywhere), jsonb artifacts. Counters are
-- bigint so every u32 the domain allows fits. "user" is a reserved word in
-- Postgres and is quoted wherever it appears.
CREATE TABLE task_history (
    id uuid PRIMARY KEY,
    repo text NOT NULL,
    issue_number bigint NOT NULL,
    "user" text NOT NULL,
    agent text NOT NULL,
    agent_type text NOT NULL,
    model text NOT NULL,
    provider text NOT NULL,
    status text NOT NULL
        CONSTRAINT task_history_status_check
        CHECK (status IN ('success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill')),
    started_at timestamptz NOT NULL,
    finished_at timestamptz,
    input_tokens bigint,
    output_tokens bigint,
    cost_usd double precision,
    turns bigint,
    artifacts jsonb
);

CREATE INDEX task_history_repo_issue ON task_history (repo, issue_number);
