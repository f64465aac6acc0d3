//! No SQL is built from user data by string formatting: every value reaches
//! the database as a bind parameter. This test scans the backends' source for
//! a `format!` inside a call that executes SQL and fails on any that is not
//! on the short list below, each of which formats only numbers, enum values
//! or names this crate generated.

use std::path::{Path, PathBuf};

/// The executing calls, and the `format!` uses allowed in them.
const EXECUTING_CALLS: [&str; 5] = [
    "sql_query(",
    "batch_execute(",
    "sql::<",
    ".execute(&format!",
    // sqlite/adopt.rs, postgres/adopt.rs: runs a count query.
    "= count(",
];
const ALLOWED: [&str; 9] = [
    // sqlite/mod.rs: a Duration's milliseconds.
    "PRAGMA busy_timeout",
    // sqlite/mod.rs: a SqliteDurability's fixed pragma value.
    "PRAGMA synchronous",
    // postgres/scratch.rs, mysql/scratch.rs: a name made from a fresh UUID.
    "CREATE DATABASE {name}",
    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
    // mysql/scratch.rs: the same fresh name (CREATE as above).
    "DROP DATABASE IF EXISTS {}\"",
    // */adopt.rs: the pre-fix column names, a constant list.
    "WHERE \\\"{name}\\\" IS NULL",
    "ALTER COLUMN \\\"{name}\\\" SET NOT NULL",
    // postgres/adopt.rs: the pre-fix statuses, a constant list.
    "NOT IN ({PRE_FIX_STATUSES})",
    // postgres/adopt.rs: ALTER COLUMN clauses made from the constant column
    // list and a fixed match of types (`conversion`); the CHECK names the
    // constant statuses.
    "ALTER TABLE task_history {};",
];

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read source dir").flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

/// `file:line` of every executing call whose next lines format a string and
/// is not allowed.
fn string_built_sql(source: &str, file: &str) -> Vec<String> {
    let lines: Vec<&str> = source.lines().collect();
    let mut offences = Vec::new();
    for (index, line) in lines.iter().enumerate() {
        if !EXECUTING_CALLS.iter().any(|call| line.contains(call)) {
            continue;
        }
        let window = lines[index..(index + 3).min(lines.len())].join("\n");
        if window.contains("format!") && !ALLOWED.iter().any(|allowed| window.contains(allowed)) {
            offences.push(format!("{file}:{}", index + 1));
        }
    }
    offences
}

#[test]
fn no_backend_builds_sql_from_strings() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(files.len() >= 5, "the scan found the sources");
    let mut offences = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file).expect("read");
        offences.extend(string_built_sql(&source, &file.display().to_string()));
    }
    assert!(
        offences.is_empty(),
        "SQL built by string formatting at: {offences:?}"
    );
}

#[test]
fn the_scan_catches_a_formatted_query() {
    let planted = "fn f(c: &mut C, repo: &str) {\n    diesel::sql_query(format!(\"SELECT * FROM task_history WHERE repo = '{repo}'\"))\n        .execute(c);\n}\n";
    assert_eq!(
        string_built_sql(planted, "planted.rs"),
        vec!["planted.rs:2".to_owned()]
    );
    let bound = "diesel::sql_query(\"SELECT * FROM task_history WHERE repo = ?\")\n    .bind::<Text, _>(repo)";
    assert!(string_built_sql(bound, "bound.rs").is_empty());
}
