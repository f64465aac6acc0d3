//! Postgres errors onto public kinds.

use std::fmt;

use diesel::r2d2::PoolError;
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use tasktrail_core::StorageError;

use crate::secrets::Secrets;
use crate::tx::ErrorDialect;

/// An error whose text was scrubbed of the URL's secrets. The original error
/// is not kept as a source: its text may hold them.
#[derive(Debug)]
pub(crate) struct Redacted(pub(crate) String);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

/// What a Postgres error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PostgresErrorClass {
    /// Retrying later may succeed: [`StorageError::Unavailable`].
    Transient,
    /// The server refuses this configuration (login, database, permission):
    /// [`StorageError::AccessDenied`].
    Refused,
    /// The schema is not tasktrail's: [`StorageError::Incompatible`].
    NotOurs,
}

/// The Postgres error texts this backend classifies, and how: the one place
/// where Postgres errors are told apart by text. Diesel exposes the SQLSTATE
/// only as a few kinds (class 08 and a connection libpq reports bad →
/// `ClosedConnection`; `UnableToSendCommand`; 40001 → `SerializationFailure`;
/// 25006 → `ReadOnlyTransaction`), which [`map_error`] reads first; libpq's
/// connection errors and r2d2's pool timeouts are text only. An entry
/// matches when every one of its pieces is in the lower-cased text. Each
/// entry has its own test.
pub(crate) const POSTGRES_ERROR_MESSAGES: &[(&[&str], PostgresErrorClass)] = &[
    // 57P01 admin shutdown / pg_terminate_backend, 57P02 crash shutdown,
    // 57P05 idle_session_timeout: the server ended the session.
    (&["terminating connection"], PostgresErrorClass::Transient),
    // 57P03 cannot connect now: starting up, shutting down, in recovery.
    (&["the database system is"], PostgresErrorClass::Transient),
    // libpq: the socket closed under a statement, or no session at all.
    (
        &["server closed the connection"],
        PostgresErrorClass::Transient,
    ),
    (
        &["no connection to the server"],
        PostgresErrorClass::Transient,
    ),
    (
        &["could not send data to server"],
        PostgresErrorClass::Transient,
    ),
    (
        &["could not receive data from server"],
        PostgresErrorClass::Transient,
    ),
    (&["ssl syscall error"], PostgresErrorClass::Transient),
    // libpq: nothing listens (a restart), or the host cannot be reached.
    (&["connection refused"], PostgresErrorClass::Transient),
    (&["timeout expired"], PostgresErrorClass::Transient),
    // r2d2: no pooled connection could be had in time.
    (
        &["timed out waiting for connection"],
        PostgresErrorClass::Transient,
    ),
    // 53300 too many connections.
    (&["too many clients"], PostgresErrorClass::Transient),
    (&["too many connections"], PostgresErrorClass::Transient),
    // PgBouncer: its client limit (`max_client_conn`), a client that
    // waited too long for a server connection (`query_wait_timeout`), a
    // server it cannot reach or whose connection it lost.
    (
        &["no more connections allowed"],
        PostgresErrorClass::Transient,
    ),
    (&["query_wait_timeout"], PostgresErrorClass::Transient),
    (
        &["pgbouncer cannot connect to server"],
        PostgresErrorClass::Transient,
    ),
    (&["server conn crashed"], PostgresErrorClass::Transient),
    (
        &["server login has been failing"],
        PostgresErrorClass::Transient,
    ),
    // 53100 disk full, 53200 out of memory.
    (&["no space left on device"], PostgresErrorClass::Transient),
    (&["could not extend file"], PostgresErrorClass::Transient),
    (&["out of memory"], PostgresErrorClass::Transient),
    (&["out of shared memory"], PostgresErrorClass::Transient),
    // 40P01 deadlock; 40001 serialization failure (also a Diesel kind),
    // including a standby's conflict with recovery.
    (&["deadlock detected"], PostgresErrorClass::Transient),
    (
        &["could not serialize access"],
        PostgresErrorClass::Transient,
    ),
    // 57014 / 55P03: a statement or lock timeout cancelled the statement.
    (&["canceling statement"], PostgresErrorClass::Transient),
    // 25006 (also a Diesel kind): a standby or a demoted primary after a
    // failover, until the connection reaches the new primary.
    (&["read-only transaction"], PostgresErrorClass::Transient),
    // 28000 / 28P01: the login was refused.
    (&["authentication failed"], PostgresErrorClass::Refused),
    (&["no pg_hba.conf entry"], PostgresErrorClass::Refused),
    // 3D000 unknown database; 28000 unknown role.
    (
        &["database \"", "\" does not exist"],
        PostgresErrorClass::Refused,
    ),
    (
        &["role \"", "\" does not exist"],
        PostgresErrorClass::Refused,
    ),
    // 42501 insufficient privilege.
    (&["permission denied"], PostgresErrorClass::Refused),
    // 42P01 / 42703: the schema is not tasktrail's.
    (&["relation", "does not exist"], PostgresErrorClass::NotOurs),
    (&["column", "does not exist"], PostgresErrorClass::NotOurs),
];

/// The class of a Postgres error text, from [`POSTGRES_ERROR_MESSAGES`].
pub(crate) fn classify_postgres_text(text: &str) -> Option<PostgresErrorClass> {
    let text = text.to_ascii_lowercase();
    POSTGRES_ERROR_MESSAGES
        .iter()
        .find(|(pieces, _)| pieces.iter().all(|piece| text.contains(piece)))
        .map(|(_, class)| *class)
}

pub(super) fn connection_error(error: &ConnectionError, secrets: &Secrets) -> StorageError {
    let message = secrets.scrub(error.to_string().trim_end());
    match error {
        ConnectionError::InvalidConnectionUrl(_) => StorageError::Other {
            source: Box::new(Redacted(format!("invalid postgres URL: {message}"))),
        },
        // A refused login or an unknown database is permanent; anything else
        // about reaching the server (refused, unreachable, timed out,
        // starting up, too many clients) may succeed later.
        _ => connection_text_error(format!("cannot connect to postgres: {message}")),
    }
}

/// A connection failure known only by its (scrubbed) text: permanent when
/// [`POSTGRES_ERROR_MESSAGES`] says the server refused the configuration,
/// transient otherwise.
fn connection_text_error(message: String) -> StorageError {
    match classify_postgres_text(&message) {
        Some(PostgresErrorClass::Refused) => StorageError::AccessDenied {
            source: Box::new(Redacted(message)),
        },
        _ => StorageError::Unavailable {
            source: Box::new(Redacted(message)),
        },
    }
}

/// r2d2 gave up waiting for a connection; its text carries the last
/// connection error, which decides transient or permanent.
pub(super) fn pool_error(error: &PoolError, secrets: &Secrets) -> StorageError {
    connection_text_error(format!(
        "no postgres connection available: {}",
        secrets.scrub(error.to_string().trim_end())
    ))
}

/// The Postgres dialect of [`ErrorDialect`].
impl ErrorDialect for diesel::pg::Pg {
    fn map_error(error: DieselError) -> StorageError {
        map_error(error)
    }
}

/// Maps a Diesel error onto a public kind, from Diesel's error kind first
/// (the SQLSTATE it exposes) and then [`POSTGRES_ERROR_MESSAGES`]. Unique
/// violations are mapped by the callers, which know which row they were
/// writing.
pub(crate) fn map_error(error: DieselError) -> StorageError {
    let (kind, message) = match &error {
        DieselError::DatabaseError(kind, info) => (*kind, info.message().to_ascii_lowercase()),
        // A COMMIT that failed and whose rollback failed too: the
        // connection is usually gone.
        DieselError::RollbackErrorOnCommit { commit_error, .. } => match &**commit_error {
            DieselError::DatabaseError(kind, info) => (*kind, info.message().to_ascii_lowercase()),
            _ => {
                return StorageError::Other {
                    source: Box::new(error),
                }
            }
        },
        _ => {
            return StorageError::Other {
                source: Box::new(error),
            }
        }
    };
    if matches!(
        kind,
        DatabaseErrorKind::ClosedConnection
            | DatabaseErrorKind::UnableToSendCommand
            | DatabaseErrorKind::SerializationFailure
            | DatabaseErrorKind::ReadOnlyTransaction
    ) {
        return StorageError::Unavailable {
            source: Box::new(error),
        };
    }
    if matches!(
        kind,
        DatabaseErrorKind::CheckViolation | DatabaseErrorKind::NotNullViolation
    ) {
        return StorageError::CorruptRow {
            detail: format!("a constraint rejected the write ({message})"),
        };
    }
    match classify_postgres_text(&message) {
        Some(PostgresErrorClass::Transient) => StorageError::Unavailable {
            source: Box::new(error),
        },
        Some(PostgresErrorClass::Refused) => StorageError::AccessDenied {
            source: Box::new(error),
        },
        Some(PostgresErrorClass::NotOurs) => StorageError::Incompatible {
            detail: format!("the database schema is not tasktrail's ({message})"),
        },
        None => StorageError::Other {
            source: Box::new(error),
        },
    }
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

    /// One test per entry of POSTGRES_ERROR_MESSAGES, with the server's or
    /// libpq's own text.
    macro_rules! classified {
        ($($name:ident: $check:ident($text:expr);)+) => {
            $(#[test] fn $name() { $check($text); })+

            #[test]
            fn every_table_entry_has_its_test() {
                let texts: &[&str] = &[$($text),+];
                for (pieces, _) in POSTGRES_ERROR_MESSAGES {
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
        for kind in [
            DatabaseErrorKind::ClosedConnection,
            DatabaseErrorKind::UnableToSendCommand,
            DatabaseErrorKind::SerializationFailure,
            DatabaseErrorKind::ReadOnlyTransaction,
        ] {
            let error = statement_error(kind, "some text no table entry knows");
            assert!(error.is_transient(), "{kind:?}: {error:?}");
        }
        let error = statement_error(DatabaseErrorKind::CheckViolation, "check failed");
        assert!(
            matches!(error, StorageError::CorruptRow { .. }),
            "{error:?}"
        );
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
}
