//! The error tables of the server backends (Postgres, MySQL), and what
//! they share: an entry ([`ErrorCondition`]) names the database's code for
//! a condition and how it is recognised — by the kind Diesel read the code
//! into, or, where the driver keeps only the message, by the server's fixed
//! text for that code (phrases, never a lone word) — and what it means
//! ([`ErrorClass`]). Each dialect's table lives with it
//! (`postgres/errors.rs` by SQLSTATE, `mysql/errors.rs` by error number);
//! mapping a Diesel, connection or pool error through a table is here.
//! SQLite's result codes are read another way (`sqlite/errors.rs`).

use std::fmt;

use diesel::r2d2::PoolError;
use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use tasktrail_core::StorageError;

use crate::secrets::Secrets;

/// An error whose text was scrubbed of the URL's secrets. The original
/// error is not kept as a source: its text may hold them.
#[derive(Debug)]
pub(crate) struct Redacted(pub(crate) String);

impl fmt::Display for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Redacted {}

/// What an error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Retrying later may succeed: [`StorageError::Unavailable`].
    Transient,
    /// The server refuses this configuration (login, database, privilege):
    /// [`StorageError::AccessDenied`].
    Refused,
    /// The schema is not tasktrail's: [`StorageError::Incompatible`].
    NotOurs,
    /// A CHECK or NOT NULL constraint (or a strict-mode rule) rejected the
    /// write: the row is not one tasktrail writes
    /// ([`StorageError::CorruptRow`]).
    ConstraintRejected,
}

/// How an entry recognises its error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum ErrorSignal {
    /// Diesel (or the driver under it) read the code into this kind.
    Kind(DatabaseErrorKind),
    /// Every piece is in the lower-cased message.
    Text(&'static [&'static str]),
}

/// One error condition a backend classifies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ErrorCondition {
    /// Its code(s) (SQLSTATE, error number), or where the text comes from
    /// when it has none.
    pub(crate) code: &'static str,
    /// How it is recognised.
    pub(crate) signal: ErrorSignal,
    /// What it means.
    pub(crate) class: ErrorClass,
}

/// An entry recognised by Diesel's kind.
pub(crate) const fn kind(
    code: &'static str,
    kind: DatabaseErrorKind,
    class: ErrorClass,
) -> ErrorCondition {
    ErrorCondition {
        code,
        signal: ErrorSignal::Kind(kind),
        class,
    }
}

/// An entry recognised by its text.
pub(crate) const fn text(
    code: &'static str,
    pieces: &'static [&'static str],
    class: ErrorClass,
) -> ErrorCondition {
    ErrorCondition {
        code,
        signal: ErrorSignal::Text(pieces),
        class,
    }
}

/// One dialect's table: its name (in messages) and its entries.
#[derive(Debug)]
pub(crate) struct ErrorTable {
    /// `postgres`, `mysql`.
    pub(crate) dialect: &'static str,
    /// Every condition; `Kind` entries decide before `Text` ones.
    pub(crate) entries: &'static [ErrorCondition],
}

impl ErrorTable {
    /// The condition of a statement error of `kind` with `message`: a
    /// `Kind` entry first, then a `Text` one.
    pub(crate) fn condition(
        &self,
        kind: DatabaseErrorKind,
        message: &str,
    ) -> Option<&'static ErrorCondition> {
        self.entries
            .iter()
            .find(|entry| entry.signal == ErrorSignal::Kind(kind))
            .or_else(|| self.condition_of_text(message))
    }

    /// The `Text` entry matching `text` (a connection error's, say).
    pub(crate) fn condition_of_text(&self, text: &str) -> Option<&'static ErrorCondition> {
        let text = text.to_ascii_lowercase();
        self.entries.iter().find(|entry| match entry.signal {
            ErrorSignal::Text(pieces) => pieces.iter().all(|piece| text.contains(piece)),
            ErrorSignal::Kind(_) => false,
        })
    }

    /// Maps a Diesel error onto a public kind. Unique violations are mapped
    /// by the callers, which know which row they were writing.
    pub(crate) fn map_error(&self, error: DieselError) -> StorageError {
        let condition = match &error {
            DieselError::DatabaseError(kind, info) => self.condition(*kind, info.message()),
            // A COMMIT that failed and whose rollback failed too: the
            // connection is usually gone.
            DieselError::RollbackErrorOnCommit { commit_error, .. } => match &**commit_error {
                DieselError::DatabaseError(kind, info) => self.condition(*kind, info.message()),
                _ => None,
            },
            // The connection broke inside a transaction: nothing was
            // committed, and the next connection may work.
            DieselError::BrokenTransactionManager => {
                return StorageError::Unavailable {
                    source: Box::new(error),
                }
            }
            _ => None,
        };
        let Some(condition) = condition else {
            return StorageError::Other {
                source: Box::new(error),
            };
        };
        match condition.class {
            ErrorClass::Transient => StorageError::Unavailable {
                source: Box::new(error),
            },
            ErrorClass::Refused => StorageError::AccessDenied {
                source: Box::new(error),
            },
            ErrorClass::NotOurs => StorageError::Incompatible {
                detail: format!(
                    "the database schema is not tasktrail's ({}: {})",
                    condition.code,
                    error.to_string().to_ascii_lowercase()
                ),
            },
            ErrorClass::ConstraintRejected => StorageError::CorruptRow {
                detail: format!(
                    "a constraint rejected the write ({}: {})",
                    condition.code,
                    error.to_string().to_ascii_lowercase()
                ),
            },
        }
    }

    /// A failure to connect, its text scrubbed of `secrets`: an invalid
    /// URL is [`StorageError::Other`]; a refused login or an unknown
    /// database is permanent; anything else about reaching the server
    /// (refused, unreachable, timed out, starting up, too many clients)
    /// may succeed later.
    pub(crate) fn connection_error(
        &self,
        error: &ConnectionError,
        secrets: &Secrets,
    ) -> StorageError {
        let message = secrets.scrub(error.to_string().trim_end());
        match error {
            ConnectionError::InvalidConnectionUrl(_) => StorageError::Other {
                source: Box::new(Redacted(format!("invalid {} URL: {message}", self.dialect))),
            },
            _ => {
                self.connection_text_error(format!("cannot connect to {}: {message}", self.dialect))
            }
        }
    }

    /// r2d2 gave up waiting for a connection; its text carries the last
    /// connection error, which decides transient or permanent.
    pub(crate) fn pool_error(&self, error: &PoolError, secrets: &Secrets) -> StorageError {
        self.connection_text_error(format!(
            "no {} connection available: {}",
            self.dialect,
            secrets.scrub(error.to_string().trim_end())
        ))
    }

    /// A connection failure known only by its (scrubbed) text: permanent
    /// when the table says the server refused the configuration, transient
    /// otherwise.
    fn connection_text_error(&self, message: String) -> StorageError {
        match self.condition_of_text(&message).map(|entry| entry.class) {
            Some(ErrorClass::Refused) => StorageError::AccessDenied {
                source: Box::new(Redacted(message)),
            },
            _ => StorageError::Unavailable {
                source: Box::new(Redacted(message)),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A table of one `Kind` entry and one `Text` entry.
    const TABLE: ErrorTable = ErrorTable {
        dialect: "test",
        entries: &[
            kind(
                "40001",
                DatabaseErrorKind::SerializationFailure,
                ErrorClass::Transient,
            ),
            text("1045", &["access denied"], ErrorClass::Refused),
        ],
    };

    fn server(kind: DatabaseErrorKind, message: &str) -> DieselError {
        DieselError::DatabaseError(kind, Box::new(message.to_owned()))
    }

    fn failed_commit(commit_error: DieselError) -> DieselError {
        DieselError::RollbackErrorOnCommit {
            commit_error: Box::new(commit_error),
            rollback_error: Box::new(DieselError::BrokenTransactionManager),
        }
    }

    #[test]
    fn a_failed_commit_is_classified_by_the_commit_error() {
        let transient = TABLE.map_error(failed_commit(server(
            DatabaseErrorKind::SerializationFailure,
            "could not serialize access",
        )));
        assert!(
            matches!(transient, StorageError::Unavailable { .. }),
            "{transient:?}"
        );
        let refused = TABLE.map_error(failed_commit(server(
            DatabaseErrorKind::Unknown,
            "Access denied for user 'app'",
        )));
        assert!(
            matches!(refused, StorageError::AccessDenied { .. }),
            "{refused:?}"
        );
        let other = TABLE.map_error(failed_commit(DieselError::NotFound));
        assert!(matches!(other, StorageError::Other { .. }), "{other:?}");
    }

    #[test]
    fn a_broken_transaction_manager_is_transient() {
        let error = TABLE.map_error(DieselError::BrokenTransactionManager);
        assert!(
            matches!(error, StorageError::Unavailable { .. }),
            "{error:?}"
        );
    }

    #[test]
    fn a_redacted_error_shows_its_text() {
        assert_eq!(
            Redacted("cannot connect to test: refused".to_owned()).to_string(),
            "cannot connect to test: refused"
        );
    }
}
