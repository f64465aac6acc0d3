//! The database URL as libpq gets it. Passwords are redacted by the one
//! redactor both backends share (`crate::secrets`); the pooler parameter
//! is read in `pooler.rs`.

use std::time::Duration;

/// Adds libpq's `connect_timeout` unless the URL sets one, so an unreachable
/// host fails within the configured time instead of the TCP timeout.
pub(super) fn with_connect_timeout(url: &str, timeout: Duration) -> String {
    if url.contains("connect_timeout") {
        return url.to_owned();
    }
    // libpq ignores values below 2 s.
    let seconds = timeout.as_secs().max(2);
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let separator = if url.contains('?') { '&' } else { '?' };
        format!("{url}{separator}connect_timeout={seconds}")
    } else {
        format!("{url} connect_timeout={seconds}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_is_added_once() {
        assert_eq!(
            with_connect_timeout("postgres://h/db", Duration::from_secs(7)),
            "postgres://h/db?connect_timeout=7"
        );
        assert_eq!(
            with_connect_timeout("postgres://h/db?sslmode=disable", Duration::from_millis(10)),
            "postgres://h/db?sslmode=disable&connect_timeout=2"
        );
        assert_eq!(
            with_connect_timeout("postgres://h/db?connect_timeout=1", Duration::from_secs(7)),
            "postgres://h/db?connect_timeout=1"
        );
        assert_eq!(
            with_connect_timeout("host=h dbname=d", Duration::from_secs(3)),
            "host=h dbname=d connect_timeout=3"
        );
    }
}
