//! The SQLite backend: the embedded default.

mod adopt;
mod errors;
mod overview;
mod prune;
mod raw;
mod rows;
mod schema;
mod statements;
mod stats;
mod store;
mod sweep;

use std::collections::HashMap;
use std::fs::{DirBuilder, File, OpenOptions, TryLockError};
use std::io::ErrorKind;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sqlite::{Sqlite, SqliteConnection};
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use tasktrail_core::backend::{LockWatch, OwnerLock};
use tasktrail_core::{StorageError, WorkerId};

use crate::compat::{
    applied_versions, known_versions, pending_versions, read_snapshot, refuse_if_pending,
    TableName, Version,
};
use crate::statement_log::StatementLog;
use crate::tx::TxError;
pub(crate) use errors::map_error;
use errors::{is_busy, map_connection_error};

/// The SQLite migrations, embedded at build time from `migrations/sqlite`.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("../../migrations/sqlite");

/// How hard a commit tries to reach the disk. Both settings use the WAL
/// journal; neither loses a committed row when the *process* is killed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SqliteDurability {
    /// `PRAGMA synchronous = FULL`: every commit is fsynced before it
    /// returns. A committed row survives an OS crash or power loss. The
    /// default: an audit trail is the record of last resort.
    #[default]
    Full,
    /// `PRAGMA synchronous = NORMAL`: commits are fsynced at WAL checkpoints.
    /// Faster; the last commits before an OS crash or power loss may be lost
    /// (never on a process crash, and the file is never corrupted).
    Normal,
}

impl SqliteDurability {
    fn pragma(self) -> &'static str {
        match self {
            SqliteDurability::Full => "FULL",
            SqliteDurability::Normal => "NORMAL",
        }
    }
}

/// How to open a SQLite store.
#[derive(Debug, Clone)]
pub struct SqliteOptions {
    /// See [`SqliteDurability`].
    pub durability: SqliteDurability,
    /// How long a statement waits for another process's write lock before it
    /// fails with [`StorageError::Unavailable`]. Default 30 s.
    pub busy_timeout: Duration,
    /// Record the INSERTs into `task_history` this store issues (tests).
    #[cfg(feature = "testing")]
    pub statement_log: Option<StatementLog>,
}

impl SqliteOptions {
    /// The statement log to attach (none without the `testing` feature).
    fn statement_log(&self) -> Option<StatementLog> {
        #[cfg(feature = "testing")]
        return self.statement_log.clone();
        #[cfg(not(feature = "testing"))]
        return None;
    }
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self {
            durability: SqliteDurability::default(),
            busy_timeout: Duration::from_secs(30),
            #[cfg(feature = "testing")]
            statement_log: None,
        }
    }
}

/// A [`tasktrail_core::Storage`] on one SQLite file.
///
/// One connection per store, behind a mutex: every method is one statement or
/// one `BEGIN IMMEDIATE` transaction, so writers from several processes queue
/// on the file lock (for up to the busy timeout) instead of failing.
///
/// # Liveness locks
///
/// Every worker registered through the store holds, for as long as it is
/// registered here, an exclusive `flock` on its own lock file,
/// `<database file>.workers/<worker id>.lock` ([`SqliteStorage::worker_lock_path`]),
/// taken before its `workers` row is written and released when it
/// deregisters, when the store is dropped, or by the kernel when the process
/// dies, however it dies. An `flock` belongs to the open file in the kernel,
/// so it is seen from every process, PID namespace and container that shares
/// the file (the only setups where SQLite can be shared at all).
///
/// A sweep reports each `alive` owner's lock to the judge
/// ([`tasktrail_core::backend::OwnerLock`]): it opens the lock file read-only, never
/// creating it (missing: `NotCheckable`), tries a shared lock and releases
/// it at once (`Held` if that would block, `Free` otherwise). It never writes
/// into the file. The lock file of an owner a sweep declared dead, with its
/// lock seen free, is removed after the sweep commits.
pub struct SqliteStorage {
    connection: Mutex<SqliteConnection>,
    path: PathBuf,
    #[cfg(feature = "testing")]
    statement_log: Option<StatementLog>,
    /// The lock files of the workers registered through this store, each
    /// holding its exclusive `flock`.
    worker_locks: Mutex<HashMap<WorkerId, File>>,
}

impl std::fmt::Debug for SqliteStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStorage")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SqliteStorage {
    /// Opens (creating it, readable by its owner only) the database at
    /// `path` with default options and applies pending migrations.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, StorageError> {
        Self::open_with(path, SqliteOptions::default())
    }

    /// Opens the database at `path` and applies pending migrations.
    ///
    /// Refuses ([`StorageError::Incompatible`]) a file that is not a SQLite
    /// database, a database that holds tables but is not a tasktrail one,
    /// and a database migrated by a newer tasktrail.
    pub fn open_with(path: impl AsRef<Path>, options: SqliteOptions) -> Result<Self, StorageError> {
        let store = Self::open_unmigrated(path, &options)?;
        store.migrate()?;
        Ok(store)
    }

    /// Opens the database without running migrations (the upgrade tests use
    /// it to start from an old schema).
    pub fn open_unmigrated(
        path: impl AsRef<Path>,
        options: &SqliteOptions,
    ) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        refuse_a_second_name(&path)?;
        create_owner_only(&path)?;
        let url = utf8_path(&path)?.to_owned();
        let mut connection = SqliteConnection::establish(&url).map_err(map_connection_error)?;
        if let Some(log) = &options.statement_log() {
            connection.set_instrumentation(log.instrumentation());
        }
        connection
            .batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA foreign_keys = ON;",
                options.busy_timeout.as_millis().min(i32::MAX as u128)
            ))
            .map_err(map_error)?;
        // The first read tells a file that is not a database apart.
        ensure_ours(&mut connection)?;
        enable_wal(&mut connection, options.busy_timeout)?;
        connection
            .batch_execute(&format!(
                "PRAGMA synchronous = {};",
                options.durability.pragma()
            ))
            .map_err(map_error)?;
        Ok(Self::over(connection, path, options))
    }

    /// The store over an opened connection.
    fn over(connection: SqliteConnection, path: PathBuf, options: &SqliteOptions) -> Self {
        #[cfg(not(feature = "testing"))]
        let _ = options;
        Self {
            connection: Mutex::new(connection),
            path,
            #[cfg(feature = "testing")]
            statement_log: options.statement_log(),
            worker_locks: Mutex::new(HashMap::new()),
        }
    }

    /// Opens an existing database for reading only (the operator's `list`,
    /// `show`, `sessions`, `recover --dry-run`): never creates the file,
    /// never migrates, never writes (SQLite's read-only mode, then its
    /// immutable mode on a read-only mount where the write-ahead log's
    /// shared memory cannot be made). A database that needs a migration is
    /// refused ([`StorageError::Incompatible`], naming the migrations):
    /// `tasktrail migrate` first.
    pub fn open_read_only(
        path: impl AsRef<Path>,
        options: &SqliteOptions,
    ) -> Result<Self, StorageError> {
        let path = path.as_ref().to_path_buf();
        if !path.is_file() {
            return Err(StorageError::Incompatible {
                detail: format!("there is no database file at {}", path.display()),
            });
        }
        refuse_a_second_name(&path)?;
        let text = utf8_path(&path)?;
        let escaped = text
            .replace('%', "%25")
            .replace('?', "%3f")
            .replace('#', "%23");
        let read_only = format!("file:{escaped}?mode=ro");
        let mut connection = match SqliteConnection::establish(&read_only) {
            Ok(connection) => connection,
            Err(_) => SqliteConnection::establish(&format!("{read_only}&immutable=1"))
                .map_err(map_connection_error)?,
        };
        connection
            .batch_execute(&format!(
                "PRAGMA busy_timeout = {}; PRAGMA query_only = ON;",
                options.busy_timeout.as_millis().min(i32::MAX as u128)
            ))
            .map_err(map_error)?;
        // Reads whether it is ours; a read-only mount of a WAL database
        // whose log cannot be read this way gets a second chance as
        // immutable.
        let mut connection = match ensure_ours(&mut connection) {
            Ok(()) => connection,
            Err(StorageError::Unavailable { .. }) => {
                let mut immutable =
                    SqliteConnection::establish(&format!("{read_only}&immutable=1"))
                        .map_err(map_connection_error)?;
                ensure_ours(&mut immutable)?;
                immutable
            }
            Err(error) => return Err(error),
        };
        refuse_pending_migrations(&mut connection)?;
        Ok(Self::over(connection, path, options))
    }

    /// Adopts a database that holds a pre-fix `task_history` written by
    /// another program (the server this was built for, before the fix):
    /// checks in one transaction that the table has the pre-fix columns
    /// (names, types that hold their values, no NULL where one is needed,
    /// known statuses, UUID ids, no extra columns the upgrade would drop,
    /// no `workers` / `claude_sdk_sessions` table in the way), records
    /// migration 1 as the baseline and applies every later migration, every
    /// row kept. Returns the versions recorded (the baseline first). Refused
    /// with [`StorageError::NotAdoptable`] listing every difference, and
    /// nothing changed, when the shape differs. Other tables are never
    /// touched.
    pub fn adopt(
        path: impl AsRef<Path>,
        options: &SqliteOptions,
    ) -> Result<Vec<String>, StorageError> {
        adopt::adopt(path.as_ref(), options)
    }

    /// Applies pending migrations; returns the versions it applied (empty
    /// when the schema was already current). Idempotent.
    ///
    /// Several processes may open a fresh file at once (workers started
    /// together): the migrations run under the write lock (`BEGIN
    /// IMMEDIATE`, waiting up to the busy timeout), and whoever takes it
    /// second finds them applied instead of running them again. When nothing
    /// is pending no lock is taken.
    pub fn migrate(&self) -> Result<Vec<String>, StorageError> {
        let mut connection = self.connection();
        ensure_ours(&mut connection)?;
        let pending = connection
            .has_pending_migration(SQLITE_MIGRATIONS)
            .map_err(|error| StorageError::Other { source: error })?;
        if !pending {
            return Ok(Vec::new());
        }
        connection
            .immediate_transaction(|connection| -> Result<Vec<String>, TxError> {
                ensure_ours(connection)?;
                let applied = connection
                    .run_pending_migrations(SQLITE_MIGRATIONS)
                    .map_err(|error| StorageError::Other { source: error })?;
                Ok(applied.iter().map(ToString::to_string).collect())
            })
            .map_err(TxError::into_storage::<Sqlite>)
    }

    /// The migration versions applied to this database, oldest first.
    pub fn applied_migrations(&self) -> Result<Vec<String>, StorageError> {
        applied_versions(&mut *self.connection())
    }

    /// The statement log this store was opened with, if any.
    #[cfg(feature = "testing")]
    pub fn statement_log(&self) -> Option<&StatementLog> {
        self.statement_log.as_ref()
    }

    /// The file this store uses.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the raw Diesel connection (tests, benchmarks, and
    /// operators' one-off repairs).
    pub fn with_connection<T>(&self, f: impl FnOnce(&mut SqliteConnection) -> T) -> T {
        f(&mut self.connection())
    }

    /// The directory holding the workers' lock files: the database file's
    /// path with `.workers` appended.
    pub fn worker_lock_directory(&self) -> PathBuf {
        let mut directory = self.path.clone().into_os_string();
        directory.push(".workers");
        PathBuf::from(directory)
    }

    /// The lock file `worker` holds an exclusive `flock` on while it lives.
    pub fn worker_lock_path(&self, worker: WorkerId) -> PathBuf {
        self.worker_lock_directory()
            .join(format!("{}.lock", worker.as_uuid().hyphenated()))
    }

    /// Test hook: lets go of `worker`'s lock as the kernel does when its
    /// process dies (the file stays, unlocked). Returns whether this store
    /// held it.
    #[cfg(feature = "testing")]
    pub fn release_worker_lock(&self, worker: WorkerId) -> bool {
        self.let_go_of_worker_lock(worker)
    }

    /// Releases `worker`'s lock, keeping its lock file.
    pub(crate) fn let_go_of_worker_lock(&self, worker: WorkerId) -> bool {
        self.worker_locks().remove(&worker).is_some()
    }

    /// Creates `worker`'s lock file and takes its exclusive `flock` (before
    /// the `workers` row is written).
    pub(crate) fn take_worker_lock(&self, worker: WorkerId) -> Result<(), StorageError> {
        let unavailable = |error: std::io::Error| StorageError::Unavailable {
            source: Box::new(error),
        };
        match DirBuilder::new()
            .mode(0o700)
            .create(self.worker_lock_directory())
        {
            Ok(()) => {}
            Err(error) if error.kind() == ErrorKind::AlreadyExists => {}
            Err(error) => return Err(unavailable(error)),
        }
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(self.worker_lock_path(worker))
            .map_err(unavailable)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(StorageError::DuplicateWorker { id: worker });
            }
            Err(TryLockError::Error(error)) => return Err(unavailable(error)),
        }
        self.worker_locks().insert(worker, file);
        Ok(())
    }

    /// Releases `worker`'s lock (if this store holds it) and removes its
    /// lock file (deregistration, a registration that failed, a worker told
    /// it was declared dead).
    pub(crate) fn drop_worker_lock(&self, worker: WorkerId) {
        self.worker_locks().remove(&worker);
        let _ = std::fs::remove_file(self.worker_lock_path(worker));
    }

    /// What a judge sees of `worker`'s lock: opened read-only and never
    /// created, a shared `flock` tried and released at once.
    pub(crate) fn check_worker_lock(&self, worker: WorkerId) -> OwnerLock {
        let Ok(file) = File::open(self.worker_lock_path(worker)) else {
            // Missing (or unreadable): nothing to check.
            return OwnerLock::NotCheckable;
        };
        match file.try_lock_shared() {
            // Dropping the file releases the shared lock at once.
            Ok(()) => OwnerLock::Free {
                watched_for: LockWatch::Continuous,
            },
            Err(TryLockError::WouldBlock) => OwnerLock::Held,
            Err(TryLockError::Error(_)) => OwnerLock::NotCheckable,
        }
    }

    /// Removes the lock file of a worker a sweep declared dead after seeing
    /// its lock free (nobody can take it again: worker ids are never reused).
    pub(crate) fn remove_dead_workers_lock_file(&self, worker: WorkerId) {
        let _ = std::fs::remove_file(self.worker_lock_path(worker));
    }

    fn worker_locks(&self) -> MutexGuard<'_, HashMap<WorkerId, File>> {
        self.worker_locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn connection(&self) -> MutexGuard<'_, SqliteConnection> {
        self.connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// Switches the file to the WAL journal. Switching needs an exclusive lock
/// that SQLite takes without calling the busy handler, so when several
/// processes open a fresh file at once all but one get "database is locked"
/// at once: retry with backoff for up to the busy timeout instead. (On a
/// file already in WAL mode the pragma takes no lock.)
fn enable_wal(
    connection: &mut SqliteConnection,
    busy_timeout: Duration,
) -> Result<(), StorageError> {
    let deadline = Instant::now() + busy_timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match connection.batch_execute("PRAGMA journal_mode = WAL") {
            Ok(()) => return Ok(()),
            Err(error) if is_busy(&error) && Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            Err(error) => return Err(map_error(error)),
        }
    }
}

/// Refuses a database file that has another name (a hard link) in the same
/// directory: SQLite names its write-ahead log after the path, so two names
/// keep two logs and the writes through one are lost to the other. What
/// cannot be seen from here (a name in another directory, the file alone
/// bind-mounted into two containers) is documented: share the directory,
/// never the file.
fn refuse_a_second_name(path: &Path) -> Result<(), StorageError> {
    use std::os::unix::fs::MetadataExt;
    let Ok(file) = std::fs::metadata(path) else {
        return Ok(()); // a new file has one name
    };
    if file.nlink() < 2 {
        return Ok(());
    }
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let Ok(entries) = std::fs::read_dir(directory) else {
        return Ok(());
    };
    for entry in entries.flatten() {
        if Some(entry.file_name().as_os_str()) == path.file_name() {
            continue;
        }
        let Ok(other) = entry.metadata() else {
            continue;
        };
        if other.ino() == file.ino() && other.dev() == file.dev() {
            return Err(StorageError::Incompatible {
                detail: format!(
                    "{} and {} are two names of one database file (a hard link): SQLite keeps a write-ahead log per name, so writes through one name are lost to the other; remove one name and use the other everywhere",
                    path.display(),
                    entry.path().display()
                ),
            });
        }
    }
    Ok(())
}

/// Creates the file with mode 0600 if it does not exist yet, so the database
/// and (by SQLite's rule of copying the main file's mode) its WAL are readable
/// by their owner only.
fn create_owner_only(path: &Path) -> Result<(), StorageError> {
    if path.exists() {
        return Ok(());
    }
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map(drop)
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem => {
                StorageError::AccessDenied {
                    source: Box::new(error),
                }
            }
            _ => StorageError::Unavailable {
                source: Box::new(error),
            },
        })
}

/// The path as the UTF-8 text SQLite opens.
pub(crate) fn utf8_path(path: &Path) -> Result<&str, StorageError> {
    path.to_str().ok_or_else(|| StorageError::Incompatible {
        detail: format!("database path {} is not valid UTF-8", path.display()),
    })
}

/// Refuses a database that still needs a migration, reading only (no
/// DDL: diesel's own check would create its migration table).
fn refuse_pending_migrations(connection: &mut SqliteConnection) -> Result<(), StorageError> {
    let has_record: Vec<TableName> = diesel::sql_query(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = '__diesel_schema_migrations'",
    )
    .load(connection)
    .map_err(map_error)?;
    let applied: Vec<String> = if has_record.is_empty() {
        Vec::new()
    } else {
        diesel::sql_query("SELECT version FROM __diesel_schema_migrations")
            .load::<Version>(connection)
            .map_err(map_error)?
            .into_iter()
            .map(|v| v.version)
            .collect()
    };
    refuse_if_pending(&pending_versions(
        known_versions::<Sqlite>(&SQLITE_MIGRATIONS)?,
        &applied,
    ))
}

/// Refuses a database that is not ours or is newer than this binary
/// ([`crate::compat::ensure_ours`], on what one read transaction showed).
fn ensure_ours(connection: &mut SqliteConnection) -> Result<(), StorageError> {
    // Both reads in one transaction: another process may be migrating the
    // file, and tables read before its commit with versions read after it
    // would look like a broken database.
    let snapshot = connection
        .transaction(|connection| {
            read_snapshot(
                connection,
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'",
                "SELECT version FROM __diesel_schema_migrations",
            )
        })
        .map_err(map_error)?;
    crate::compat::ensure_ours(&snapshot, &known_versions::<Sqlite>(&SQLITE_MIGRATIONS)?)
}
