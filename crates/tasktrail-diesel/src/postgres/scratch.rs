//! Throwaway databases for tests: one fresh database per test on the server
//! named by `TASKTRAIL_TEST_POSTGRES_URL`, dropped with the guard. A server
//! that imports tasktrail can use it to run its own tests on Postgres.

use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::Connection;

/// The environment variable naming the test server (any database on it
/// whose user may `CREATE DATABASE`).
pub const TEST_POSTGRES_URL_VARIABLE: &str = "TASKTRAIL_TEST_POSTGRES_URL";

/// The environment variable that marks a CI run (`.ci/run` exports
/// `CI=1`; hosted CI services set `CI=true`).
pub const CI_VARIABLE: &str = "CI";

/// The test server's URL from [`TEST_POSTGRES_URL_VARIABLE`], or `None`
/// when it is not set, in which case the calling test skips its Postgres
/// part, visibly: one `skipped: <test>: TASKTRAIL_TEST_POSTGRES_URL is not
/// set` line is written straight to the process's stderr (not through
/// `eprintln!`, whose output the test harness captures and throws away for
/// a passing test), so `cargo test` shows every skip.
///
/// # Panics
///
/// When the variable is not set and [`CI_VARIABLE`] is (to anything but
/// empty, `0` or `false`): in CI the Postgres tests must run, never skip.
pub fn test_postgres_url() -> Option<String> {
    match std::env::var(TEST_POSTGRES_URL_VARIABLE) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            let test = std::thread::current()
                .name()
                .unwrap_or("a Postgres test")
                .to_owned();
            assert!(
                !crate::skip::running_in_ci(),
                "{test}: {TEST_POSTGRES_URL_VARIABLE} is not set but {CI_VARIABLE} is: \
                 the Postgres tests never skip in CI (point the variable at a server, \
                 e.g. postgres://postgres@127.0.0.1:5432/test)"
            );
            crate::report_skipped_test(&format!(
                "skipped: {test}: {TEST_POSTGRES_URL_VARIABLE} is not set"
            ));
            None
        }
    }
}

/// A database of its own for one test, dropped (`WITH (FORCE)`) when the
/// guard is.
#[derive(Debug)]
pub struct ScratchDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchDatabase {
    /// A fresh database, or `None` (after writing one visible `skipped:`
    /// line, see [`test_postgres_url`]) when [`TEST_POSTGRES_URL_VARIABLE`]
    /// is not set.
    ///
    /// # Panics
    ///
    /// When the variable is set but its server cannot be reached or refuses
    /// `CREATE DATABASE`, and when it is not set under CI (see
    /// [`test_postgres_url`]): a test run must never skip silently.
    pub fn create() -> Option<Self> {
        let admin_url = test_postgres_url()?;
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
        let mut admin = PgConnection::establish(&admin_url).unwrap_or_else(|_| {
            panic!("{TEST_POSTGRES_URL_VARIABLE} is set but its server cannot be reached")
        });
        // `name` is made here from a UUID: no outside input reaches the SQL.
        // From `template0`, which takes no connections: a copy of
        // `template1` fails ("source database is being accessed by other
        // users") while anyone is connected to it, and many tests make
        // databases at once on a shared server.
        admin
            .batch_execute(&format!("CREATE DATABASE {name} TEMPLATE template0"))
            .unwrap_or_else(|_| {
                panic!("cannot create a test database on the {TEST_POSTGRES_URL_VARIABLE} server")
            });
        let url = crate::skip::with_database(&admin_url, &name);
        Self {
            admin_url,
            name,
            url,
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

impl Drop for ScratchDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ));
        }
    }
}
