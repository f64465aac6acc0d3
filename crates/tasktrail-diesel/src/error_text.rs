//! Unit-test support: a database error that carries only a message, the way
//! a driver reports one, for the backends' error classification tests.

use diesel::result::{DatabaseErrorInformation, DatabaseErrorKind, Error as DieselError};

/// A driver error known by its message alone.
#[derive(Debug)]
pub(crate) struct MessageOnly(pub(crate) String);

impl DatabaseErrorInformation for MessageOnly {
    fn message(&self) -> &str {
        &self.0
    }
    fn details(&self) -> Option<&str> {
        None
    }
    fn hint(&self) -> Option<&str> {
        None
    }
    fn table_name(&self) -> Option<&str> {
        None
    }
    fn column_name(&self) -> Option<&str> {
        None
    }
    fn constraint_name(&self) -> Option<&str> {
        None
    }
    fn statement_position(&self) -> Option<i32> {
        None
    }
}

/// A Diesel database error of `kind` with `message`.
pub(crate) fn database_error(kind: DatabaseErrorKind, message: &str) -> DieselError {
    DieselError::DatabaseError(kind, Box::new(MessageOnly(message.to_owned())))
}
