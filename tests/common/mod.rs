//! Shared by the integration tests: the backends under test and a fake
//! process table.
#![allow(dead_code, unreachable_pub)]

use tasktrail::*;

/// A backend under test, with its INSERT counter.
pub trait Backend: Storage + Sized {
    fn fresh(dir: &std::path::Path) -> Self;
    fn task_insert_statements(&self, id: TaskId) -> usize;
}

impl Backend for MemoryStorage {
    fn fresh(_dir: &std::path::Path) -> Self {
        MemoryStorage::new()
    }
    fn task_insert_statements(&self, id: TaskId) -> usize {
        MemoryStorage::task_insert_statements(self, id)
    }
}

impl Backend for SqliteStorage {
    fn fresh(dir: &std::path::Path) -> Self {
        SqliteStorage::open_with(
            dir.join("trail.db"),
            SqliteOptions {
                statement_log: Some(StatementLog::new()),
                ..SqliteOptions::default()
            },
        )
        .expect("open sqlite")
    }
    fn task_insert_statements(&self, id: TaskId) -> usize {
        self.statement_log()
            .map_or(0, |log| log.task_insert_statements(id))
    }
}

/// The local process table as a test wants it.
pub struct Processes(pub Vec<u32>);

impl ProcessProbe for Processes {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        self.0.contains(&pid).then(|| format!("boot:{pid}"))
    }
}
