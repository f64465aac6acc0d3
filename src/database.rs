//! Database URLs and opening the right backend for one.
//!
//! Accepted forms:
//! - a file path (`tasktrail.db`, `/var/lib/tasktrail/trail.db`) or
//!   `sqlite://PATH` (`sqlite:///abs/path.db`, `sqlite://relative.db`): the
//!   embedded SQLite backend;
//! - `postgres://user:password@host:port/database` (or `postgresql://`): the
//!   Postgres backend, when built with the `postgres` feature;
//! - a libpq key/value string starting with a libpq keyword
//!   (`host=db user=app password=... dbname=trail`): Postgres too;
//! - `mysql://user:password@host:port/database` (or `mariadb://`, read as
//!   `mysql://`): the MySQL / MariaDB backend, when built with the `mysql`
//!   feature.
//!
//! A URL's password never appears in an error or a `Display`: it prints as
//! `***`, in every form libpq accepts (`user:pw@`, `?password=`,
//! percent-encoded, `password=` in a key/value string), through the one
//! redactor, [`tasktrail_diesel::redact`].

use std::fmt;
use std::path::PathBuf;

use tasktrail_core::backend::{
    FinishRow, FinishWrite, LivenessJudge, NewRunningRow, NewSession, RecoveryRequest, ReportClaim,
};
use tasktrail_core::{
    RecoveredTask, SessionKey, SessionRecord, Storage, StorageError, TaskFilter, TaskId,
    TaskRecord, Timestamp, WorkerId, WorkerRecord, WorkerRegistration,
};

/// A parsed database URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
    /// A Postgres connection URL (kept whole; shown with its password
    /// redacted).
    Postgres(String),
    /// A MySQL / MariaDB connection URL, `mysql://` (kept whole; shown with
    /// its password redacted).
    Mysql(String),
}

/// A database URL that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatabaseUrlError {
    /// Empty, or only whitespace.
    #[error("database URL is empty")]
    Empty,
    /// A scheme other than `sqlite`, `postgres`, `postgresql`, `mysql` or
    /// `mariadb`.
    #[error("database URL has unsupported scheme {scheme:?} (use a file path, sqlite://PATH, postgres://... or mysql://...)")]
    UnsupportedScheme {
        /// The scheme.
        scheme: String,
    },
    /// A URL or path holding control characters.
    #[error("database URL holds control characters")]
    ControlCharacters,
    /// `sqlite://` with no path.
    #[error("sqlite URL has no file path")]
    MissingPath,
    /// A Postgres URL that is malformed (no host, control characters...).
    #[error("postgres URL is malformed: {reason}")]
    MalformedPostgres {
        /// What is wrong (never the password).
        reason: &'static str,
    },
    /// A SQLite name that is not one file on disk: `:memory:` (the trail
    /// would vanish with the process) or a `file:` URI (its parameters
    /// could open another file, or none).
    #[error("{name:?} is not a database file: give a path or sqlite://PATH ({reason})")]
    NotAFile {
        /// The name given.
        name: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// A MySQL URL that is malformed (no host, no database, spaces...).
    #[error("mysql URL is malformed: {reason}")]
    MalformedMysql {
        /// What is wrong (never the password).
        reason: &'static str,
    },
    /// The binary was built without the backend the URL asks for.
    #[error("this tasktrail was built without the {backend} backend (enable the `{backend}` cargo feature)")]
    BackendNotBuilt {
        /// `sqlite`, `postgres` or `mysql`.
        backend: &'static str,
    },
}

impl DatabaseUrl {
    /// Parses a URL or path.
    pub fn parse(input: &str) -> Result<Self, DatabaseUrlError> {
        let input = input.trim();
        if input.is_empty() {
            return Err(DatabaseUrlError::Empty);
        }
        if input.chars().any(char::is_control) {
            return Err(DatabaseUrlError::ControlCharacters);
        }
        let Some((scheme, rest)) = input.split_once("://") else {
            if looks_like_conninfo(input) {
                return Ok(DatabaseUrl::Postgres(input.to_owned()));
            }
            if input == ":memory:" || input.to_ascii_lowercase().starts_with("file:") {
                return sqlite_file(input);
            }
            if let Some((scheme, _)) = input.split_once(':') {
                if looks_like_scheme(scheme) && scheme.len() > 1 {
                    return Err(DatabaseUrlError::UnsupportedScheme {
                        scheme: scheme.to_owned(),
                    });
                }
            }
            return sqlite_file(input);
        };
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" | "file" => {
                if rest.is_empty() {
                    Err(DatabaseUrlError::MissingPath)
                } else {
                    sqlite_file(rest)
                }
            }
            "postgres" | "postgresql" => {
                if password_needs_encoding(rest) {
                    return Err(DatabaseUrlError::MalformedPostgres {
                        reason: "its user or password holds '/', '?' or '#': percent-encode them",
                    });
                }
                let authority = rest.split(['/', '?']).next().unwrap_or_default();
                let host = authority
                    .rsplit_once('@')
                    .map_or(authority, |(_, host)| host);
                // The socket form names its host (a directory) in the query:
                // postgres:///db?host=/var/run/postgresql
                let host_in_query = rest.split_once('?').is_some_and(|(_, query)| {
                    query.split('&').any(|pair| pair.starts_with("host="))
                });
                if host.is_empty() && !host_in_query {
                    return Err(DatabaseUrlError::MalformedPostgres {
                        reason: "it names no host",
                    });
                }
                if input.contains(' ') {
                    return Err(DatabaseUrlError::MalformedPostgres {
                        reason: "it holds spaces",
                    });
                }
                Ok(DatabaseUrl::Postgres(input.to_owned()))
            }
            "mysql" | "mariadb" => mysql_url(rest),
            other => Err(DatabaseUrlError::UnsupportedScheme {
                scheme: other.chars().take(32).collect(),
            }),
        }
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) | DatabaseUrl::Mysql(url) => redact_password(url),
        }
    }
}

/// `mysql://USER[:PASSWORD]@HOST[:PORT]/DB[?params]` (`rest` is what follows
/// the scheme): a host and a database are required; kept as `mysql://`.
fn mysql_url(rest: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
    let malformed = |reason| Err(DatabaseUrlError::MalformedMysql { reason });
    if password_needs_encoding(rest) {
        return malformed("its user or password holds '/', '?' or '#': percent-encode them");
    }
    if rest.contains(' ') {
        return malformed("it holds spaces");
    }
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if host.is_empty() {
        return malformed("it names no host");
    }
    let database = path.split('?').next().unwrap_or_default();
    if database.is_empty() {
        return malformed("it names no database (mysql://USER@HOST/DATABASE)");
    }
    Ok(DatabaseUrl::Mysql(format!("mysql://{rest}")))
}

/// `app:pa/ss@host/db`: a password (or user) holding a character that ends
/// the authority, so libpq would misread the URL (and might echo pieces of
/// the password as a host). `host:5432/db?user=a@b` is fine: what follows
/// its ':' up to the '/' is a port.
fn password_needs_encoding(rest: &str) -> bool {
    let Some(at) = rest.rfind('@') else {
        return false;
    };
    let before_at = &rest[..at];
    let Some(colon) = before_at.find(':') else {
        return false;
    };
    if before_at[..colon].contains(['/', '?', '#']) {
        return false;
    }
    let after_colon = &before_at[colon + 1..];
    match after_colon.find(['/', '?', '#']) {
        Some(end) => !after_colon[..end].chars().all(|c| c.is_ascii_digit()) || end == 0,
        None => false,
    }
}

/// A SQLite database named by a file path: one URL, one file on disk.
fn sqlite_file(path: &str) -> Result<DatabaseUrl, DatabaseUrlError> {
    let refuse = |reason| {
        Err(DatabaseUrlError::NotAFile {
            name: path.chars().take(64).collect(),
            reason,
        })
    };
    if path == ":memory:" || path.is_empty() {
        return refuse("an in-memory database is gone when the process exits");
    }
    if path.to_ascii_lowercase().starts_with("file:") {
        return refuse("SQLite URI filenames and their parameters are not accepted");
    }
    Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
}

/// The libpq keywords a key/value conninfo string starts with in practice.
const CONNINFO_KEYWORDS: [&str; 8] = [
    "host", "hostaddr", "port", "dbname", "user", "password", "sslmode", "service",
];

/// `host=db user=app dbname=trail`: a libpq key/value string (never a file
/// name: those are given as paths or `sqlite://`).
fn looks_like_conninfo(text: &str) -> bool {
    text.split_whitespace().next().is_some_and(|first| {
        first
            .split_once('=')
            .is_some_and(|(key, _)| CONNINFO_KEYWORDS.contains(&key))
    })
}

fn looks_like_scheme(text: &str) -> bool {
    text.chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

pub use tasktrail_diesel::Secrets;

/// A URL or conninfo string with every password replaced by `***`, in
/// every form libpq accepts. The one redactor ([`tasktrail_diesel::redact`]);
/// kept here for callers of this crate.
pub fn redact_password(url: &str) -> String {
    tasktrail_diesel::redact(url)
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// How to open a store, beyond its URL (the defaults fit most uses).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct OpenOptions {
    /// Postgres behind a transaction pooler (`?tasktrail_pooler=transaction`):
    /// a URL reaching the same server directly, for the one liveness
    /// session that holds the workers' advisory locks
    /// ([`PostgresOptions::liveness_url`](tasktrail_diesel::PostgresOptions)).
    /// Without one, workers behind a transaction pooler are judged by their
    /// lease. Ignored for SQLite and for Postgres without a transaction
    /// pooler.
    pub liveness_url: Option<String>,
    /// Postgres: the most pooled connections the store opens (lazily;
    /// besides its liveness session). `None`: the backend's default (8).
    /// A worker needs about its concurrency plus one.
    pub pool_size: Option<u32>,
}

impl OpenOptions {
    /// The default options with this liveness URL.
    pub fn with_liveness_url(mut self, url: Option<String>) -> Self {
        self.liveness_url = url.filter(|url| !url.trim().is_empty());
        self
    }

    /// The default options with this pool size.
    pub fn with_pool_size(mut self, size: Option<u32>) -> Self {
        self.pool_size = size;
        self
    }

    #[cfg(feature = "mysql")]
    fn mysql(&self) -> tasktrail_diesel::MysqlOptions {
        let defaults = tasktrail_diesel::MysqlOptions::default();
        tasktrail_diesel::MysqlOptions {
            pool_size: self.pool_size.unwrap_or(defaults.pool_size),
            ..defaults
        }
    }

    #[cfg(feature = "postgres")]
    fn postgres(&self) -> tasktrail_diesel::PostgresOptions {
        let defaults = tasktrail_diesel::PostgresOptions::default();
        tasktrail_diesel::PostgresOptions {
            liveness_url: self.liveness_url.clone(),
            pool_size: self.pool_size.unwrap_or(defaults.pool_size),
            ..defaults
        }
    }
}

/// An opened store of whichever backend the URL named.
#[derive(Debug)]
#[non_exhaustive]
pub enum AnyStorage {
    /// SQLite.
    #[cfg(feature = "sqlite")]
    Sqlite(tasktrail_diesel::SqliteStorage),
    /// Postgres.
    #[cfg(feature = "postgres")]
    Postgres(tasktrail_diesel::PostgresStorage),
    /// MySQL / MariaDB.
    #[cfg(feature = "mysql")]
    Mysql(tasktrail_diesel::MysqlStorage),
}

/// Why a database could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The URL is unusable.
    #[error(transparent)]
    Url(#[from] DatabaseUrlError),
    /// The backend refused or failed.
    #[error("cannot open {url}: {error}")]
    Storage {
        /// The URL, password redacted.
        url: String,
        /// Why.
        #[source]
        error: StorageError,
    },
}

/// Runs `$sqlite` (with the file path) or `$postgres` (with the URL) for
/// the backend `$url` names: a storage error becomes
/// [`OpenError::Storage`] with the URL redacted, a backend this binary was
/// built without [`DatabaseUrlError::BackendNotBuilt`].
macro_rules! for_url {
    ($url:expr, $ok:ty, |$path:ident| $sqlite:expr, |$postgres_url:ident| $postgres:expr, |$mysql_url:ident| $mysql:expr) => {{
        let url: &DatabaseUrl = $url;
        let result: Result<$ok, StorageError> = match url {
            #[cfg(feature = "sqlite")]
            DatabaseUrl::Sqlite($path) => $sqlite,
            #[cfg(not(feature = "sqlite"))]
            DatabaseUrl::Sqlite(_) => {
                return Err(DatabaseUrlError::BackendNotBuilt { backend: "sqlite" }.into())
            }
            #[cfg(feature = "postgres")]
            DatabaseUrl::Postgres($postgres_url) => $postgres,
            #[cfg(not(feature = "postgres"))]
            DatabaseUrl::Postgres(_) => {
                return Err(DatabaseUrlError::BackendNotBuilt {
                    backend: "postgres",
                }
                .into())
            }
            #[cfg(feature = "mysql")]
            DatabaseUrl::Mysql($mysql_url) => $mysql,
            #[cfg(not(feature = "mysql"))]
            DatabaseUrl::Mysql(_) => {
                return Err(DatabaseUrlError::BackendNotBuilt { backend: "mysql" }.into())
            }
        };
        result.map_err(|error| OpenError::Storage {
            url: url.redacted(),
            error,
        })
    }};
}

/// Runs `$body` on whichever store `$self` (an `&AnyStorage`) holds.
macro_rules! with_store {
    ($self:expr, |$store:ident| $body:expr) => {
        match $self {
            #[cfg(feature = "sqlite")]
            AnyStorage::Sqlite($store) => $body,
            #[cfg(feature = "postgres")]
            AnyStorage::Postgres($store) => $body,
            #[cfg(feature = "mysql")]
            AnyStorage::Mysql($store) => $body,
            // Built with no backend: there is no store to have.
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            _ => match *$self {},
        }
    };
}

// Built with no backend, the methods' arguments go unused and every URL
// is refused before a store could answer.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres", feature = "mysql")),
    allow(unused_variables, unreachable_code)
)]
impl AnyStorage {
    /// Opens the database and applies pending migrations.
    pub fn open(url: &DatabaseUrl) -> Result<Self, OpenError> {
        Self::open_with(url, &OpenOptions::default())
    }

    /// Opens the database with `options` and applies pending migrations.
    pub fn open_with(url: &DatabaseUrl, options: &OpenOptions) -> Result<Self, OpenError> {
        let storage = Self::open_unmigrated_with(url, options)?;
        storage.migrate().map_err(|error| OpenError::Storage {
            url: url.redacted(),
            error,
        })?;
        Ok(storage)
    }

    /// Opens for reading only (`list`, `show`, `sessions`, `recover
    /// --dry-run`): never creates a file, never migrates, runs no DDL; a
    /// database that needs a migration is refused, naming it. Works on a
    /// read-only mount and with a Postgres role that may only SELECT.
    pub fn open_read_only(url: &DatabaseUrl) -> Result<Self, OpenError> {
        Self::open_read_only_with(url, &OpenOptions::default())
    }

    /// [`AnyStorage::open_read_only`] with `options`.
    // Options only tune the server backends.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql")),
        allow(unused_variables)
    )]
    pub fn open_read_only_with(
        url: &DatabaseUrl,
        options: &OpenOptions,
    ) -> Result<Self, OpenError> {
        for_url!(
            url,
            AnyStorage,
            |path| tasktrail_diesel::SqliteStorage::open_read_only(path, &Default::default())
                .map(AnyStorage::Sqlite),
            |postgres_url| tasktrail_diesel::PostgresStorage::open_read_only(
                postgres_url,
                &options.postgres()
            )
            .map(AnyStorage::Postgres),
            |mysql_url| tasktrail_diesel::MysqlStorage::open_read_only(mysql_url, &options.mysql())
                .map(AnyStorage::Mysql)
        )
    }

    /// Connects without applying migrations (the `migrate` command, which
    /// then reports what it applied). Refuses databases that are not ours
    /// all the same.
    pub fn open_unmigrated(url: &DatabaseUrl) -> Result<Self, OpenError> {
        Self::open_unmigrated_with(url, &OpenOptions::default())
    }

    /// [`AnyStorage::open_unmigrated`] with `options`.
    // Options only tune the server backends.
    #[cfg_attr(
        not(any(feature = "postgres", feature = "mysql")),
        allow(unused_variables)
    )]
    pub fn open_unmigrated_with(
        url: &DatabaseUrl,
        options: &OpenOptions,
    ) -> Result<Self, OpenError> {
        for_url!(
            url,
            AnyStorage,
            |path| tasktrail_diesel::SqliteStorage::open_unmigrated(path, &Default::default())
                .map(AnyStorage::Sqlite),
            |postgres_url| tasktrail_diesel::PostgresStorage::open_unmigrated(
                postgres_url,
                &options.postgres()
            )
            .map(AnyStorage::Postgres),
            |mysql_url| tasktrail_diesel::MysqlStorage::open_unmigrated(
                mysql_url,
                &options.mysql()
            )
            .map(AnyStorage::Mysql)
        )
    }

    /// Adopts an existing database whose `task_history` another program
    /// wrote before tasktrail (see `SqliteStorage::adopt`): checks its
    /// shape, records the baseline, applies the fix; refused with
    /// [`StorageError::NotAdoptable`] (every difference listed, nothing
    /// changed) when it differs. Returns the versions recorded. SQLite and
    /// Postgres.
    pub fn adopt(url: &DatabaseUrl) -> Result<Vec<String>, OpenError> {
        for_url!(
            url,
            Vec<String>,
            |path| tasktrail_diesel::SqliteStorage::adopt(path, &Default::default()),
            |postgres_url| tasktrail_diesel::PostgresStorage::adopt(postgres_url),
            |mysql_url| tasktrail_diesel::MysqlStorage::adopt(mysql_url)
        )
    }

    /// Row `id` of `task_history` as the database holds it, every column as
    /// text, whether or not it reads as a record (for showing a row that
    /// does not). `None` when there is no such row.
    pub fn raw_task_columns(
        &self,
        id: TaskId,
    ) -> Result<Option<tasktrail_diesel::RawColumns>, StorageError> {
        with_store!(self, |store| store.raw_task_columns(id))
    }

    /// Retention (`SqliteStorage::prune` / `PostgresStorage::prune`):
    /// deletes final rows that ended before the cut-off with their
    /// sessions, in bounded batches, and workers no row names; never a
    /// `running` row.
    pub fn prune(
        &self,
        request: &tasktrail_core::PruneRequest,
    ) -> Result<tasktrail_core::PruneReport, StorageError> {
        with_store!(self, |store| store.prune(request))
    }

    /// The operator's figures (`SqliteStorage::stats` /
    /// `PostgresStorage::stats`): rows by status, running rows per worker,
    /// recent interruptions by cause, durations by status over the window;
    /// computed in the database, reading only (fine on a store from
    /// [`AnyStorage::open_read_only`]).
    pub fn stats(
        &self,
        request: &tasktrail_core::StatsRequest,
    ) -> Result<tasktrail_core::TaskStats, StorageError> {
        with_store!(self, |store| store.stats(request))
    }

    /// How this store connects and proves its workers alive, in a few
    /// words (`tasktrail worker`'s boot line): `sqlite, liveness by file
    /// lock`; `postgres direct, liveness by advisory lock`; `postgres
    /// through a transaction pooler, liveness by lease on the database's
    /// clock`; ...
    pub fn connection_summary(&self) -> String {
        match self {
            #[cfg(feature = "sqlite")]
            AnyStorage::Sqlite(_) => "sqlite, liveness by file lock".to_owned(),
            #[cfg(feature = "postgres")]
            AnyStorage::Postgres(store) => {
                let pooler = match store.pooler() {
                    tasktrail_diesel::Pooler::Transaction => {
                        "postgres through a transaction pooler"
                    }
                    tasktrail_diesel::Pooler::Session => "postgres through a session pooler",
                    _ => "postgres direct",
                };
                format!("{pooler}, liveness by {}", store.liveness_mode())
            }
            #[cfg(feature = "mysql")]
            AnyStorage::Mysql(_) => "mysql, liveness by named lock".to_owned(),
            // Built with no backend: there is no store to have.
            #[cfg(not(any(feature = "sqlite", feature = "postgres", feature = "mysql")))]
            _ => match *self {},
        }
    }

    /// A warning about how the store connects, if any: a Postgres URL with
    /// no pooler declared whose port is not the one the server listens on
    /// (a transaction pooler in between must be declared).
    pub fn connection_warning(&self) -> Option<String> {
        match self {
            #[cfg(feature = "postgres")]
            AnyStorage::Postgres(store) => store.pooler_warning().map(str::to_owned),
            #[allow(unreachable_patterns)]
            _ => None,
        }
    }

    /// Applies pending migrations; returns the versions applied.
    pub fn migrate(&self) -> Result<Vec<String>, StorageError> {
        with_store!(self, |store| store.migrate())
    }

    /// The store, shareable between threads (a worker's task threads and its
    /// heartbeat).
    pub fn into_shared(self) -> std::sync::Arc<dyn Storage> {
        match self {
            #[cfg(feature = "sqlite")]
            AnyStorage::Sqlite(store) => std::sync::Arc::new(store),
            #[cfg(feature = "postgres")]
            AnyStorage::Postgres(store) => std::sync::Arc::new(store),
            #[cfg(feature = "mysql")]
            AnyStorage::Mysql(store) => std::sync::Arc::new(store),
        }
    }

    /// The store as a trait object.
    pub fn as_storage(&self) -> &dyn Storage {
        with_store!(self, |store| store)
    }
}

/// An `AnyStorage` is a `Storage` itself: every method goes to the backend
/// the URL named.
impl Storage for AnyStorage {
    fn register_worker(&self, registration: &WorkerRegistration) -> Result<(), StorageError> {
        self.as_storage().register_worker(registration)
    }
    fn heartbeat_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.as_storage().heartbeat_worker(worker, at)
    }
    fn deregister_worker(&self, worker: WorkerId, at: Timestamp) -> Result<(), StorageError> {
        self.as_storage().deregister_worker(worker, at)
    }
    fn list_workers(&self) -> Result<Vec<WorkerRecord>, StorageError> {
        self.as_storage().list_workers()
    }
    fn insert_running(&self, row: &NewRunningRow) -> Result<(), StorageError> {
        self.as_storage().insert_running(row)
    }
    fn finish_running(&self, row: &FinishRow) -> Result<FinishWrite, StorageError> {
        self.as_storage().finish_running(row)
    }
    fn recover_orphans(
        &self,
        request: &RecoveryRequest,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.as_storage().recover_orphans(request, judge)
    }
    fn claim_unreported_recoveries(
        &self,
        claim: &ReportClaim,
        judge: &dyn LivenessJudge,
    ) -> Result<Vec<RecoveredTask>, StorageError> {
        self.as_storage().claim_unreported_recoveries(claim, judge)
    }
    fn confirm_reports(
        &self,
        reporter: WorkerId,
        tasks: &[TaskId],
        at: Timestamp,
    ) -> Result<u64, StorageError> {
        self.as_storage().confirm_reports(reporter, tasks, at)
    }
    fn record_session(&self, session: &NewSession) -> Result<(), StorageError> {
        self.as_storage().record_session(session)
    }
    fn resumable_session(&self, key: &SessionKey) -> Result<Option<SessionRecord>, StorageError> {
        self.as_storage().resumable_session(key)
    }
    fn list_sessions(&self) -> Result<Vec<SessionRecord>, StorageError> {
        self.as_storage().list_sessions()
    }
    fn list_task_sessions(&self, task: TaskId) -> Result<Vec<SessionRecord>, StorageError> {
        self.as_storage().list_task_sessions(task)
    }
    fn get_task(&self, id: TaskId) -> Result<Option<TaskRecord>, StorageError> {
        self.as_storage().get_task(id)
    }
    fn list_tasks(&self, filter: &TaskFilter) -> Result<Vec<TaskRecord>, StorageError> {
        self.as_storage().list_tasks(filter)
    }
    fn list_task_rows(
        &self,
        filter: &TaskFilter,
    ) -> Result<Vec<Result<TaskRecord, StorageError>>, StorageError> {
        self.as_storage().list_task_rows(filter)
    }
    fn count_tasks_by_status(
        &self,
        repo: Option<&str>,
    ) -> Result<Vec<(tasktrail_core::TaskStatus, u64)>, StorageError> {
        self.as_storage().count_tasks_by_status(repo)
    }
    fn count_outcomes_by_hour(
        &self,
        since: tasktrail_core::Timestamp,
    ) -> Result<Vec<tasktrail_core::OutcomeBucket>, StorageError> {
        self.as_storage().count_outcomes_by_hour(since)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_storage_is_a_storage_a_worker_can_run_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = DatabaseUrl::parse(&dir.path().join("t.db").display().to_string()).expect("url");
        let storage = std::sync::Arc::new(AnyStorage::open(&url).expect("open"));
        let worker = crate::Worker::builder(storage.clone())
            .without_background_thread()
            .boot()
            .expect("boot");
        let spec = tasktrail_core::TaskSpec::validate(tasktrail_core::TaskSpecInput {
            repo: "acme/widgets".into(),
            issue_number: 1,
            user: "alice".into(),
            agent: "fixer".into(),
            agent_type: "claude_sdk".into(),
            model: "claude-opus".into(),
            provider: "anthropic".into(),
        })
        .expect("spec");
        let running = worker
            .start(tasktrail_core::Task::queue(spec))
            .expect("start");
        assert_eq!(
            storage
                .get_task(running.id())
                .expect("read")
                .map(|row| row.status),
            Some(tasktrail_core::TaskStatus::Running)
        );
        drop(running);
        worker.stop().expect("stop");
        assert!(storage
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .iter()
            .all(|row| row.status == tasktrail_core::TaskStatus::Interrupted));
    }

    use super::*;

    #[test]
    fn paths_and_sqlite_urls_name_a_file() {
        assert_eq!(
            DatabaseUrl::parse("tasktrail.db"),
            Ok(DatabaseUrl::Sqlite("tasktrail.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///var/t.db"),
            Ok(DatabaseUrl::Sqlite("/var/t.db".into()))
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite://rel.db"),
            Ok(DatabaseUrl::Sqlite("rel.db".into()))
        );
    }

    #[test]
    fn bad_urls_get_typed_errors() {
        assert_eq!(DatabaseUrl::parse("  "), Err(DatabaseUrlError::Empty));
        assert_eq!(
            DatabaseUrl::parse("sqlite://"),
            Err(DatabaseUrlError::MissingPath)
        );
        assert!(matches!(
            DatabaseUrl::parse("oracle://scott@db/x"),
            Err(DatabaseUrlError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            DatabaseUrl::parse("http://example"),
            Err(DatabaseUrlError::UnsupportedScheme { .. })
        ));
        assert!(matches!(
            DatabaseUrl::parse("postgres:///db"),
            Err(DatabaseUrlError::MalformedPostgres { .. })
        ));
    }

    #[test]
    fn mysql_urls_name_a_host_and_a_database_and_never_show_their_password() {
        assert_eq!(
            DatabaseUrl::parse("mysql://root@127.0.0.1:3306/trail"),
            Ok(DatabaseUrl::Mysql(
                "mysql://root@127.0.0.1:3306/trail".into()
            ))
        );
        // `mariadb://` is read as the same client's `mysql://`.
        assert_eq!(
            DatabaseUrl::parse("mariadb://app@db/trail"),
            Ok(DatabaseUrl::Mysql("mysql://app@db/trail".into()))
        );
        for bad in [
            "mysql:///trail",
            "mysql://app@/trail",
            "mysql://app@db",
            "mysql://app@db/",
            "mysql://app@db/tr ail",
            "mysql://app:pa/ss@db/trail",
        ] {
            assert!(
                matches!(
                    DatabaseUrl::parse(bad),
                    Err(DatabaseUrlError::MalformedMysql { .. })
                ),
                "{bad}"
            );
        }
        let url =
            DatabaseUrl::parse("mysql://app:s3cret-pw@db.internal:3306/trail").expect("valid");
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("s3cret-pw"), "{shown}");
            assert!(shown.contains("db.internal:3306/trail"), "{shown}");
        }
        let refused = DatabaseUrl::parse("mysql://app:pa/ss-secret@db/trail").expect_err("refused");
        assert!(!refused.to_string().contains("ss-secret"), "{refused}");
    }

    #[test]
    fn a_conninfo_string_is_postgres_and_its_password_never_shows() {
        let url = DatabaseUrl::parse("host=db.internal user=app password=s3cret-pw dbname=trail")
            .expect("valid");
        assert!(matches!(url, DatabaseUrl::Postgres(_)));
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("s3cret-pw"), "{shown}");
            assert!(shown.contains("host=db.internal"), "{shown}");
        }
        // A file whose name merely holds '=' stays a file.
        assert!(matches!(
            DatabaseUrl::parse("runs/a=b.db"),
            Ok(DatabaseUrl::Sqlite(_))
        ));
    }

    #[test]
    fn names_that_are_not_one_file_are_refused() {
        for name in [
            ":memory:",
            "sqlite://:memory:",
            "sqlite://file:trail.db?mode=memory",
            "file:real.db",
            "FILE:real.db",
        ] {
            assert!(
                matches!(
                    DatabaseUrl::parse(name),
                    Err(DatabaseUrlError::NotAFile { .. })
                ),
                "{name}"
            );
        }
        assert!(matches!(
            DatabaseUrl::parse("./file:odd.db"),
            Ok(DatabaseUrl::Sqlite(_))
        ));
    }

    #[test]
    fn urls_libpq_would_misread_are_refused_without_echoing_them() {
        for url in [
            "postgres://app:pa/ss@db.internal/trail",
            "postgres://app:pa?ss@db.internal/trail",
            "postgres://app:pa#ss@db.internal/trail",
        ] {
            let error = DatabaseUrl::parse(url).expect_err(url);
            assert!(
                matches!(error, DatabaseUrlError::MalformedPostgres { .. }),
                "{url}"
            );
            let shown = error.to_string();
            assert!(!shown.contains("ss@"), "{shown}");
            assert!(!shown.contains("db.internal"), "{shown}");
        }
        for url in [
            "postgres://db.internal:5432/trail?user=alice@corp",
            "postgres://app:s3cret@db.internal:5432/trail",
            "postgres://app:pa%2Fss@db.internal/trail",
            "postgres:///trail?host=/var/run/postgresql",
        ] {
            assert!(
                matches!(DatabaseUrl::parse(url), Ok(DatabaseUrl::Postgres(_))),
                "{url}"
            );
        }
        assert!(DatabaseUrl::parse("postgres:///trail").is_err());
    }

    #[test]
    fn passwords_never_show() {
        let url =
            DatabaseUrl::parse("postgres://app:s3cret-pw@db.internal:5432/trail").expect("valid");
        for shown in [url.to_string(), format!("{url:?}"), url.redacted()] {
            assert!(!shown.contains("s3cret-pw"), "{shown}");
            assert!(shown.contains("app:***@db.internal:5432/trail"), "{shown}");
        }
    }
}
