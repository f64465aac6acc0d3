//! Counts the SQL statements a backend really issues, through Diesel's
//! connection instrumentation. Tests use it to prove that a task's lifecycle
//! issues exactly one INSERT into `task_history`, and that the hot-path
//! statements are prepared once per connection, not on every call.
//!
//! Public only with the `testing` feature; without it the stores carry no
//! log and none of this is reachable.
#![cfg_attr(not(feature = "testing"), allow(dead_code, unreachable_pub))]

use std::sync::{Arc, Mutex, PoisonError};

use diesel::connection::{Instrumentation, InstrumentationEvent};
use tasktrail_core::TaskId;

/// A shared log of the INSERT statements into `task_history` issued on the
/// connections it is attached to (with their bind values).
#[derive(Debug, Clone, Default)]
pub struct StatementLog {
    task_history_inserts: Arc<Mutex<Vec<String>>>,
    prepared_for_reuse: Arc<Mutex<Vec<String>>>,
}

impl StatementLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// How many INSERT statements into `task_history` carried `id` as a bind
    /// value (whether or not they succeeded).
    pub fn task_insert_statements(&self, id: TaskId) -> usize {
        let id = id.to_string();
        self.task_history_inserts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|statement| statement.contains(&id))
            .count()
    }

    /// Every INSERT into `task_history` seen so far.
    pub fn task_history_inserts(&self) -> Vec<String> {
        self.task_history_inserts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The SQL of every statement a connection prepared and kept in its
    /// statement cache for reuse, once per preparation (Diesel's
    /// `CacheQuery` event). A statement prepared anew on every call never
    /// appears here.
    pub fn statements_prepared_for_reuse(&self) -> Vec<String> {
        self.prepared_for_reuse
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(crate) fn instrumentation(&self) -> impl Instrumentation {
        let inserts = Arc::clone(&self.task_history_inserts);
        let prepared = Arc::clone(&self.prepared_for_reuse);
        move |event: InstrumentationEvent<'_>| match event {
            InstrumentationEvent::StartQuery { query, .. } => {
                let text = query.to_string();
                if is_task_history_insert(&text) {
                    inserts
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .push(text);
                }
            }
            InstrumentationEvent::CacheQuery { sql, .. } => prepared
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(sql.to_owned()),
            _ => {}
        }
    }
}

fn is_task_history_insert(sql: &str) -> bool {
    let normalized = sql
        .trim_start()
        .to_ascii_lowercase()
        .replace(['`', '"'], "");
    normalized.starts_with("insert into task_history ")
        || normalized.starts_with("insert into task_history(")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_inserts_into_task_history_only() {
        assert!(is_task_history_insert(
            "INSERT INTO `task_history` (`id`) VALUES (?) -- binds: [\"x\"]"
        ));
        assert!(is_task_history_insert(
            "insert into \"task_history\"(id) values ($1)"
        ));
        assert!(!is_task_history_insert(
            "UPDATE `task_history` SET `status` = ?"
        ));
        assert!(!is_task_history_insert(
            "INSERT INTO `task_history_rebuilt` (`id`) VALUES (?)"
        ));
        assert!(!is_task_history_insert(
            "INSERT INTO `claude_sdk_sessions` (`task_id`) VALUES (?)"
        ));
    }
}
