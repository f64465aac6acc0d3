//! Postgres errors onto public kinds: [`POSTGRES_ERRORS`], the one table
//! for them, keyed by SQLSTATE (the mapping through it is
//! `crate::error_table`'s, shared with MySQL).

use diesel::r2d2::PoolError;
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use tasktrail_core::StorageError;

use crate::error_table::ErrorClass::{ConstraintRejected, NotOurs, Refused, Transient};
pub(crate) use crate::error_table::Redacted;
use crate::error_table::{kind, text, ErrorTable};
use crate::secrets::Secrets;
use crate::tx::ErrorDialect;

/// Every Postgres error condition this backend classifies, keyed by
/// SQLSTATE: the one table for Postgres errors.
///
/// Diesel 2.3 keeps the SQLSTATE of a statement error only as the few
/// kinds it maps it to (the `Kind` entries: class 08 and a connection
/// libpq reports bad → `ClosedConnection`, 40001 → `SerializationFailure`,
/// 25006 → `ReadOnlyTransaction`, 23514 / 23502 → `CheckViolation` /
/// `NotNullViolation`, 23505 → `UniqueViolation`, which the callers map);
/// its error information carries no SQLSTATE field and cannot be
/// downcast, so for the other codes (53100 disk full, 57P01 admin
/// shutdown, 40P01 deadlock, 55P03 lock not available...) the narrowest
/// stable signal left is the server's message for that code (English
/// unless the server sets `lc_messages` otherwise). libpq's connection
/// errors and r2d2's pool time-outs have no SQLSTATE at all. `Kind`
/// entries decide first. Each entry has its own test.
pub(crate) const POSTGRES_ERRORS: ErrorTable = ErrorTable {
    dialect: "postgres",
    entries: &[
        kind(
            "08000 / 08001 / 08004 / 08006, or libpq CONNECTION_BAD",
            DatabaseErrorKind::ClosedConnection,
            Transient,
        ),
        kind(
            "none: libpq could not send the statement",
            DatabaseErrorKind::UnableToSendCommand,
            Transient,
        ),
        kind(
            "40001 serialization_failure",
            DatabaseErrorKind::SerializationFailure,
            Transient,
        ),
        // A standby or a demoted primary after a failover, until the
        // connection reaches the new primary.
        kind(
            "25006 read_only_sql_transaction",
            DatabaseErrorKind::ReadOnlyTransaction,
            Transient,
        ),
        kind(
            "23514 check_violation",
            DatabaseErrorKind::CheckViolation,
            ConstraintRejected,
        ),
        kind(
            "23502 not_null_violation",
            DatabaseErrorKind::NotNullViolation,
            ConstraintRejected,
        ),
        // The server ended the session: admin shutdown / pg_terminate_backend,
        // crash shutdown, idle_session_timeout.
        text(
            "57P01 admin_shutdown, 57P02 crash_shutdown, 57P05 idle_session_timeout",
            &["terminating connection"],
            Transient,
        ),
        // Starting up, shutting down, in recovery.
        text(
            "57P03 cannot_connect_now",
            &["the database system is"],
            Transient,
        ),
        // libpq: the socket closed under a statement, or no session at all.
        text("none (libpq)", &["server closed the connection"], Transient),
        text("none (libpq)", &["no connection to the server"], Transient),
        text(
            "none (libpq)",
            &["could not send data to server"],
            Transient,
        ),
        text(
            "none (libpq)",
            &["could not receive data from server"],
            Transient,
        ),
        text("none (libpq)", &["ssl syscall error"], Transient),
        // libpq: nothing listens (a restart), or the host cannot be reached.
        text("none (libpq)", &["connection refused"], Transient),
        text("none (libpq)", &["timeout expired"], Transient),
        // r2d2: no pooled connection could be had in time.
        text(
            "none (r2d2)",
            &["timed out waiting for connection"],
            Transient,
        ),
        text(
            "53300 too_many_connections",
            &["too many clients"],
            Transient,
        ),
        text(
            "53300 too_many_connections",
            &["too many connections"],
            Transient,
        ),
        // PgBouncer: its client limit (`max_client_conn`), a client that
        // waited too long for a server connection (`query_wait_timeout`), a
        // server it cannot reach or whose connection it lost.
        text(
            "08P01 (PgBouncer)",
            &["no more connections allowed"],
            Transient,
        ),
        text("08P01 (PgBouncer)", &["query_wait_timeout"], Transient),
        text(
            "08P01 (PgBouncer)",
            &["pgbouncer cannot connect to server"],
            Transient,
        ),
        text("08P01 (PgBouncer)", &["server conn crashed"], Transient),
        text(
            "08P01 (PgBouncer)",
            &["server login has been failing"],
            Transient,
        ),
        text("53100 disk_full", &["no space left on device"], Transient),
        text("53100 disk_full", &["could not extend file"], Transient),
        text("53200 out_of_memory", &["out of memory"], Transient),
        text("53200 out_of_memory", &["out of shared memory"], Transient),
        text("40P01 deadlock_detected", &["deadlock detected"], Transient),
        // 40001 as text: a standby's conflict with recovery arrives this way
        // through a pooler that rewrites the code.
        text(
            "40001 serialization_failure",
            &["could not serialize access"],
            Transient,
        ),
        // A statement or lock timeout cancelled the statement.
        text(
            "57014 query_canceled, 55P03 lock_not_available",
            &["canceling statement"],
            Transient,
        ),
        text(
            "55P03 lock_not_available",
            &["could not obtain lock"],
            Transient,
        ),
        text(
            "25006 read_only_sql_transaction",
            &["read-only transaction"],
            Transient,
        ),
        // The login was refused.
        text(
            "28P01 invalid_password",
            &["authentication failed"],
            Refused,
        ),
        text(
            "28000 invalid_authorization_specification",
            &["no pg_hba.conf entry"],
            Refused,
        ),
        text(
            "3D000 invalid_catalog_name",
            &["database \"", "\" does not exist"],
            Refused,
        ),
        text(
            "28000 invalid_authorization_specification",
            &["role \"", "\" does not exist"],
            Refused,
        ),
        text(
            "42501 insufficient_privilege",
            &["permission denied"],
            Refused,
        ),
        // The schema is not tasktrail's.
        text(
            "42P01 undefined_table",
            &["relation \"", "\" does not exist"],
            NotOurs,
        ),
        text(
            "42703 undefined_column",
            &["column \"", "\" does not exist"],
            NotOurs,
        ),
    ],
};

/// A failure to connect (see [`ErrorTable::connection_error`]).
pub(super) fn connection_error(error: &ConnectionError, secrets: &Secrets) -> StorageError {
    POSTGRES_ERRORS.connection_error(error, secrets)
}

/// A failed pool checkout (see [`ErrorTable::pool_error`]).
pub(super) fn pool_error(error: &PoolError, secrets: &Secrets) -> StorageError {
    POSTGRES_ERRORS.pool_error(error, secrets)
}

/// The Postgres dialect of [`ErrorDialect`].
impl ErrorDialect for diesel::pg::Pg {
    fn map_error(error: DieselError) -> StorageError {
        map_error(error)
    }
}

/// Maps a Diesel error onto a public kind through [`POSTGRES_ERRORS`].
/// Unique violations are mapped by the callers, which know which row they
/// were writing.
pub(crate) fn map_error(error: DieselError) -> StorageError {
    POSTGRES_ERRORS.map_error(error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn statement_error(kind: DatabaseErrorKind, message: &str) -> StorageError {
        map_error(crate::error_text::database_error(kind, message))
    }

    /// What a text maps to, as a statement error (Diesel's kind `Unknown`,
    /// so only the table decides) and as a connection error.
    fn kinds_of(text: &str) -> (StorageError, StorageError) {
        let secrets = Secrets::of("postgres://u@h/db");
        (
            statement_error(DatabaseErrorKind::Unknown, text),
            connection_error(&ConnectionError::BadConnection(text.to_owned()), &secrets),
        )
    }

    fn transient(text: &str) {
        let (statement, connection) = kinds_of(text);
        assert!(statement.is_transient(), "{text}: {statement:?}");
        assert!(connection.is_transient(), "{text}: {connection:?}");
    }

    fn refused(text: &str) {
        let (statement, connection) = kinds_of(text);
        assert!(
            matches!(statement, StorageError::AccessDenied { .. }),
            "{text}: {statement:?}"
        );
        assert!(
            matches!(connection, StorageError::AccessDenied { .. }),
            "{text}: {connection:?}"
        );
    }

    fn not_ours(text: &str) {
        let (statement, _) = kinds_of(text);
        assert!(
            matches!(statement, StorageError::Incompatible { .. }),
            "{text}: {statement:?}"
        );
    }

    /// One test per entry of POSTGRES_ERRORS, with the server's or
    /// libpq's own text.
    macro_rules! classified {
        ($($name:ident: $check:ident($text:expr);)+) => {
            $(#[test] fn $name() { $check($text); })+

            #[test]
            fn every_table_entry_has_its_test() {
                let texts: &[&str] = &[$($text),+];
                for entry in POSTGRES_ERRORS.entries {
                    let crate::error_table::ErrorSignal::Text(pieces) = entry.signal else {
                        continue;
                    };
                    assert!(
                        texts.iter().any(|text| {
                            let text = text.to_ascii_lowercase();
                            pieces.iter().all(|piece| text.contains(piece))
                        }),
                        "no test for the entry {pieces:?}"
                    );
                }
            }
        };
    }

    classified! {
        admin_shutdown_57p01_is_transient: transient("FATAL:  terminating connection due to administrator command");
        database_starting_up_57p03_is_transient: transient("FATAL:  the database system is starting up");
        server_closed_the_connection_is_transient: transient("server closed the connection unexpectedly\n\tThis probably means the server terminated abnormally");
        no_connection_is_transient: transient("no connection to the server");
        could_not_send_is_transient: transient("could not send data to server: Broken pipe");
        could_not_receive_is_transient: transient("could not receive data from server: Connection reset by peer");
        ssl_syscall_is_transient: transient("SSL SYSCALL error: EOF detected");
        connection_refused_is_transient: transient("connection to server at \"127.0.0.1\", port 5 failed: Connection refused");
        connect_timeout_is_transient: transient("connection to server at \"10.0.0.1\", port 5432 failed: timeout expired");
        pool_timeout_is_transient: transient("timed out waiting for connection");
        too_many_clients_53300_is_transient: transient("FATAL:  sorry, too many clients already");
        too_many_connections_53300_is_transient: transient("FATAL:  too many connections for role \"app\"");
        pgbouncer_max_client_conn_is_transient: transient("ERROR:  no more connections allowed (max_client_conn)");
        pgbouncer_query_wait_timeout_is_transient: transient("ERROR:  query_wait_timeout");
        pgbouncer_cannot_connect_is_transient: transient("ERROR:  pgbouncer cannot connect to server");
        pgbouncer_server_crashed_is_transient: transient("ERROR:  server conn crashed?");
        pgbouncer_login_failing_is_transient: transient("ERROR:  server login has been failing, try again later (server_login_retry)");
        disk_full_53100_is_transient: transient("could not write to file \"base/pgsql_tmp\": No space left on device");
        could_not_extend_53100_is_transient: transient("could not extend file \"base/16384/16385\": wrote only 4096 of 8192 bytes");
        out_of_memory_53200_is_transient: transient("out of memory");
        out_of_shared_memory_53200_is_transient: transient("out of shared memory");
        deadlock_40p01_is_transient: transient("deadlock detected");
        serialization_40001_is_transient: transient("could not serialize access due to concurrent update");
        statement_cancelled_57014_is_transient: transient("canceling statement due to statement timeout");
        lock_not_available_55p03_is_transient: transient("could not obtain lock on row in relation \"workers\"");
        read_only_25006_is_transient: transient("cannot execute UPDATE in a read-only transaction");
        wrong_password_28p01_is_refused: refused("FATAL:  password authentication failed for user \"app\"");
        no_hba_entry_28000_is_refused: refused("FATAL:  no pg_hba.conf entry for host \"10.0.0.2\", user \"app\", database \"trail\"");
        unknown_database_3d000_is_refused: refused("FATAL:  database \"nope\" does not exist");
        unknown_role_28000_is_refused: refused("FATAL:  role \"nobody\" does not exist");
        insufficient_privilege_42501_is_refused: refused("permission denied for table task_history");
        missing_relation_42p01_is_not_ours: not_ours("relation \"task_history\" does not exist");
        missing_column_42703_is_not_ours: not_ours("column \"interrupted_by\" does not exist");
    }

    #[test]
    fn diesel_kinds_decide_before_any_text() {
        let mut kinds = 0;
        for entry in POSTGRES_ERRORS.entries {
            let crate::error_table::ErrorSignal::Kind(kind) = entry.signal else {
                continue;
            };
            kinds += 1;
            // A text that alone would say "refused": the kind decides.
            let error = statement_error(kind, "permission denied for table task_history");
            let expected = match entry.class {
                Transient => matches!(error, StorageError::Unavailable { .. }),
                ConstraintRejected => matches!(error, StorageError::CorruptRow { .. }),
                Refused => matches!(error, StorageError::AccessDenied { .. }),
                NotOurs => matches!(error, StorageError::Incompatible { .. }),
            };
            assert!(expected, "{} ({kind:?}): {error:?}", entry.code);
        }
        assert_eq!(kinds, 6, "a new kind entry needs its place in this test");
    }

    #[test]
    fn a_word_of_a_message_is_no_match() {
        for text in ["the table is full", "disk", "locked", "shutdown"] {
            let (statement, _) = kinds_of(text);
            assert!(
                matches!(statement, StorageError::Other { .. }),
                "{text}: {statement:?}"
            );
        }
    }

    #[test]
    fn unknown_texts_are_permanent_statements_but_transient_connections() {
        let (statement, connection) = kinds_of("something new went wrong");
        assert!(
            matches!(statement, StorageError::Other { .. }),
            "{statement:?}"
        );
        assert!(connection.is_transient(), "{connection:?}");
    }

    /// The conditions a test can make a real server raise, raised for real:
    /// the SQLSTATE each entry is keyed by arrives as the kind or the text
    /// the table expects.
    #[cfg(feature = "testing")]
    #[test]
    fn the_server_raises_the_conditions_the_table_expects() {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let Some(url) = crate::postgres::test_postgres_url() else {
            return;
        };
        let mut connection = diesel::pg::PgConnection::establish(&url).expect("connect");
        connection
            .batch_execute(
                "CREATE TEMP TABLE t (id int PRIMARY KEY, v text NOT NULL CHECK (v <> 'x'))",
            )
            .expect("a temporary table");
        let mut raised = |sql: &str| {
            let error = connection.batch_execute(sql).expect_err(sql);
            let condition = match &error {
                DieselError::DatabaseError(kind, info) => {
                    POSTGRES_ERRORS.condition(*kind, info.message())
                }
                _ => None,
            };
            (condition.map(|entry| entry.code), error)
        };
        let cases: &[(&str, &str)] = &[
            ("SELECT * FROM no_such_table_here", "42P01 undefined_table"),
            ("SELECT nope FROM t", "42703 undefined_column"),
            ("INSERT INTO t VALUES (1, 'x')", "23514 check_violation"),
            ("INSERT INTO t VALUES (1, NULL)", "23502 not_null_violation"),
            (
                "BEGIN READ ONLY; CREATE TABLE never_created (i int); COMMIT",
                "25006 read_only_sql_transaction",
            ),
            (
                "ROLLBACK; SET statement_timeout = 10; SELECT pg_sleep(5)",
                "57014 query_canceled, 55P03 lock_not_available",
            ),
        ];
        for (sql, sqlstate) in cases {
            let (found, error) = raised(sql);
            assert_eq!(found, Some(*sqlstate), "{sql}: {error}");
        }
        // 57P01: the server ends the session; libpq then reports the
        // connection bad, which Diesel reads as `ClosedConnection`.
        let (found, error) = raised("SELECT pg_terminate_backend(pg_backend_pid())");
        assert!(found.is_some(), "{error}");
        assert!(map_error(error).is_transient());
    }
}
