-- Back to the pre-fix schema. `running` cannot be represented there, so
-- running rows become `interrupted`; an interrupted row's time goes back to
-- finished_at. Workers and sessions are dropped.
DROP TABLE claude_sdk_sessions;
DROP TABLE workers;

DROP INDEX task_history_running_by_worker;
DROP INDEX task_history_started_at;

ALTER TABLE task_history
    DROP CONSTRAINT task_history_running_not_finished,
    DROP CONSTRAINT task_history_interrupted_not_finished;

UPDATE task_history
SET status = 'interrupted', finished_at = interrupted_at
WHERE status IN ('running', 'interrupted');

ALTER TABLE task_history
    DROP COLUMN worker_id,
    DROP COLUMN interrupted_at,
    DROP COLUMN interrupt_reason,
    DROP COLUMN interrupted_by;

ALTER TABLE task_history ALTER COLUMN status DROP DEFAULT;
ALTER TABLE task_history DROP CONSTRAINT task_history_status_check;
ALTER TABLE task_history
    ADD CONSTRAINT task_history_status_check
    CHECK (status IN ('success', 'failure', 'cancelled', 'interrupted', 'aborted_no_skill'));
