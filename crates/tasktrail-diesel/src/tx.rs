//! Errors inside a transaction, shared by both SQL backends: the one
//! [`TxError`], and the one place where a Diesel error becomes a public
//! [`StorageError`] kind through its dialect's table ([`ErrorDialect`]:
//! `sqlite/errors.rs` classifies SQLite result codes, `postgres/errors.rs`
//! Postgres SQLSTATEs).
#![cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(dead_code)
)]

use diesel::result::{DatabaseErrorKind, Error as DieselError};
use tasktrail_core::StorageError;

/// A SQL dialect's error classification: how a Diesel error of this
/// backend maps onto a public kind. Implemented by Diesel's backend types
/// (`Sqlite`, `Pg`), so shared code generic over a connection finds its
/// table through `Connection::Backend`.
pub(crate) trait ErrorDialect {
    /// Maps a Diesel error onto a public kind. Unique violations are
    /// mapped by the callers, which know which row they were writing
    /// ([`unique_violation_or`]).
    fn map_error(error: DieselError) -> StorageError;
}

/// An error inside a transaction: either a domain answer to return as is,
/// or a Diesel error to map (Diesel's transactions need
/// `From<diesel::result::Error>`).
#[derive(Debug)]
pub(crate) enum TxError {
    /// A domain answer (`WorkerNotAlive`, `TaskNotRunning`...), returned as is.
    Storage(StorageError),
    /// A database error, mapped by the dialect's table when it leaves.
    Diesel(DieselError),
}

impl From<DieselError> for TxError {
    fn from(error: DieselError) -> Self {
        TxError::Diesel(error)
    }
}

impl From<StorageError> for TxError {
    fn from(error: StorageError) -> Self {
        TxError::Storage(error)
    }
}

impl TxError {
    /// The public error: a domain answer as is, a Diesel error through the
    /// dialect `D`'s table.
    pub(crate) fn into_storage<D: ErrorDialect>(self) -> StorageError {
        match self {
            TxError::Storage(error) => error,
            TxError::Diesel(error) => D::map_error(error),
        }
    }
}

/// Whether the database refused the write as a duplicate key (SQLite's
/// `SQLITE_CONSTRAINT_UNIQUE` / `_PRIMARYKEY` extended codes, Postgres's
/// SQLSTATE 23505: Diesel reads both codes into this one kind).
pub(crate) fn is_unique_violation(error: &DieselError) -> bool {
    matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UniqueViolation, _)
    )
}

/// `duplicate` when the database refused the write as a duplicate key,
/// the dialect's mapping otherwise.
pub(crate) fn unique_violation_or<D: ErrorDialect>(
    error: DieselError,
    duplicate: StorageError,
) -> StorageError {
    if is_unique_violation(&error) {
        duplicate
    } else {
        D::map_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_text::database_error;

    struct EverythingIsOther;

    impl ErrorDialect for EverythingIsOther {
        fn map_error(error: DieselError) -> StorageError {
            StorageError::Other {
                source: Box::new(error),
            }
        }
    }

    #[test]
    fn domain_answers_pass_and_database_errors_go_through_the_dialect() {
        let id = tasktrail_core::WorkerId::new_random();
        let answer = TxError::from(StorageError::WorkerNotAlive { id });
        assert!(matches!(
            answer.into_storage::<EverythingIsOther>(),
            StorageError::WorkerNotAlive { .. }
        ));
        let database = TxError::from(DieselError::NotFound);
        assert!(matches!(
            database.into_storage::<EverythingIsOther>(),
            StorageError::Other { .. }
        ));
    }

    #[test]
    fn only_a_unique_violation_is_a_duplicate() {
        let unique = database_error(DatabaseErrorKind::UniqueViolation, "UNIQUE");
        assert!(matches!(
            unique_violation_or::<EverythingIsOther>(unique, StorageError::DuplicateSession),
            StorageError::DuplicateSession
        ));
        let check = database_error(DatabaseErrorKind::CheckViolation, "CHECK");
        assert!(matches!(
            unique_violation_or::<EverythingIsOther>(check, StorageError::DuplicateSession),
            StorageError::Other { .. }
        ));
    }
}
