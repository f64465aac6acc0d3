//! SQLite errors: which result code a Diesel error carries, and what each
//! code means for the caller, in one table ([`SQLITE_ERRORS`]).
//!
//! # What Diesel lets us see
//!
//! Diesel 2.3 reads SQLite's *extended* result code
//! (`sqlite3_extended_errcode`) only to pick its own [`DatabaseErrorKind`]
//! for the constraint codes (`SQLITE_CONSTRAINT_UNIQUE` and
//! `_PRIMARYKEY` → `UniqueViolation`, `_NOTNULL`, `_CHECK`,
//! `_FOREIGNKEY`), and keeps nothing else of the code: the rest arrive as
//! `DatabaseErrorKind::Unknown` with `sqlite3_errmsg` as the message, and
//! its `SqliteConnection` gives no access to the raw handle to ask again
//! (by then Diesel's own ROLLBACK would have replaced the code anyway).
//!
//! The narrowest stable signal left is that message. For the codes below,
//! SQLite does not write a message of its own: `sqlite3_errmsg` is the
//! fixed text of the *primary* result code (`sqlite3ErrStr`, the `aMsg[]`
//! table in SQLite's main.c, the same for every extended code of that
//! primary: `SQLITE_IOERR_WRITE` reads "disk I/O error"), or for a few
//! codes that text followed by `": "` and a name ("database table is
//! locked: t"). The SQL errors that name a missing table or column are the
//! parser's "no such table: t" / "no such column: c". An entry matches the
//! whole message or that message and `": "`: never a word somewhere in it.
//! Connection failures at open are reported by Diesel as the text
//! libsqlite3-sys gives the result code (`code_to_str`), matched whole.

use diesel::result::{ConnectionError, DatabaseErrorKind, Error as DieselError};
use libsqlite3_sys as ffi;
use tasktrail_core::StorageError;

use crate::tx::ErrorDialect;

/// What a SQLite error means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SqliteErrorClass {
    /// Retrying later may succeed: [`StorageError::Unavailable`].
    Transient,
    /// The file refuses writes until an operator changes it:
    /// [`StorageError::AccessDenied`].
    Refused,
    /// Not a (tasktrail) database: [`StorageError::Incompatible`].
    NotOurs,
    /// A CHECK or NOT NULL constraint rejected the write: the row is not
    /// one tasktrail writes ([`StorageError::CorruptRow`]).
    ConstraintRejected,
}

/// How an entry recognises its result code in a Diesel error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum SqliteSignal {
    /// Diesel read the extended code into this kind.
    Kind(DatabaseErrorKind),
    /// `sqlite3_errmsg` is this text, alone or followed by `": "` and a name.
    Message(&'static str),
}

/// One result code this backend classifies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SqliteCode {
    /// The result code's name, as SQLite's documentation spells it.
    pub(crate) name: &'static str,
    /// Its (primary) value.
    pub(crate) code: i32,
    /// How it is recognised.
    pub(crate) signal: SqliteSignal,
    /// What it means.
    pub(crate) class: SqliteErrorClass,
}

const fn entry(
    name: &'static str,
    code: i32,
    signal: SqliteSignal,
    class: SqliteErrorClass,
) -> SqliteCode {
    SqliteCode {
        name,
        code,
        signal,
        class,
    }
}

use SqliteErrorClass::{ConstraintRejected, NotOurs, Refused, Transient};
use SqliteSignal::{Kind, Message};

/// Every SQLite result code this backend classifies, and how: the one place
/// where SQLite errors are told apart. `SQLITE_CONSTRAINT_UNIQUE` /
/// `_PRIMARYKEY` (Diesel's `UniqueViolation`) are not here: the callers
/// map them, knowing which row they were writing
/// ([`unique_violation_or`](crate::tx::unique_violation_or)). Each entry has
/// its own test; the ones a real database can be made to raise in a test
/// are raised for real (below, and tests/sqlite_faults.rs).
pub(crate) const SQLITE_ERRORS: &[SqliteCode] = &[
    // The disk (or max_page_count) is full; space may come back.
    entry(
        "SQLITE_FULL",
        ffi::SQLITE_FULL,
        Message("database or disk is full"),
        Transient,
    ),
    // Another connection held the lock past the busy timeout.
    entry(
        "SQLITE_BUSY",
        ffi::SQLITE_BUSY,
        Message("database is locked"),
        Transient,
    ),
    // A conflict inside one connection's shared cache.
    entry(
        "SQLITE_LOCKED",
        ffi::SQLITE_LOCKED,
        Message("database table is locked"),
        Transient,
    ),
    // SQLITE_IOERR and every SQLITE_IOERR_* (READ, WRITE, FSYNC, SHORT_READ...):
    // the volume failed a read or write.
    entry(
        "SQLITE_IOERR",
        ffi::SQLITE_IOERR,
        Message("disk I/O error"),
        Transient,
    ),
    // The file (or its WAL / -shm) cannot be opened now.
    entry(
        "SQLITE_CANTOPEN",
        ffi::SQLITE_CANTOPEN,
        Message("unable to open database file"),
        Transient,
    ),
    // A WAL lock race SQLite gave up retrying.
    entry(
        "SQLITE_PROTOCOL",
        ffi::SQLITE_PROTOCOL,
        Message("locking protocol"),
        Transient,
    ),
    // A read-only file, mount or `PRAGMA query_only`.
    entry(
        "SQLITE_READONLY",
        ffi::SQLITE_READONLY,
        Message("attempt to write a readonly database"),
        Refused,
    ),
    entry(
        "SQLITE_NOTADB",
        ffi::SQLITE_NOTADB,
        Message("file is not a database"),
        NotOurs,
    ),
    entry(
        "SQLITE_CORRUPT",
        ffi::SQLITE_CORRUPT,
        Message("database disk image is malformed"),
        NotOurs,
    ),
    // SQLITE_ERROR from the parser: a schema that is not tasktrail's.
    entry(
        "SQLITE_ERROR (no such table)",
        ffi::SQLITE_ERROR,
        Message("no such table"),
        NotOurs,
    ),
    entry(
        "SQLITE_ERROR (no such column)",
        ffi::SQLITE_ERROR,
        Message("no such column"),
        NotOurs,
    ),
    // Constraint codes Diesel reads from the extended code.
    entry(
        "SQLITE_CONSTRAINT_CHECK",
        ffi::SQLITE_CONSTRAINT_CHECK,
        Kind(DatabaseErrorKind::CheckViolation),
        ConstraintRejected,
    ),
    entry(
        "SQLITE_CONSTRAINT_NOTNULL",
        ffi::SQLITE_CONSTRAINT_NOTNULL,
        Kind(DatabaseErrorKind::NotNullViolation),
        ConstraintRejected,
    ),
];

/// Whether `message` is `text`, alone or followed by `": "` and a name.
fn message_is(message: &str, text: &str) -> bool {
    message
        .strip_prefix(text)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with(": "))
}

/// The entry of [`SQLITE_ERRORS`] a database error of `kind` with
/// `message` stands for.
pub(crate) fn sqlite_code(kind: DatabaseErrorKind, message: &str) -> Option<&'static SqliteCode> {
    SQLITE_ERRORS.iter().find(|entry| match entry.signal {
        Kind(wanted) => wanted == kind,
        Message(text) => kind == DatabaseErrorKind::Unknown && message_is(message, text),
    })
}

/// The entry a Diesel error stands for: a failed COMMIT whose rollback
/// failed too is known by the commit's error.
fn code_of(error: &DieselError) -> Option<&'static SqliteCode> {
    match error {
        DieselError::DatabaseError(kind, info) => sqlite_code(*kind, info.message()),
        DieselError::RollbackErrorOnCommit { commit_error, .. } => code_of(commit_error),
        _ => None,
    }
}

/// Whether another connection holds the lock (`SQLITE_BUSY`,
/// `SQLITE_LOCKED`): worth waiting for.
pub(crate) fn is_busy(error: &DieselError) -> bool {
    code_of(error)
        .is_some_and(|entry| entry.code == ffi::SQLITE_BUSY || entry.code == ffi::SQLITE_LOCKED)
}

/// Maps a Diesel error onto a public kind through [`SQLITE_ERRORS`];
/// anything the table does not know is [`StorageError::Other`].
pub(crate) fn map_error(error: DieselError) -> StorageError {
    // Diesel could not hand the statement to SQLite at all.
    if matches!(
        error,
        DieselError::DatabaseError(DatabaseErrorKind::UnableToSendCommand, _)
    ) {
        return StorageError::Unavailable {
            source: Box::new(error),
        };
    }
    let Some(entry) = code_of(&error) else {
        return StorageError::Other {
            source: Box::new(error),
        };
    };
    match entry.class {
        Transient => StorageError::Unavailable {
            source: Box::new(error),
        },
        Refused => StorageError::AccessDenied {
            source: Box::new(error),
        },
        NotOurs if entry.code == ffi::SQLITE_ERROR => StorageError::Incompatible {
            detail: format!("the database schema is not tasktrail's ({error})"),
        },
        NotOurs => StorageError::Incompatible {
            detail: format!(
                "the file is not a usable SQLite database ({}: {error})",
                entry.name
            ),
        },
        ConstraintRejected => StorageError::CorruptRow {
            detail: format!("a constraint rejected the write ({error})"),
        },
    }
}

/// The SQLite dialect of [`ErrorDialect`].
impl ErrorDialect for diesel::sqlite::Sqlite {
    fn map_error(error: DieselError) -> StorageError {
        map_error(error)
    }
}

/// Maps a failure to open a connection. Diesel reports a failed
/// `sqlite3_open_v2` as libsqlite3-sys's text for its result code, and a
/// failed first statement as that statement's error.
pub(crate) fn map_connection_error(error: ConnectionError) -> StorageError {
    match error {
        ConnectionError::CouldntSetupConfiguration(error) => map_error(error),
        ConnectionError::BadConnection(ref text)
            if text.as_str() == ffi::code_to_str(ffi::SQLITE_NOTADB) =>
        {
            StorageError::Incompatible {
                detail: "the file is not a SQLite database".to_owned(),
            }
        }
        _ => StorageError::Unavailable {
            source: Box::new(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_text::database_error;
    use diesel::connection::SimpleConnection;
    use diesel::Connection;

    fn from_message(message: &str) -> StorageError {
        map_error(database_error(DatabaseErrorKind::Unknown, message))
    }

    fn class_of(error: &StorageError) -> Option<SqliteErrorClass> {
        match error {
            StorageError::Unavailable { .. } => Some(Transient),
            StorageError::AccessDenied { .. } => Some(Refused),
            StorageError::Incompatible { .. } => Some(NotOurs),
            StorageError::CorruptRow { .. } => Some(ConstraintRejected),
            _ => None,
        }
    }

    /// What SQLite itself says for each entry (its `sqlite3ErrStr` text, or
    /// a parser message), and the class it must map to.
    macro_rules! classified {
        ($($name:ident: $code:literal, $kind:expr, $message:expr => $class:expr;)+) => {
            $(#[test] fn $name() {
                let error = map_error(database_error($kind, $message));
                assert_eq!(class_of(&error), Some($class), "{error:?}");
                assert_eq!(error.is_transient(), $class == Transient);
                assert_eq!(sqlite_code($kind, $message).map(|e| e.name), Some($code));
            })+

            #[test]
            fn every_table_entry_has_its_test() {
                let tested: &[&str] = &[$($code),+];
                for entry in SQLITE_ERRORS {
                    assert!(tested.contains(&entry.name), "no test for {}", entry.name);
                }
            }
        };
    }

    classified! {
        sqlite_full_is_transient: "SQLITE_FULL", DatabaseErrorKind::Unknown, "database or disk is full" => Transient;
        sqlite_busy_is_transient: "SQLITE_BUSY", DatabaseErrorKind::Unknown, "database is locked" => Transient;
        sqlite_locked_is_transient: "SQLITE_LOCKED", DatabaseErrorKind::Unknown, "database table is locked: task_history" => Transient;
        sqlite_ioerr_is_transient: "SQLITE_IOERR", DatabaseErrorKind::Unknown, "disk I/O error" => Transient;
        sqlite_cantopen_is_transient: "SQLITE_CANTOPEN", DatabaseErrorKind::Unknown, "unable to open database file" => Transient;
        sqlite_protocol_is_transient: "SQLITE_PROTOCOL", DatabaseErrorKind::Unknown, "locking protocol" => Transient;
        sqlite_readonly_is_refused: "SQLITE_READONLY", DatabaseErrorKind::Unknown, "attempt to write a readonly database" => Refused;
        sqlite_notadb_is_not_ours: "SQLITE_NOTADB", DatabaseErrorKind::Unknown, "file is not a database" => NotOurs;
        sqlite_corrupt_is_not_ours: "SQLITE_CORRUPT", DatabaseErrorKind::Unknown, "database disk image is malformed" => NotOurs;
        a_missing_table_is_not_ours: "SQLITE_ERROR (no such table)", DatabaseErrorKind::Unknown, "no such table: task_history" => NotOurs;
        a_missing_column_is_not_ours: "SQLITE_ERROR (no such column)", DatabaseErrorKind::Unknown, "no such column: interrupted_by" => NotOurs;
        a_check_constraint_is_a_rejected_row: "SQLITE_CONSTRAINT_CHECK", DatabaseErrorKind::CheckViolation, "CHECK constraint failed: status" => ConstraintRejected;
        a_not_null_constraint_is_a_rejected_row: "SQLITE_CONSTRAINT_NOTNULL", DatabaseErrorKind::NotNullViolation, "NOT NULL constraint failed: task_history.repo" => ConstraintRejected;
    }

    #[test]
    fn a_word_of_a_message_is_no_match() {
        // The old substring search took any message with "full" or
        // "locked" in it for a full disk or a busy file.
        for message in [
            "the table is full of surprises",
            "row locked by user",
            "no such function: full",
            "database or disk is full-ish",
            "something new went wrong",
        ] {
            let error = from_message(message);
            assert!(
                matches!(error, StorageError::Other { .. }),
                "{message}: {error:?}"
            );
            assert!(!error.is_transient());
        }
        // A kind Diesel read from another extended code is not a message entry.
        let foreign_key = map_error(database_error(
            DatabaseErrorKind::ForeignKeyViolation,
            "database or disk is full",
        ));
        assert!(
            matches!(foreign_key, StorageError::Other { .. }),
            "{foreign_key:?}"
        );
    }

    #[test]
    fn a_failed_commit_is_classified_by_the_commit_error() {
        let error = map_error(DieselError::RollbackErrorOnCommit {
            rollback_error: Box::new(DieselError::NotFound),
            commit_error: Box::new(database_error(
                DatabaseErrorKind::Unknown,
                "database or disk is full",
            )),
        });
        assert!(
            matches!(error, StorageError::Unavailable { .. }),
            "{error:?}"
        );
    }

    /// The messages the table expects are the ones this SQLite really
    /// writes: each raised for real on an in-memory database.
    #[test]
    fn the_linked_sqlite_writes_the_texts_the_table_expects() {
        let mut connection =
            diesel::sqlite::SqliteConnection::establish(":memory:").expect("in-memory database");
        let raised = |connection: &mut diesel::sqlite::SqliteConnection, sql: &str| {
            let error = connection.batch_execute(sql).expect_err(sql);
            code_of(&error).map(|entry| entry.name)
        };
        assert_eq!(
            raised(&mut connection, "SELECT * FROM task_history"),
            Some("SQLITE_ERROR (no such table)")
        );
        connection
            .batch_execute(
                "CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT NOT NULL CHECK (v <> 'x'), pad BLOB)",
            )
            .expect("table");
        assert_eq!(
            raised(&mut connection, "SELECT nope FROM t"),
            Some("SQLITE_ERROR (no such column)")
        );
        assert_eq!(
            raised(&mut connection, "INSERT INTO t (v) VALUES ('x')"),
            Some("SQLITE_CONSTRAINT_CHECK")
        );
        assert_eq!(
            raised(&mut connection, "INSERT INTO t (v) VALUES (NULL)"),
            Some("SQLITE_CONSTRAINT_NOTNULL")
        );
        connection
            .batch_execute("PRAGMA max_page_count = 3")
            .expect("pragma");
        assert_eq!(
            raised(
                &mut connection,
                "INSERT INTO t (v, pad) VALUES ('a', zeroblob(100000))"
            ),
            Some("SQLITE_FULL")
        );
        connection
            .batch_execute("PRAGMA query_only = ON")
            .expect("pragma");
        assert_eq!(
            raised(&mut connection, "INSERT INTO t (v) VALUES ('a')"),
            Some("SQLITE_READONLY")
        );
    }

    /// A connection SQLite refused as not a database, and one whose first
    /// statement failed, are classified like any other error of theirs.
    #[test]
    fn a_failed_opening_is_classified_by_what_sqlite_said() {
        let not_a_database =
            ConnectionError::BadConnection(ffi::code_to_str(ffi::SQLITE_NOTADB).to_owned());
        assert!(matches!(
            map_connection_error(not_a_database),
            StorageError::Incompatible { .. }
        ));
        let setup_failed = ConnectionError::CouldntSetupConfiguration(database_error(
            DatabaseErrorKind::Unknown,
            "file is not a database",
        ));
        assert!(matches!(
            map_connection_error(setup_failed),
            StorageError::Incompatible { .. }
        ));
        let refused = ConnectionError::CouldntSetupConfiguration(database_error(
            DatabaseErrorKind::Unknown,
            "attempt to write a readonly database",
        ));
        assert!(matches!(
            map_connection_error(refused),
            StorageError::AccessDenied { .. }
        ));
        let anything_else = ConnectionError::BadConnection("out of memory".to_owned());
        assert!(map_connection_error(anything_else).is_transient());
    }

    /// Two kinds of foreign database, one kind each: a schema that is not
    /// ours (SQLite's generic error: a missing table or column) and a file
    /// SQLite cannot use; the detail says which, for the operator.
    #[test]
    fn a_foreign_schema_and_an_unusable_file_are_told_apart_in_the_detail() {
        let StorageError::Incompatible { detail: schema } =
            from_message("no such table: task_history")
        else {
            panic!("a missing table is not ours");
        };
        assert!(schema.contains("schema is not tasktrail's"), "{schema}");
        let StorageError::Incompatible { detail: file } = from_message("file is not a database")
        else {
            panic!("a file that is not a database is not ours");
        };
        assert!(file.contains("not a usable SQLite database"), "{file}");
        assert!(file.contains("SQLITE_NOTADB"), "{file}");
    }

    #[test]
    fn opening_something_that_is_not_a_database_is_incompatible() {
        let directory = tempfile::tempdir().expect("tempdir");
        let path = directory.path().join("not-a-database");
        std::fs::write(&path, vec![b'x'; 4096]).expect("write");
        let mut connection =
            diesel::sqlite::SqliteConnection::establish(path.to_str().expect("utf-8 path"))
                .expect("SQLite opens lazily");
        let error = connection
            .batch_execute("SELECT * FROM sqlite_master")
            .expect_err("not a database");
        assert_eq!(
            code_of(&error).map(|entry| entry.name),
            Some("SQLITE_NOTADB")
        );
        let unopenable = directory.path().join("missing").join("db");
        let Err(error) =
            diesel::sqlite::SqliteConnection::establish(unopenable.to_str().expect("utf-8 path"))
        else {
            panic!("opened a database in a directory that does not exist");
        };
        assert!(map_connection_error(error).is_transient());
    }
}
