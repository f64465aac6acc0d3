//! Which embedded migrations a database lacks, from versions read without
//! DDL (Diesel's own check would create its migration table), and the
//! refusal readers give when it lacks any. Shared by both backends.
#![cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]

use tasktrail_core::StorageError;

/// The `known` versions not in `applied`, oldest first.
pub(crate) fn pending_versions(known: Vec<String>, applied: &[String]) -> Vec<String> {
    let mut pending: Vec<String> = known
        .into_iter()
        .filter(|version| !applied.contains(version))
        .collect();
    pending.sort();
    pending
}

/// Refuses a database that still needs `pending` before it can be read.
pub(crate) fn refuse_if_pending(pending: &[String]) -> Result<(), StorageError> {
    if pending.is_empty() {
        return Ok(());
    }
    Err(StorageError::Incompatible {
        detail: format!(
            "the database needs migration(s) {} before it can be read: run `tasktrail migrate`",
            pending.join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_versions_are_the_known_ones_not_applied_oldest_first() {
        let known = vec!["3".to_owned(), "1".to_owned(), "2".to_owned()];
        assert_eq!(pending_versions(known, &["1".to_owned()]), ["2", "3"]);
        assert!(refuse_if_pending(&[]).is_ok());
        assert!(matches!(
            refuse_if_pending(&["2".to_owned()]),
            Err(StorageError::Incompatible { detail }) if detail.contains('2')
        ));
    }
}
