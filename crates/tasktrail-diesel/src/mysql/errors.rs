//! MySQL / MariaDB errors onto public kinds: [`MYSQL_ERRORS`], one table
//! keyed by the server's error number (the mapping through it is
//! `crate::error_table`'s, shared with Postgres).
//!
//! diesel-async reads a server error's number into a Diesel kind for the
//! constraint errors (duplicate key, CHECK, NOT NULL, foreign key,
//! read-only transaction) and keeps only the message for the rest; a
//! client-side failure (the socket, the protocol) arrives as the
//! `mysql_async` error's text, which starts with its variant (`Input/output
//! error`, `Driver error`). So an entry names its number and recognises it
//! either by Diesel's kind or by the server's fixed English message for
//! that number (every session sets `lc_messages = 'en_US'`).

use diesel::r2d2::PoolError;
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use tasktrail_core::StorageError;

use crate::error_table::ErrorClass::{ConstraintRejected, NotOurs, Refused, Transient};
pub(crate) use crate::error_table::Redacted;
use crate::error_table::{kind, text, ErrorTable};
use crate::secrets::Secrets;
use crate::tx::ErrorDialect;

/// Every condition this backend classifies: `Kind` entries first, then
/// the first `Text` entry that matches. Anything else is
/// [`StorageError::Other`].
pub(crate) const MYSQL_ERRORS: ErrorTable = ErrorTable {
    dialect: "mysql",
    entries: &[
        // Constraints: a row tasktrail would never write.
        kind(
            "3819, 4025",
            DatabaseErrorKind::CheckViolation,
            ConstraintRejected,
        ),
        text("4025", &["constraint", "failed for"], ConstraintRejected),
        kind(
            "1048, 1364",
            DatabaseErrorKind::NotNullViolation,
            ConstraintRejected,
        ),
        kind(
            "1216, 1217, 1451, 1452",
            DatabaseErrorKind::ForeignKeyViolation,
            ConstraintRejected,
        ),
        text("1406", &["data too long for column"], ConstraintRejected),
        text("1265", &["data truncated for column"], ConstraintRejected),
        text("1366", &["incorrect", "value:"], ConstraintRejected),
        // Contention: the transaction was chosen to give way; retry.
        text(
            "1213",
            &["deadlock found when trying to get lock"],
            Transient,
        ),
        text("1205", &["lock wait timeout exceeded"], Transient),
        // The server: out of connections, shutting down, read-only, full.
        text("1040", &["too many connections"], Transient),
        text(
            "1203",
            &["already has more than", "max_user_connections"],
            Transient,
        ),
        text("1053", &["server shutdown in progress"], Transient),
        text("1927", &["connection was killed"], Transient),
        text("1317", &["query execution was interrupted"], Transient),
        kind("1792", DatabaseErrorKind::ReadOnlyTransaction, Transient),
        text("1290, 1836", &["read-only"], Transient),
        text("1021", &["disk full"], Transient),
        text("1114", &["the table", "is full"], Transient),
        text("3", &["error writing file"], Transient),
        // The client lost or never had the connection (mysql_async's I/O and
        // driver errors, and r2d2's checkout timeout).
        text("client", &["input/output error"], Transient),
        text("client", &["connection to the server is closed"], Transient),
        text("client", &["driver error"], Transient),
        text("client", &["can't connect to mysql server"], Transient),
        text("r2d2", &["timed out waiting for connection"], Transient),
        // The configuration: login, database, privileges.
        text("1045", &["access denied for user"], Refused),
        text("1044, 1142, 1143, 1227", &["access denied"], Refused),
        text("1142", &["command denied to user"], Refused),
        text("1049", &["unknown database"], Refused),
        // The schema is not what tasktrail made.
        text("1146", &["doesn't exist"], NotOurs),
        text("1054", &["unknown column"], NotOurs),
    ],
};

/// The MySQL dialect of [`ErrorDialect`].
impl ErrorDialect for diesel::mysql::Mysql {
    fn map_error(error: DieselError) -> StorageError {
        map_error(error)
    }
}

/// Maps a Diesel error onto a public kind through [`MYSQL_ERRORS`].
/// Unique violations are mapped by the callers, which know which row they
/// were writing.
pub(crate) fn map_error(error: DieselError) -> StorageError {
    MYSQL_ERRORS.map_error(error)
}

/// A failure to connect (see [`ErrorTable::connection_error`]).
pub(super) fn connection_error(error: &ConnectionError, secrets: &Secrets) -> StorageError {
    MYSQL_ERRORS.connection_error(error, secrets)
}

/// A failed pool checkout (see [`ErrorTable::pool_error`]).
pub(super) fn pool_error(error: &PoolError, secrets: &Secrets) -> StorageError {
    MYSQL_ERRORS.pool_error(error, secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    fn unknown(message: &str) -> DieselError {
        server(DatabaseErrorKind::Unknown, message)
    }

    #[test]
    fn every_entry_is_recognised_by_the_text_the_server_or_client_sends() {
        // The servers' own messages (MariaDB 10.11 and MySQL 8 wording).
        let transient = [
            "Deadlock found when trying to get lock; try restarting transaction",
            "Lock wait timeout exceeded; try restarting transaction",
            "Too many connections",
            "User root already has more than 'max_user_connections' active connections",
            "Server shutdown in progress",
            "Connection was killed",
            "Query execution was interrupted",
            "The MariaDB server is running with the --read-only option so it cannot execute this statement",
            "Disk full (/var/tmp/#sql_1.MAI); waiting for someone to free some space... (errno: 28 \"No space left on device\")",
            "The table 'task_history' is full",
            "Error writing file './test/task_history.ibd' (Errcode: 28 \"No space left on device\")",
            "Input/output error: Connection refused (os error 111)",
            "Driver error: `Connection to the server is closed.'",
        ];
        for message in transient {
            assert!(
                matches!(
                    map_error(unknown(message)),
                    StorageError::Unavailable { .. }
                ),
                "{message}"
            );
        }
        let refused = [
            "Access denied for user 'app'@'127.0.0.1' (using password: YES)",
            "Access denied for user 'app'@'%' to database 'prod'",
            "INSERT command denied to user 'reader'@'localhost' for table `test`.`task_history`",
            "Unknown database 'nosuch'",
        ];
        for message in refused {
            assert!(
                matches!(
                    map_error(unknown(message)),
                    StorageError::AccessDenied { .. }
                ),
                "{message}"
            );
        }
        let constraint = [
            "CONSTRAINT `task_history_status_check` failed for `test`.`task_history`",
            "Data too long for column 'repo' at row 1",
            "Incorrect datetime value: 'x' for column `test`.`task_history`.`started_at` at row 1",
        ];
        for message in constraint {
            assert!(
                matches!(map_error(unknown(message)), StorageError::CorruptRow { .. }),
                "{message}"
            );
        }
        assert!(matches!(
            map_error(server(
                DatabaseErrorKind::CheckViolation,
                "Check constraint violated"
            )),
            StorageError::CorruptRow { .. }
        ));
        assert!(matches!(
            map_error(server(
                DatabaseErrorKind::ReadOnlyTransaction,
                "Cannot execute statement in a READ ONLY transaction"
            )),
            StorageError::Unavailable { .. }
        ));
        assert!(matches!(
            map_error(unknown("Table 'test.task_history' doesn't exist")),
            StorageError::Incompatible { .. }
        ));
    }

    #[test]
    fn a_message_that_merely_contains_a_word_of_an_entry_is_not_classified() {
        for message in [
            "full",
            "denied",
            "Syntax error near 'deadlock'",
            "Duplicate entry 'x' for key 'PRIMARY'",
        ] {
            assert!(
                matches!(map_error(unknown(message)), StorageError::Other { .. }),
                "{message}"
            );
        }
    }

    #[test]
    fn a_connection_failure_is_transient_unless_the_configuration_was_refused() {
        let secrets = Secrets::of("mysql://app:hunter2@db:3306/tasks");
        let refused = ConnectionError::CouldntSetupConfiguration(unknown(
            "Access denied for user 'app'@'10.0.0.1' (using password: YES) hunter2",
        ));
        let error = connection_error(&refused, &secrets);
        assert!(matches!(error, StorageError::AccessDenied { .. }));
        assert!(!error.to_string().contains("hunter2"));
        let down = ConnectionError::BadConnection(
            "Input/output error: Connection refused (os error 111)".to_owned(),
        );
        assert!(matches!(
            connection_error(&down, &secrets),
            StorageError::Unavailable { .. }
        ));
        let url = ConnectionError::InvalidConnectionUrl("mysql://app:hunter2@".to_owned());
        let error = connection_error(&url, &secrets);
        assert!(matches!(error, StorageError::Other { .. }));
        assert!(!error.to_string().contains("hunter2"));
    }
}
