//! The one way a test says it skipped (feature `testing`).

use std::io::Write as _;

/// Writes `line` (a `skipped: …` line naming the test and what it needs)
/// straight to the process's stderr. `cargo test` captures the print macros
/// of passing tests and throws their output away, so an `eprintln!` skip is
/// never seen; a write to the file descriptor is shown as it happens.
pub fn report_skipped_test(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}
