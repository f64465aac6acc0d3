//! Throwaway databases for tests: one fresh database per test on the server
//! named by `TASKTRAIL_TEST_POSTGRES_URL`, dropped with the guard. A server
//! that imports tasktrail can use it to run its own tests on Postgres.

use diesel::pg::PgConnection;

use crate::skip::{Scratch, ScratchServer};

/// The environment variable naming the test server (any database on it
/// whose user may `CREATE DATABASE`).
pub const TEST_POSTGRES_URL_VARIABLE: &str = "TASKTRAIL_TEST_POSTGRES_URL";

/// The environment variable that marks a CI run (`.ci/run` exports
/// `CI=1`; hosted CI services set `CI=true`).
pub const CI_VARIABLE: &str = "CI";

/// The Postgres test server. Databases are made from `template0`, which
/// takes no connections: a copy of `template1` fails ("source database is
/// being accessed by other users") while anyone is connected to it, and
/// many tests make databases at once on a shared server.
#[derive(Debug)]
pub struct PostgresTestServer;

impl ScratchServer for PostgresTestServer {
    const VARIABLE: &'static str = TEST_POSTGRES_URL_VARIABLE;
    const EXAMPLE: &'static str = "postgres://postgres@127.0.0.1:5432/test";
    type Admin = PgConnection;

    fn create_sql(name: &str) -> String {
        format!("CREATE DATABASE {name} TEMPLATE template0")
    }

    fn drop_sql(name: &str) -> String {
        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    }
}

/// A database of its own for one test on the Postgres test server,
/// dropped (`WITH (FORCE)`) when the guard is.
pub type ScratchDatabase = Scratch<PostgresTestServer>;

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
    crate::skip::test_server_url::<PostgresTestServer>()
}
