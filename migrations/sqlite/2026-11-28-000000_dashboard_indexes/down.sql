DROP INDEX task_history_repo_started;
DROP INDEX task_history_status_started;
