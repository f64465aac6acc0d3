DROP TABLE recovery_reports;
DROP TABLE claude_sdk_sessions;
DROP TABLE workers;
DROP TABLE task_history;
