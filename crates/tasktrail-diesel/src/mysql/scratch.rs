//! Throwaway databases for tests: one fresh database per test on the
//! server named by `TASKTRAIL_TEST_MYSQL_URL`, dropped with the guard.

use diesel::connection::SimpleConnection;
use diesel::Connection;

use super::MysqlConnection;

/// The environment variable naming the MySQL/MariaDB test server (any
/// database on it whose user may `CREATE DATABASE`), e.g.
/// `mysql://root@127.0.0.1:3306/test`.
pub const TEST_MYSQL_URL_VARIABLE: &str = "TASKTRAIL_TEST_MYSQL_URL";

/// The test server's URL from [`TEST_MYSQL_URL_VARIABLE`], or `None`
/// after one visible `skipped:` line on stderr.
///
/// # Panics
///
/// When the variable is not set and `CI` is: in CI the MySQL tests must
/// run, never skip.
pub fn test_mysql_url() -> Option<String> {
    match std::env::var(TEST_MYSQL_URL_VARIABLE) {
        Ok(url) if !url.trim().is_empty() => Some(url.trim().to_owned()),
        _ => {
            let test = std::thread::current()
                .name()
                .unwrap_or("a MySQL test")
                .to_owned();
            assert!(
                !crate::skip::running_in_ci(),
                "{test}: {TEST_MYSQL_URL_VARIABLE} is not set but CI is: the MySQL tests never \
                 skip in CI (point the variable at a server, e.g. mysql://root@127.0.0.1:3306/test)"
            );
            crate::report_skipped_test(&format!(
                "skipped: {test}: {TEST_MYSQL_URL_VARIABLE} is not set"
            ));
            None
        }
    }
}

/// A database of its own for one test, dropped when the guard is.
#[derive(Debug)]
pub struct ScratchMysqlDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl ScratchMysqlDatabase {
    /// A fresh database, or `None` (after a visible `skipped:` line) when
    /// [`TEST_MYSQL_URL_VARIABLE`] is not set.
    ///
    /// # Panics
    ///
    /// When the variable is set but its server cannot be reached or refuses
    /// `CREATE DATABASE`, and when it is not set under CI.
    pub fn create() -> Option<Self> {
        let admin_url = test_mysql_url()?;
        Some(Self::create_on(&admin_url))
    }

    /// A fresh database on the server `admin_url` reaches.
    ///
    /// # Panics
    ///
    /// When the server cannot be reached or refuses `CREATE DATABASE`.
    pub fn create_on(admin_url: &str) -> Self {
        let admin_url = admin_url.to_owned();
        let name = format!("tasktrail_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = MysqlConnection::establish(&admin_url).unwrap_or_else(|_| {
            panic!("{TEST_MYSQL_URL_VARIABLE} is set but its server cannot be reached")
        });
        // `name` is made here from a UUID: no outside input reaches the SQL.
        admin
            .batch_execute(&format!(
                "CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
            ))
            .unwrap_or_else(|_| {
                panic!("cannot create a test database on the {TEST_MYSQL_URL_VARIABLE} server")
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

impl Drop for ScratchMysqlDatabase {
    fn drop(&mut self) {
        if let Ok(mut admin) = MysqlConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS {}", self.name));
        }
    }
}
