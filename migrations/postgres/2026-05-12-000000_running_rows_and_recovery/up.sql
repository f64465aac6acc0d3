-- The fix (seed issue #1107): a row from the moment a task starts.
--
-- Postgres alters the CHECK in place (no table rebuild). Rows already
-- `interrupted` get finished_at = NULL (they never finished); the time that
-- was there moves to interrupted_at, so nothing is lost. Diesel runs this
-- file in one transaction: the upgrade happens whole or not at all.
ALTER TABLE task_history DROP CONSTRAINT task_history_status_check;
ALTER TABLE task_history
    ADD CONSTRAINT task_history_status_check
    CHECK (status IN ('running', 'success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill'));
ALTER TABLE task_history ALTER COLUMN status SET DEFAULT 'running';

ALTER TABLE task_history
    -- The worker boot that started the task (NULL on rows written before the fix).
    ADD COLUMN worker_id uuid,
    ADD COLUMN interrupted_at timestamptz,
    ADD COLUMN interrupt_reason text,
    -- The worker that marked the row interrupted: its owner on shutdown, or
    -- the worker whose boot-time sweep recovered it.
    ADD COLUMN interrupted_by uuid;

UPDATE task_history
SET interrupted_at = finished_at, finished_at = NULL
WHERE status = 'interrupted';

ALTER TABLE task_history
    ADD CONSTRAINT task_history_running_not_finished
        CHECK (status <> 'running' OR finished_at IS NULL),
    ADD CONSTRAINT task_history_interrupted_not_finished
        CHECK (status <> 'interrupted' OR finished_at IS NULL);

CREATE INDEX task_history_started_at ON task_history (started_at);
-- The recovery sweep reads running rows only: its cost follows the number of
-- running rows, not the size of the history.
CREATE INDEX task_history_running_by_worker ON task_history (worker_id) WHERE status = 'running';

-- heartbeat_at is written with the database's own clock (now()), never a
-- worker's: liveness across hosts is judged against one clock.
CREATE TABLE workers (
    id uuid PRIMARY KEY,
    host text NOT NULL,
    pid bigint NOT NULL,
    process_start_marker text NOT NULL,
    started_at timestamptz NOT NULL,
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    state text NOT NULL DEFAULT 'alive' CHECK (state IN ('alive', 'stopped', 'dead')),
    stopped_at timestamptz
);

CREATE TABLE claude_sdk_sessions (
    -- Byte order ("C"), as every backend sorts session ids.
    session_id text COLLATE "C" PRIMARY KEY,
    task_id uuid NOT NULL REFERENCES task_history (id),
    repo text NOT NULL,
    issue_number bigint NOT NULL,
    agent text NOT NULL,
    created_at timestamptz NOT NULL,
    invalidated_at timestamptz,
    invalidation_reason text
);

CREATE INDEX claude_sdk_sessions_task ON claude_sdk_sessions (task_id);
CREATE INDEX claude_sdk_sessions_resume ON claude_sdk_sessions (repo, issue_number, agent, created_at);
