//! A throwaway PgBouncer (Debian's `pgbouncer` package, 1.18) in front of a
//! [`ThrowawayCluster`](super::throwaway_cluster::ThrowawayCluster): its own
//! temp directory, 127.0.0.1 and a free port, `auth_type = trust`,
//! `pool_mode = transaction`, every database name forwarded to the
//! cluster. Started as the `postgres` user (PgBouncer refuses root), as a
//! daemon whose pid file the harness reads; stopped by that pid when
//! dropped.
//!
//! Reusable: `#[path = ".../support/pgbouncer.rs"] mod pgbouncer;` next to
//! `throwaway_cluster.rs` (the caller declares that module too). Needs
//! root, `runuser` and `/usr/sbin/pgbouncer`.
#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// How the pooler is configured.
#[derive(Debug, Clone)]
pub struct BouncerSettings {
    /// `pool_mode`: `transaction` (default) or `session`.
    pub pool_mode: &'static str,
    /// `max_client_conn`: how many clients it accepts.
    pub max_client_conn: u32,
    /// `default_pool_size` and `max_user_connections`: how many server
    /// connections it opens (per database, and for the one user in all).
    pub server_connections: u32,
}

impl Default for BouncerSettings {
    fn default() -> Self {
        Self {
            pool_mode: "transaction",
            max_client_conn: 1000,
            server_connections: 20,
        }
    }
}

/// A running PgBouncer.
#[derive(Debug)]
pub struct PgBouncer {
    dir: tempfile::TempDir,
    port: u16,
    pid: Option<u32>,
}

/// Where the binary is: `$TASKTRAIL_PGBOUNCER`, else `/usr/sbin/pgbouncer`.
pub fn pgbouncer_binary() -> PathBuf {
    std::env::var_os("TASKTRAIL_PGBOUNCER")
        .map_or_else(|| PathBuf::from("/usr/sbin/pgbouncer"), PathBuf::from)
}

impl PgBouncer {
    /// Starts PgBouncer in front of the Postgres server on 127.0.0.1 at
    /// `server_port`. Panics with its log when it does not come up.
    pub fn start(server_port: u16, settings: &BouncerSettings) -> Self {
        let binary = pgbouncer_binary();
        assert!(
            binary.exists(),
            "no PgBouncer at {} (apt-get install pgbouncer)",
            binary.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("tasktrail-pgbouncer-")
            .tempdir_in("/tmp")
            .expect("temp dir");
        let port = super::throwaway_cluster::free_port();
        let path = |name: &str| dir.path().join(name);
        std::fs::write(path("users.txt"), "\"postgres\" \"\"\n").expect("auth file");
        let config = format!(
            "[databases]\n\
             * = host=127.0.0.1 port={server_port}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {port}\n\
             unix_socket_dir =\n\
             auth_type = trust\n\
             auth_file = {auth}\n\
             pool_mode = {mode}\n\
             max_client_conn = {clients}\n\
             default_pool_size = {servers}\n\
             max_user_connections = {servers}\n\
             reserve_pool_size = 0\n\
             server_idle_timeout = 5\n\
             ignore_startup_parameters = extra_float_digits\n\
             admin_users = postgres\n\
             logfile = {log}\n\
             pidfile = {pidfile}\n",
            auth = path("users.txt").display(),
            mode = settings.pool_mode,
            clients = settings.max_client_conn,
            servers = settings.server_connections,
            log = path("pgbouncer.log").display(),
            pidfile = path("pgbouncer.pid").display(),
        );
        std::fs::write(path("pgbouncer.ini"), config).expect("config");
        let owner = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(owner.success(), "chown the PgBouncer directory to postgres");
        // Room for every client: the soft descriptor limit is often 1024.
        let descriptors = settings.max_client_conn + 256;
        let started = Command::new("runuser")
            .args(["-u", "postgres", "--", "sh", "-c"])
            .arg(format!(
                "ulimit -n {descriptors} 2>/dev/null || ulimit -n $(ulimit -Hn); exec \"$0\" -d \"$1\""
            ))
            .arg(&binary)
            .arg(path("pgbouncer.ini"))
            .output()
            .expect("runuser pgbouncer");
        let mut bouncer = Self {
            port,
            pid: None,
            dir,
        };
        assert!(
            started.status.success(),
            "pgbouncer did not start: {} {}",
            String::from_utf8_lossy(&started.stderr),
            bouncer.log()
        );
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let pid = std::fs::read_to_string(bouncer.dir.path().join("pgbouncer.pid"))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    bouncer.pid = Some(pid);
                    return bouncer;
                }
            }
            assert!(
                Instant::now() < deadline,
                "pgbouncer not listening: {}",
                bouncer.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A URL for `database` through the pooler, declared as a transaction
    /// pooler (`?tasktrail_pooler=transaction`).
    pub fn url(&self, database: &str) -> String {
        format!(
            "{}?tasktrail_pooler=transaction",
            self.undeclared_url(database)
        )
    }

    /// A URL for `database` through the pooler, with no declaration.
    pub fn undeclared_url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pgbouncer.log")).unwrap_or_default()
    }

    /// The directory it runs in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            // SIGTERM: PgBouncer exits at once, closing every connection.
            let _ = Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Path::new(&format!("/proc/{pid}")).exists() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
