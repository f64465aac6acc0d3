//! A throwaway Postgres cluster for tests that must stop, restart or
//! reconfigure a server: `initdb` into a temporary directory and `pg_ctl` on
//! a free port, run as the `postgres` user (the tests run as root, which
//! Postgres refuses to run as). The shared test server is never touched.
//!
//! Reusable: `#[path = "support/throwaway_cluster.rs"] mod throwaway_cluster;`
//! in any test file of this crate. Needs the Postgres server binaries
//! (`/usr/lib/postgresql/<version>/bin`, or `$TASKTRAIL_PG_BIN`), `runuser`,
//! and root.
#![allow(dead_code, unreachable_pub)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// Where the server binaries are: `$TASKTRAIL_PG_BIN`, or the newest
/// `/usr/lib/postgresql/<version>/bin` that has `initdb`.
pub fn server_binaries() -> PathBuf {
    if let Ok(dir) = std::env::var("TASKTRAIL_PG_BIN") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("no /usr/lib/postgresql: install the postgresql server package")
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version: u32 = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no Postgres server binaries (initdb) under /usr/lib/postgresql")
}

/// A Postgres cluster of its own, on 127.0.0.1 and a free port, deleted
/// (stopped at once) when dropped.
#[derive(Debug)]
pub struct ThrowawayCluster {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    /// Extra `-c name=value` server settings.
    settings: Vec<String>,
}

impl ThrowawayCluster {
    /// `initdb` (trust authentication for local connections, no fsync) and
    /// start. Panics with the server's log when something fails.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`ThrowawayCluster::start`] with extra server settings
    /// (`"max_connections=40"`).
    pub fn start_with(settings: &[&str]) -> Self {
        let bin = server_binaries();
        let dir = tempfile::Builder::new()
            .prefix("tasktrail-cluster-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let owner = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(owner.success(), "chown the cluster directory to postgres");
        let cluster = Self {
            bin,
            port: free_port(),
            dir,
            settings: settings.iter().map(|s| (*s).to_owned()).collect(),
        };
        let data = cluster.data_dir();
        let initdb = cluster.as_postgres(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        );
        assert!(
            initdb.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&initdb.stderr)
        );
        cluster.start_server();
        cluster
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` as the `postgres` superuser.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates `name` (a plain identifier).
    pub fn create_database(&self, name: &str) {
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
    }

    /// Runs `sql` with `psql` against `database`; returns its unaligned
    /// output. Panics if it fails.
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let output = Command::new(self.bin.join("psql"))
            .or_else_system_psql()
            .args([
                "-X",
                "-qtA",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                &self.url(database),
            ])
            .args(["-c", sql])
            .output()
            .expect("psql");
        assert!(
            output.status.success(),
            "psql {sql:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// `pg_ctl stop -m fast`: every session is ended, as in a restart for a
    /// minor upgrade or a failover.
    pub fn stop(&self) {
        let stopped = self.as_postgres(
            "pg_ctl",
            &["-D", path_str(&self.data_dir()), "-m", "fast", "-w", "stop"],
        );
        assert!(
            stopped.status.success(),
            "pg_ctl stop failed: {}",
            String::from_utf8_lossy(&stopped.stderr)
        );
    }

    /// Starts the stopped server again, on the same port.
    pub fn start_again(&self) {
        self.start_server();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    fn start_server(&self) {
        let mut options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c fsync=off -c full_page_writes=off",
            self.port,
            path_str(self.dir.path())
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        let started = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir()),
                "-l",
                path_str(&self.dir.path().join("server.log")),
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        );
        assert!(
            started.status.success(),
            "pg_ctl start failed: {} {}",
            String::from_utf8_lossy(&started.stderr),
            self.log()
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        while Command::new(self.bin.join("pg_isready"))
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .output()
            .map(|output| !output.status.success())
            .unwrap_or(true)
        {
            assert!(
                Instant::now() < deadline,
                "server not ready: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server binaries as the `postgres` user.
    fn as_postgres(&self, program: &str, args: &[&str]) -> Output {
        Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join(program))
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|error| panic!("runuser {program}: {error}"))
    }
}

impl Drop for ThrowawayCluster {
    fn drop(&mut self) {
        let _ = self.as_postgres(
            "pg_ctl",
            &[
                "-D",
                path_str(&self.data_dir()),
                "-m",
                "immediate",
                "-w",
                "stop",
            ],
        );
    }
}

/// `psql` from the server's directory when it is there, else from `PATH`.
trait OrElseSystemPsql {
    fn or_else_system_psql(self) -> Self;
}

impl OrElseSystemPsql for Command {
    fn or_else_system_psql(self) -> Self {
        if Path::new(self.get_program()).exists() {
            self
        } else {
            Command::new("psql")
        }
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("UTF-8 path")
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}
