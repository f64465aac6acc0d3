//! Throwaway databases for tests: one fresh database per test on the
//! server named by `TASKTRAIL_TEST_MYSQL_URL`, dropped with the guard
//! (`crate::skip::Scratch`).

use super::MysqlConnection;
use crate::skip::{Scratch, ScratchServer};

/// The environment variable naming the MySQL/MariaDB test server (any
/// database on it whose user may `CREATE DATABASE`), e.g.
/// `mysql://root@127.0.0.1:3306/test`.
pub const TEST_MYSQL_URL_VARIABLE: &str = "TASKTRAIL_TEST_MYSQL_URL";

/// The MySQL test server.
#[derive(Debug)]
pub struct MysqlTestServer;

impl ScratchServer for MysqlTestServer {
    const VARIABLE: &'static str = TEST_MYSQL_URL_VARIABLE;
    const EXAMPLE: &'static str = "mysql://root@127.0.0.1:3306/test";
    type Admin = MysqlConnection;

    fn create_sql(name: &str) -> String {
        format!("CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")
    }

    fn drop_sql(name: &str) -> String {
        format!("DROP DATABASE IF EXISTS {name}")
    }
}

/// A database of its own for one test on the MySQL test server.
pub type ScratchMysqlDatabase = Scratch<MysqlTestServer>;

/// The test server's URL from [`TEST_MYSQL_URL_VARIABLE`], or `None`
/// after one visible `skipped:` line on stderr.
///
/// # Panics
///
/// When the variable is not set and `CI` is: in CI the MySQL tests must
/// run, never skip.
pub fn test_mysql_url() -> Option<String> {
    crate::skip::test_server_url::<MysqlTestServer>()
}
