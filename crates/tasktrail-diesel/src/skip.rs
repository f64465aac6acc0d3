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

/// A server backend's test server: the variable naming it, how to reach it
/// as the admin, and its `CREATE DATABASE` / `DROP DATABASE` statements.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub trait ScratchServer {
    /// The environment variable naming the server.
    const VARIABLE: &'static str;
    /// An example of the variable's value, for the message under CI.
    const EXAMPLE: &'static str;
    /// The admin connection.
    type Admin: diesel::Connection + diesel::connection::SimpleConnection;
    /// Creates database `name` (a name made here from a UUID).
    fn create_sql(name: &str) -> String;
    /// Drops database `name`, whoever is connected to it.
    fn drop_sql(name: &str) -> String;
}

/// The test server's URL from `S::VARIABLE`, or `None` after one visible
/// `skipped:` line naming the running test (see [`report_skipped_test`]).
///
/// # Panics
///
/// When the variable is not set and `CI` is (to anything but empty, `0`
/// or `false`): in CI the server's tests must run, never skip.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub(crate) fn test_server_url<S: ScratchServer>() -> Option<String> {
    match std::env::var(S::VARIABLE) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            let test = std::thread::current()
                .name()
                .unwrap_or("a server test")
                .to_owned();
            assert!(
                !running_in_ci(),
                "{test}: {} is not set but CI is: the server's tests never skip in CI \
                 (point the variable at a server, e.g. {})",
                S::VARIABLE,
                S::EXAMPLE
            );
            report_skipped_test(&format!("skipped: {test}: {} is not set", S::VARIABLE));
            None
        }
    }
}

/// A database of its own for one test on a server backend's test server,
/// dropped when the guard is (`ScratchDatabase` on Postgres,
/// `ScratchMysqlDatabase` on MySQL).
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub struct Scratch<S: ScratchServer> {
    admin_url: String,
    name: String,
    url: String,
    server: std::marker::PhantomData<S>,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<S: ScratchServer> std::fmt::Debug for Scratch<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scratch")
            .field("name", &self.name)
            .field("url", &crate::redact(&self.url))
            .finish()
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<S: ScratchServer> Scratch<S> {
    /// A fresh database, or `None` (after one visible `skipped:` line) when
    /// the server's variable is not set.
    ///
    /// # Panics
    ///
    /// When the variable is set but its server cannot be reached or refuses
    /// `CREATE DATABASE`, and when it is not set under CI: a test run must
    /// never skip silently.
    pub fn create() -> Option<Self> {
        let admin_url = test_server_url::<S>()?;
        Some(Self::create_on(&admin_url))
    }

    /// A fresh database on the server `admin_url` reaches (directly: the
    /// `CREATE DATABASE` and the final `DROP DATABASE` run there), for tests
    /// with a server of their own.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or refuses `CREATE DATABASE`.
    pub fn create_on(admin_url: &str) -> Self {
        let admin_url = admin_url.to_owned();
        let name = format!("tasktrail_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = <S::Admin as diesel::Connection>::establish(&admin_url)
            .unwrap_or_else(|_| panic!("{} is set but its server cannot be reached", S::VARIABLE));
        diesel::connection::SimpleConnection::batch_execute(&mut admin, &S::create_sql(&name))
            .unwrap_or_else(|_| {
                panic!(
                    "cannot create a test database on the {} server",
                    S::VARIABLE
                )
            });
        let url = with_database(&admin_url, &name);
        Self {
            admin_url,
            name,
            url,
            server: std::marker::PhantomData,
        }
    }

    /// The fresh database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The fresh database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<S: ScratchServer> Drop for Scratch<S> {
    fn drop(&mut self) {
        if let Ok(mut admin) = <S::Admin as diesel::Connection>::establish(&self.admin_url) {
            let _ = diesel::connection::SimpleConnection::batch_execute(
                &mut admin,
                &S::drop_sql(&self.name),
            );
        }
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
