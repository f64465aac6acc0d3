//! The one way a test says it skipped (feature `testing`), and what the
//! scratch databases of the server backends share.

use std::io::Write as _;

/// Writes `line` (a `skipped: …` line naming the test and what it needs)
/// straight to the process's stderr. `cargo test` captures the print macros
/// of passing tests and throws their output away, so an `eprintln!` skip is
/// never seen; a write to the file descriptor is shown as it happens.
pub fn report_skipped_test(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Whether the `CI` variable says this is a CI run (set, and not empty,
/// `0` or `false`): then a test that lacks its server fails instead of
/// skipping.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) fn running_in_ci() -> bool {
    std::env::var("CI").is_ok_and(|value| {
        let value = value.trim();
        !(value.is_empty() || value == "0" || value.eq_ignore_ascii_case("false"))
    })
}

/// `url` with its database name replaced by `name` (the query kept).
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
pub(crate) fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split('/').next().unwrap_or(rest);
    match query {
        Some(query) => format!("{scheme}://{authority}/{name}?{query}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn the_database_name_is_replaced_and_the_query_kept() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("mysql://u@h/test?ssl-mode=disabled", "x"),
            "mysql://u@h/x?ssl-mode=disabled"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
    }
}
