//! Connection poolers in front of Postgres (PgBouncer, Supabase's, Neon's
//! or a platform's pooled URL): which one the store goes through is
//! *declared*, never inferred (a quiet pooler keeps handing back the same
//! server connection, so nothing a client can observe proves there is
//! none).
//!
//! The declaration is the URL parameter [`POOLER_PARAMETER`]
//! (`postgres://app@pgbouncer:6432/trail?tasktrail_pooler=transaction`),
//! stripped before libpq sees the URL, or
//! [`PostgresOptions::pooler`](super::PostgresOptions::pooler).

use std::fmt;

use tasktrail_core::StorageError;

use super::Redacted;

/// The URL parameter (or libpq key/value key) that declares the pooler
/// between tasktrail and Postgres: `transaction`, `session` or `none`.
pub const POOLER_PARAMETER: &str = "tasktrail_pooler";

/// What stands between the store's pooled connections and Postgres.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Pooler {
    /// Nothing: every connection is a Postgres session of its own
    /// (default).
    #[default]
    None,
    /// A pooler in session mode (PgBouncer `pool_mode = session`): each
    /// client connection keeps one server connection until it closes, and
    /// the pooler's reset (`DISCARD ALL`) frees its advisory locks when it
    /// does. Behaves as [`Pooler::None`]; multiplexes nothing.
    Session,
    /// A pooler in transaction mode (PgBouncer `pool_mode = transaction`,
    /// the pooled URLs of hosted Postgres): consecutive transactions of one
    /// client connection may run on different server connections. No named
    /// prepared statement is kept (Diesel's statement cache is off on every
    /// pooled connection), nothing relies on session state, and no session
    /// advisory lock is ever taken through it: liveness goes through a
    /// direct liveness URL, or is judged by lease.
    Transaction,
}

impl Pooler {
    /// The value of [`POOLER_PARAMETER`] that declares it.
    pub fn as_str(self) -> &'static str {
        match self {
            Pooler::None => "none",
            Pooler::Session => "session",
            Pooler::Transaction => "transaction",
        }
    }

    /// Whether consecutive transactions may run on different sessions.
    pub fn multiplexes_sessions(self) -> bool {
        self == Pooler::Transaction
    }

    fn parse(value: &str) -> Result<Self, StorageError> {
        match value.trim().to_ascii_lowercase().as_str() {
            "none" | "direct" => Ok(Pooler::None),
            "session" => Ok(Pooler::Session),
            "transaction" => Ok(Pooler::Transaction),
            _ => Err(StorageError::Other {
                source: Box::new(Redacted(format!(
                    "invalid postgres URL: {POOLER_PARAMETER} must be transaction, session or none, not {value:?}"
                ))),
            }),
        }
    }
}

impl fmt::Display for Pooler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a store proves its workers alive, as its boot line reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LivenessMode {
    /// A session-level advisory lock per worker, held by the store's
    /// liveness session on the database URL itself (no pooler, or a
    /// session pooler).
    AdvisoryLock,
    /// A session-level advisory lock per worker, held by the liveness
    /// session on the separate direct liveness URL; every other statement
    /// goes through the transaction pooler.
    AdvisoryLockOnLivenessUrl,
    /// No lock: through a transaction pooler without a liveness URL,
    /// workers register with `liveness_lock = NULL` and are judged by
    /// their heartbeat's age on the database's clock (the lease).
    Lease,
}

impl LivenessMode {
    /// A short name: `advisory-lock`, `advisory-lock (liveness URL)`,
    /// `lease`.
    pub fn as_str(self) -> &'static str {
        match self {
            LivenessMode::AdvisoryLock => "advisory lock",
            LivenessMode::AdvisoryLockOnLivenessUrl => "advisory lock on the liveness URL",
            LivenessMode::Lease => "lease on the database's clock",
        }
    }
}

impl fmt::Display for LivenessMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `url` without its [`POOLER_PARAMETER`], and the pooler it declared (if
/// it declared one). Works on `postgres://` URLs (a query parameter) and on
/// libpq key/value strings (a `tasktrail_pooler=...` pair).
pub(crate) fn split_pooler(url: &str) -> Result<(String, Option<Pooler>), StorageError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let (base, fragment) = match url.split_once('#') {
            Some((base, fragment)) => (base, Some(fragment)),
            None => (url, None),
        };
        let Some((head, query)) = base.split_once('?') else {
            return Ok((url.to_owned(), None));
        };
        let mut declared = None;
        let mut kept: Vec<&str> = Vec::new();
        for pair in query.split('&') {
            match pair.split_once('=') {
                Some((key, value)) if key == POOLER_PARAMETER => {
                    declared = Some(Pooler::parse(value)?);
                }
                _ if pair == POOLER_PARAMETER => {
                    declared = Some(Pooler::parse("")?);
                }
                _ if pair.is_empty() => {}
                _ => kept.push(pair),
            }
        }
        let mut stripped = head.to_owned();
        if !kept.is_empty() {
            stripped.push('?');
            stripped.push_str(&kept.join("&"));
        }
        if let Some(fragment) = fragment {
            stripped.push('#');
            stripped.push_str(fragment);
        }
        return Ok((stripped, declared));
    }
    // A key/value string: whitespace-separated `key=value` pairs.
    let mut declared = None;
    let mut kept: Vec<&str> = Vec::new();
    for pair in url.split_whitespace() {
        match pair.split_once('=') {
            Some((key, value)) if key == POOLER_PARAMETER => {
                declared = Some(Pooler::parse(value.trim_matches('\''))?);
            }
            _ => kept.push(pair),
        }
    }
    if declared.is_none() {
        return Ok((url.to_owned(), None));
    }
    Ok((kept.join(" "), declared))
}

/// The TCP port `url` names (5432 when it names none), or `None` when it
/// connects through a Unix socket or names several hosts.
pub(crate) fn named_port(url: &str) -> Option<u16> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        let rest = url.split_once("://")?.1;
        let query = rest.split_once('?').map(|(_, query)| query);
        if let Some(port) =
            query.and_then(|query| query.split('&').find_map(|pair| pair.strip_prefix("port=")))
        {
            return port.parse().ok();
        }
        if query.is_some_and(|query| query.split('&').any(|pair| pair.starts_with("host=/"))) {
            return None;
        }
        let authority = rest.split(['/', '?']).next()?;
        let host_port = authority.rsplit('@').next()?;
        if host_port.is_empty() || host_port.contains(',') {
            return None;
        }
        let after_host = match host_port.strip_prefix('[') {
            Some(bracketed) => bracketed.split_once(']')?.1,
            None => host_port.split_once(':').map_or("", |(_, port)| port),
        };
        return match after_host.strip_prefix(':').unwrap_or(after_host) {
            "" => Some(5432),
            port => port.parse().ok(),
        };
    }
    let mut port = Some(5432);
    for pair in url.split_whitespace() {
        match pair.split_once('=') {
            Some(("port", value)) => port = value.trim_matches('\'').parse().ok(),
            Some(("host", value)) if value.starts_with('/') || value.contains(',') => return None,
            _ => {}
        }
    }
    port
}

/// A warning (never a decision: a quiet pooler cannot be told from a
/// server) when the URL names a port other than the one the server says
/// it listens on (`inet_server_port()`): something stands in between, a
/// pooler perhaps, or a port mapping.
pub(crate) fn undeclared_pooler_warning(
    url_port: Option<u16>,
    server_port: Option<i32>,
) -> Option<String> {
    let (url_port, server_port) = (url_port?, server_port?);
    (i32::from(url_port) != server_port).then(|| {
        format!(
            "the URL names port {url_port} but the server listens on port {server_port}: if a transaction pooler (PgBouncer pool_mode = transaction, a hosted pooled URL) is in between, declare it with ?{POOLER_PARAMETER}=transaction (a session lock taken through it would outlive its worker)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_named_port_is_read_from_every_form() {
        assert_eq!(named_port("postgres://u@h:6432/db"), Some(6432));
        assert_eq!(named_port("postgres://u:p@h/db"), Some(5432));
        assert_eq!(named_port("postgresql://h/db?port=7000"), Some(7000));
        assert_eq!(named_port("postgres://[::1]:6432/db"), Some(6432));
        assert_eq!(named_port("postgres:///db?host=/var/run/postgresql"), None);
        assert_eq!(named_port("postgres://h1:5432,h2:5433/db"), None);
        assert_eq!(named_port("host=h port=6432 dbname=d"), Some(6432));
        assert_eq!(named_port("host=h dbname=d"), Some(5432));
        assert_eq!(named_port("host=/tmp dbname=d"), None);
    }

    #[test]
    fn a_port_mismatch_warns_and_nothing_else_does() {
        assert!(undeclared_pooler_warning(Some(6432), Some(5432))
            .is_some_and(|warning| warning.contains("?tasktrail_pooler=transaction")));
        assert_eq!(undeclared_pooler_warning(Some(5432), Some(5432)), None);
        assert_eq!(undeclared_pooler_warning(None, Some(5432)), None);
        assert_eq!(undeclared_pooler_warning(Some(6432), None), None);
    }

    #[test]
    fn the_parameter_is_stripped_and_read() {
        assert_eq!(
            split_pooler("postgres://u@h:6432/db?tasktrail_pooler=transaction").unwrap(),
            (
                "postgres://u@h:6432/db".to_owned(),
                Some(Pooler::Transaction)
            )
        );
        assert_eq!(
            split_pooler(
                "postgres://u@h/db?sslmode=disable&tasktrail_pooler=session&connect_timeout=3"
            )
            .unwrap(),
            (
                "postgres://u@h/db?sslmode=disable&connect_timeout=3".to_owned(),
                Some(Pooler::Session)
            )
        );
        assert_eq!(
            split_pooler("postgres://u@h/db?sslmode=disable").unwrap(),
            ("postgres://u@h/db?sslmode=disable".to_owned(), None)
        );
        assert_eq!(
            split_pooler("host=h port=6432 tasktrail_pooler=transaction dbname=d").unwrap(),
            (
                "host=h port=6432 dbname=d".to_owned(),
                Some(Pooler::Transaction)
            )
        );
        assert_eq!(
            split_pooler("host=h dbname=d").unwrap(),
            ("host=h dbname=d".to_owned(), None)
        );
    }

    #[test]
    fn every_pooler_round_trips_through_its_url_value_and_only_transaction_multiplexes() {
        for pooler in [Pooler::None, Pooler::Session, Pooler::Transaction] {
            assert_eq!(Pooler::parse(pooler.as_str()).unwrap(), pooler);
            assert_eq!(pooler.to_string(), pooler.as_str());
            assert_eq!(
                pooler.multiplexes_sessions(),
                pooler == Pooler::Transaction,
                "{pooler}"
            );
        }
        assert_eq!(Pooler::parse("direct").unwrap(), Pooler::None);
        assert_eq!(Pooler::parse(" Transaction ").unwrap(), Pooler::Transaction);
    }

    #[test]
    fn each_liveness_mode_shows_a_name_of_its_own() {
        let modes = [
            LivenessMode::AdvisoryLock,
            LivenessMode::AdvisoryLockOnLivenessUrl,
            LivenessMode::Lease,
        ];
        let names: std::collections::BTreeSet<String> =
            modes.iter().map(ToString::to_string).collect();
        assert_eq!(names.len(), modes.len(), "{names:?}");
        for mode in modes {
            assert_eq!(mode.to_string(), mode.as_str());
            assert!(!mode.as_str().is_empty());
        }
    }

    #[test]
    fn a_bare_parameter_is_refused_and_empty_pairs_are_dropped() {
        assert!(split_pooler("postgres://u@h/db?tasktrail_pooler").is_err());
        assert_eq!(
            split_pooler("postgres://u@h/db?&sslmode=disable&&tasktrail_pooler=session").unwrap(),
            (
                "postgres://u@h/db?sslmode=disable".to_owned(),
                Some(Pooler::Session)
            )
        );
    }

    #[test]
    fn a_url_with_no_host_names_no_port() {
        // The default Unix socket: no TCP port to compare.
        assert_eq!(named_port("postgres:///db"), None);
        assert_eq!(named_port("postgres://u@/db"), None);
    }

    #[test]
    fn an_unknown_pooler_is_refused_without_echoing_the_url() {
        let error = split_pooler("postgres://u:s3cret@h/db?tasktrail_pooler=statement")
            .expect_err("statement pooling is not supported");
        let text = error.to_string();
        assert!(text.contains("tasktrail_pooler"), "{text}");
        assert!(!text.contains("s3cret"), "{text}");
    }
}
