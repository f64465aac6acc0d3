//! How a SQLite store is opened: the settings each connection gets from
//! [`SqliteOptions`], what it shows of itself, and the operator's
//! read-only opening (no file made, nothing migrated, nothing written).
#![cfg(feature = "sqlite")]

use std::time::Duration;

use diesel::prelude::*;
use diesel::sql_types::BigInt;
use tasktrail_core::{Clock, Storage, StorageError, SystemClock, TaskFilter, WorkerId};
use tasktrail_diesel::{SqliteDurability, SqliteOptions, SqliteStorage};

#[derive(QueryableByName)]
struct Synchronous {
    #[diesel(sql_type = BigInt)]
    synchronous: i64,
}

#[derive(QueryableByName)]
struct BusyTimeout {
    #[diesel(sql_type = BigInt)]
    timeout: i64,
}

/// `PRAGMA synchronous` of the store's connection: 2 is FULL, 1 NORMAL.
fn synchronous(store: &SqliteStorage) -> i64 {
    store.with_connection(|connection| {
        diesel::sql_query("PRAGMA synchronous")
            .get_result::<Synchronous>(connection)
            .expect("read synchronous")
            .synchronous
    })
}

/// `PRAGMA busy_timeout` of the store's connection, in milliseconds.
fn busy_timeout(store: &SqliteStorage) -> i64 {
    store.with_connection(|connection| {
        diesel::sql_query("PRAGMA busy_timeout")
            .get_result::<BusyTimeout>(connection)
            .expect("read busy_timeout")
            .timeout
    })
}

fn options(durability: SqliteDurability, busy_timeout: Duration) -> SqliteOptions {
    SqliteOptions {
        durability,
        busy_timeout,
        ..SqliteOptions::default()
    }
}

#[test]
fn each_durability_sets_its_synchronous_mode_and_full_is_the_default() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let default = SqliteStorage::open(&path).expect("open");
    assert_eq!(synchronous(&default), 2, "FULL by default");
    drop(default);
    let normal = SqliteStorage::open_with(
        &path,
        options(SqliteDurability::Normal, Duration::from_secs(30)),
    )
    .expect("open");
    assert_eq!(synchronous(&normal), 1, "NORMAL");
    let full = SqliteStorage::open_with(
        &path,
        options(SqliteDurability::Full, Duration::from_secs(30)),
    )
    .expect("open");
    assert_eq!(synchronous(&full), 2, "FULL");
}

#[test]
fn the_busy_timeout_is_the_options_and_a_huge_one_is_capped_not_wrapped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let store = SqliteStorage::open_with(
        &path,
        options(SqliteDurability::Full, Duration::from_millis(1234)),
    )
    .expect("open");
    assert_eq!(busy_timeout(&store), 1234);
    let reader = SqliteStorage::open_read_only(
        &path,
        &options(SqliteDurability::Full, Duration::from_millis(4321)),
    )
    .expect("open read-only");
    assert_eq!(busy_timeout(&reader), 4321);
    let huge = SqliteStorage::open_with(
        &path,
        options(SqliteDurability::Full, Duration::from_secs(u64::MAX / 4)),
    )
    .expect("open");
    assert_eq!(busy_timeout(&huge), i64::from(i32::MAX));
}

#[test]
fn the_debug_output_names_the_backend_and_its_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("shown.db");
    let store = SqliteStorage::open(&path).expect("open");
    let shown = format!("{store:?}");
    assert!(shown.starts_with("SqliteStorage"), "{shown}");
    assert!(shown.contains(&format!("{:?}", path)), "{shown}");
    assert_eq!(store.path(), path);
}

#[test]
fn a_read_only_open_of_a_missing_file_is_refused_and_makes_no_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing.db");
    let error = SqliteStorage::open_read_only(&path, &SqliteOptions::default())
        .expect_err("there is no database");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
    assert!(!path.exists(), "a reader made the file");
    // A directory is not a database file either.
    let error = SqliteStorage::open_read_only(dir.path(), &SqliteOptions::default())
        .expect_err("a directory");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
}

#[test]
fn a_read_only_open_reads_a_current_database_and_refuses_writes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    drop(SqliteStorage::open(&path).expect("create"));
    let reader =
        SqliteStorage::open_read_only(&path, &SqliteOptions::default()).expect("open read-only");
    assert!(reader
        .list_tasks(&TaskFilter::default())
        .expect("list")
        .is_empty());
    let error = reader
        .deregister_worker(WorkerId::new_random(), SystemClock.now())
        .expect_err("the store is read-only");
    assert!(
        matches!(error, StorageError::AccessDenied { .. }),
        "{error:?}"
    );
}

/// Opening a fresh file while another connection holds its write lock
/// waits until that transaction ends, up to the busy timeout, instead of
/// failing at once. The switch to the write-ahead log upgrades a read
/// transaction to a write, and SQLite answers that upgrade "busy" without
/// calling the busy handler: the store retries it until the deadline.
#[test]
fn opening_a_fresh_file_another_connection_is_writing_waits_for_its_transaction_to_end() {
    use diesel::connection::SimpleConnection;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("t.db");
    let mut writer = SqliteConnection::establish(path.to_str().expect("utf-8")).expect("connect");
    writer
        .batch_execute("BEGIN IMMEDIATE;")
        .expect("hold the write lock");
    let opener = {
        let path = path.clone();
        std::thread::spawn(move || {
            SqliteStorage::open_with(
                &path,
                options(SqliteDurability::Full, Duration::from_secs(20)),
            )
            .map(drop)
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    assert!(!opener.is_finished(), "the open waited for the writer");
    writer.batch_execute("COMMIT").expect("end the transaction");
    opener
        .join()
        .expect("the opener did not panic")
        .expect("the open succeeded once the transaction ended");
}

/// A database file that cannot be created (a directory the user may not
/// write, a read-only file system) is `AccessDenied`: permanent, not
/// retried, and nothing is made. The tests run as root, which may create
/// files almost anywhere, but not at the root of sysfs.
#[test]
fn a_database_file_that_cannot_be_created_is_access_denied() {
    let path = std::path::Path::new("/sys/tasktrail-test.db");
    let error = SqliteStorage::open(path).expect_err("sysfs makes no files");
    assert!(
        matches!(error, StorageError::AccessDenied { .. }) && !error.is_transient(),
        "{error:?}"
    );
    assert!(!path.exists());
}

/// A second name in another directory cannot be seen from the database's
/// own directory (docs: share the directory, never the file): the store
/// opens, however many other files share the database's directory and
/// file system.
#[test]
fn a_hard_link_in_another_directory_is_not_mistaken_for_a_file_beside_the_database() {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&home).expect("mkdir");
    std::fs::create_dir(&elsewhere).expect("mkdir");
    let path = home.join("t.db");
    drop(SqliteStorage::open(&path).expect("create"));
    std::fs::write(home.join("notes.txt"), "another file beside it").expect("write");
    std::fs::hard_link(&path, elsewhere.join("t.db")).expect("hard link");
    SqliteStorage::open(&path).expect("the other name cannot be seen from here");
}
