DROP INDEX recovery_reports_owed;
DROP TABLE recovery_reports;
