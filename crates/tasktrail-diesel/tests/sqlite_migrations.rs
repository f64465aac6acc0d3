//! The real upgrade path: a database written by the pre-fix schema upgrades
//! with every row intact, and the fix migration round-trips down and up.
#![cfg(feature = "sqlite")]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How many migrations a current schema has.
const MIGRATIONS: usize = 5;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text};
use diesel_migrations::MigrationHarness;
use tasktrail_core::{Storage, StorageError, TaskId, TaskStatus};
use tasktrail_diesel::{SqliteOptions, SqliteStorage, SQLITE_MIGRATIONS};

const PRE_FIX_ROWS: &str = "
INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts) VALUES
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01', 'acme/widgets', 994, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success', '2026-05-10T10:00:00.000000Z', '2026-05-10T10:05:00.000000Z', 1200, 300, 0.42, 7, '[\"pr/17\"]'),
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02', 'acme/widgets', 957, 'bob', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted', '2026-05-10T11:00:00.000000Z', '2026-05-10T11:30:00.000000Z', NULL, NULL, NULL, NULL, NULL),
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e03', 'acme/gears', 1018, 'carol', 'triager', 'claude_sdk', 'claude-haiku', 'anthropic', 'failure', '2026-05-10T12:00:00.000000Z', '2026-05-10T12:01:00.000000Z', 10, 20, 0.01, 1, '[]'),
 ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e04', 'acme/gears', 1033, 'dave', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'aborted_no_skill', '2026-05-10T13:00:00.000000Z', '2026-05-10T13:00:01.000000Z', 0, 0, 0.0, 0, NULL);
";

#[derive(Debug, PartialEq, QueryableByName)]
struct PreFixRow {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    status: String,
    #[diesel(sql_type = Nullable<Text>)]
    finished_at: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    artifacts: Option<String>,
    #[diesel(sql_type = Text)]
    everything_else: String,
}

const SELECT_PRE_FIX_COLUMNS: &str = "SELECT id, status, finished_at, artifacts, \
    repo || '|' || issue_number || '|' || user || '|' || agent || '|' || agent_type || '|' || model || '|' || provider || '|' || started_at || '|' || \
    COALESCE(input_tokens, 'NULL') || '|' || COALESCE(output_tokens, 'NULL') || '|' || COALESCE(cost_usd, 'NULL') || '|' || COALESCE(turns, 'NULL') AS everything_else \
    FROM task_history ORDER BY id";

fn rows(store: &SqliteStorage) -> Vec<PreFixRow> {
    store
        .with_connection(|c| diesel::sql_query(SELECT_PRE_FIX_COLUMNS).load::<PreFixRow>(c))
        .expect("rows load")
}

fn store_at_pre_fix_schema(path: &Path) -> SqliteStorage {
    let store = SqliteStorage::open_unmigrated(path, &SqliteOptions::default()).expect("open");
    store
        .with_connection(|c| c.run_next_migration(SQLITE_MIGRATIONS).map(drop))
        .expect("first migration");
    store
        .with_connection(|c| c.batch_execute(PRE_FIX_ROWS))
        .expect("pre-fix rows");
    store
}

#[test]
fn pre_fix_schema_does_not_permit_running_rows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = store_at_pre_fix_schema(&dir.path().join("old.db"));
    let inserted = store.with_connection(|c| {
        c.batch_execute(
            "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at) \
             VALUES ('0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e09', 'a/b', 1, 'u', 'a', 't', 'm', 'p', 'running', '2026-05-11T00:00:00.000000Z')",
        )
    });
    assert!(
        inserted.is_err(),
        "the pre-fix CHECK must reject status='running'"
    );
}

#[test]
fn a_database_filled_at_the_pre_fix_schema_upgrades_with_every_row_intact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let before = rows(&store_at_pre_fix_schema(&path));
    assert_eq!(before.len(), 4);

    let store = SqliteStorage::open(&path).expect("open upgrades");
    let after = rows(&store);
    assert_eq!(after.len(), before.len(), "every row is kept");
    for (old, new) in before.iter().zip(&after) {
        assert_eq!(old.id, new.id);
        assert_eq!(old.status, new.status);
        assert_eq!(old.artifacts, new.artifacts);
        assert_eq!(old.everything_else, new.everything_else);
        if old.status == "interrupted" {
            assert_eq!(
                new.finished_at, None,
                "interrupted rows get finished_at = NULL"
            );
        } else {
            assert_eq!(old.finished_at, new.finished_at);
        }
    }
    // The interrupted row's old time moved to interrupted_at, and every
    // upgraded row reads back as a record.
    let interrupted: TaskId = "0b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02".parse().expect("id");
    let record = store.get_task(interrupted).expect("read").expect("row");
    assert_eq!(record.status, TaskStatus::Interrupted);
    assert_eq!(record.finished_at, None);
    assert_eq!(
        record.interrupted_at.map(|at| at.to_rfc3339()),
        Some("2026-05-10T11:30:00+00:00".to_owned())
    );
    assert_eq!(record.worker_id, None);
    assert_eq!(
        store.list_tasks(&Default::default()).expect("list").len(),
        4
    );
}

#[test]
fn the_fix_migration_round_trips_down_and_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let original = rows(&store_at_pre_fix_schema(&path));
    let store = SqliteStorage::open(&path).expect("upgrade");
    let upgraded = rows(&store);

    // Down through the dashboard indexes, recovery reports and host identity migrations,
    // then the fix.
    for _ in 0..MIGRATIONS - 1 {
        store
            .with_connection(|c| c.revert_last_migration(SQLITE_MIGRATIONS).map(drop))
            .expect("down");
    }
    assert_eq!(
        rows(&store),
        original,
        "down restores the pre-fix rows exactly"
    );
    assert_eq!(store.applied_migrations().expect("versions").len(), 1);

    assert_eq!(store.migrate().expect("up again").len(), MIGRATIONS - 1);
    assert_eq!(
        rows(&store),
        upgraded,
        "up again gives the same upgraded rows"
    );
}

#[test]
fn migrate_is_idempotent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    assert_eq!(
        store.applied_migrations().expect("versions").len(),
        MIGRATIONS
    );
    assert!(store.migrate().expect("again").is_empty());
    drop(store);
    let reopened = SqliteStorage::open(dir.path().join("t.db")).expect("reopen");
    assert!(reopened.migrate().expect("again").is_empty());
}

#[test]
fn a_file_that_is_not_a_sqlite_database_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("notes.txt");
    let content = "these are my notes, not a database\n".repeat(200);
    std::fs::write(&path, &content).expect("write");
    let error = SqliteStorage::open(&path).expect_err("must refuse");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
    assert_eq!(std::fs::read_to_string(&path).expect("read"), content);
}

#[test]
fn a_sqlite_database_that_is_not_ours_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.db");
    let mut other = SqliteConnection::establish(path.to_str().expect("utf-8")).expect("open");
    other
        .batch_execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL);")
        .expect("create");
    drop(other);
    let error = SqliteStorage::open(&path).expect_err("must refuse");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
    let mut other = SqliteConnection::establish(path.to_str().expect("utf-8")).expect("open");
    #[derive(QueryableByName)]
    struct Name {
        #[diesel(sql_type = Text)]
        name: String,
    }
    let tables: Vec<String> =
        diesel::sql_query("SELECT name FROM sqlite_master WHERE type = 'table'")
            .load::<Name>(&mut other)
            .expect("tables")
            .into_iter()
            .map(|n| n.name)
            .collect();
    assert_eq!(tables, vec!["invoices".to_owned()], "nothing was created");
}

#[test]
fn a_database_migrated_by_a_newer_tasktrail_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("new.db");
    let store = SqliteStorage::open(&path).expect("open");
    store
        .with_connection(|c| {
            c.batch_execute(
                "INSERT INTO __diesel_schema_migrations (version) VALUES ('20990101000000')",
            )
        })
        .expect("pretend newer");
    drop(store);
    let error = SqliteStorage::open(&path).expect_err("must refuse");
    assert!(
        matches!(error, StorageError::Incompatible { .. }),
        "{error:?}"
    );
}

#[test]
fn the_database_and_its_wal_are_readable_by_their_owner_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("private.db");
    let store = SqliteStorage::open(&path).expect("open");
    // A write makes sure the WAL exists.
    store
        .with_connection(|c| c.batch_execute("CREATE TEMP TABLE t (x); INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at) VALUES ('w', 'h', 1, 'm', 'a', 'b');"))
        .expect("write");
    for file in [path.clone(), dir.path().join("private.db-wal")] {
        let mode = std::fs::metadata(&file)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{} has mode {mode:o}", file.display());
    }
}

#[test]
fn several_stores_opening_a_fresh_file_at_once_all_migrate_it_once() {
    // Worker processes started together all open (and migrate) a file that
    // does not exist yet: none may fail ("database is locked" from the switch
    // to WAL, "table already exists" from a second run of a migration).
    for round in 0..20 {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fresh.db");
        let barrier = std::sync::Barrier::new(6);
        let results: Vec<Result<SqliteStorage, StorageError>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..6)
                .map(|_| {
                    scope.spawn(|| {
                        barrier.wait();
                        SqliteStorage::open(&path)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|handle| handle.join().expect("thread"))
                .collect()
        });
        for result in results {
            let store = result.unwrap_or_else(|error| panic!("round {round}: {error}"));
            assert_eq!(
                store.applied_migrations().expect("versions").len(),
                MIGRATIONS
            );
            assert!(store
                .list_tasks(&Default::default())
                .expect("list")
                .is_empty());
        }
    }
}

/// A worker registered before migration 3 (no boot id, PID namespace or
/// liveness lock) reads back without a host identity after the upgrade: no
/// lock can be checked for it and no pid probe applies, so the lease decides
/// (a fresh heartbeat keeps its row, a stale one does not).
#[test]
fn workers_registered_before_the_host_identity_migration_are_judged_by_the_lease() {
    use tasktrail_core::backend::{PolicyJudge, RecoveryRequest, SweepMode};
    use tasktrail_core::{HostIdentity, LivenessPolicy, ProcessProbe, WorkerId};

    struct EveryPidIsGone;
    impl ProcessProbe for EveryPidIsGone {
        fn process_start_marker(&self, _pid: u32) -> Option<String> {
            None
        }
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStorage::open(dir.path().join("t.db")).expect("open");
    for _ in 0..2 {
        store
            .with_connection(|c| c.revert_last_migration(SQLITE_MIGRATIONS).map(drop))
            .expect("down to migration 2");
    }
    let now = chrono::Utc::now();
    let fresh = WorkerId::new_random();
    let stale = WorkerId::new_random();
    let at = |seconds_ago: i64| {
        (now - chrono::Duration::seconds(seconds_ago))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
    };
    for (worker, heartbeat) in [(fresh, at(1)), (stale, at(3600))] {
        let task = TaskId::new_random();
        store
            .with_connection(|c| {
                c.batch_execute(&format!(
                    "INSERT INTO workers (id, host, pid, process_start_marker, started_at, heartbeat_at, state) \
                     VALUES ('{worker}', 'dev', 10, 'boot:10', '{heartbeat}', '{heartbeat}', 'alive');
                     INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, worker_id) \
                     VALUES ('{task}', 'acme/widgets', 1, 'u', 'a', 't', 'm', 'p', 'running', '{heartbeat}', '{worker}');"
                ))
            })
            .expect("a pre-3 worker and its running row");
    }
    assert_eq!(store.migrate().expect("up").len(), 2);
    let workers = store.list_workers().expect("workers");
    assert!(workers.iter().all(|w| w.host_identity.is_none()));

    // The judge shares the (absent) identity of nobody: no probe, whatever
    // its process table says.
    let policy = LivenessPolicy::new(Some(HostIdentity {
        boot_id: "dev-boot".into(),
        pid_namespace: 4_026_531_836,
    }));
    let recovered = store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: WorkerId::new_random(),
                now,
                mode: SweepMode::Apply,
            },
            &PolicyJudge {
                policy: &policy,
                probe: &EveryPidIsGone,
            },
        )
        .expect("sweep");
    assert_eq!(
        recovered.iter().map(|r| r.dead_worker).collect::<Vec<_>>(),
        vec![Some(stale)],
        "only the worker silent past the lease"
    );
    assert!(
        recovered[0].hint().contains("lease"),
        "{}",
        recovered[0].hint()
    );
}

/// A pre-fix `task_history` as a server wrote it before tasktrail, by plain
/// SQL (not migration 1): other declared types, no CHECK, and an unrelated
/// table beside it.
const FOREIGN_PRE_FIX_SCHEMA: &str = "
    CREATE TABLE task_history (
        id VARCHAR(36) PRIMARY KEY,
        repo VARCHAR(200) NOT NULL,
        issue_number INT NOT NULL,
        user TEXT NOT NULL,
        agent TEXT NOT NULL,
        agent_type TEXT NOT NULL,
        model TEXT NOT NULL,
        provider TEXT NOT NULL,
        status TEXT NOT NULL,
        started_at DATETIME NOT NULL DEFAULT CURRENT_TIMESTAMP,
        finished_at DATETIME,
        input_tokens INTEGER,
        output_tokens INTEGER,
        cost_usd NUMERIC,
        turns INTEGER,
        artifacts TEXT
    );
    CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
    INSERT INTO notes (body) VALUES ('kept as it is');
";

fn foreign_row(n: u32, status: &str, started_at: &str, finished_at: Option<&str>) -> String {
    format!(
        "INSERT INTO task_history VALUES ('01890a5d-ac96-774b-bcce-{n:012}', 'acme/widgets', {n}, \
         'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', '{status}', '{started_at}', {}, \
         {}, 20, 0.5, 3, '[\"pr/{n}\"]');",
        finished_at.map_or("NULL".to_owned(), |at| format!("'{at}'")),
        100 + n,
    )
}

#[derive(QueryableByName, Debug, PartialEq)]
struct NoteRow {
    #[diesel(sql_type = Text)]
    body: String,
}

#[test]
fn a_pre_fix_database_written_by_plain_sql_is_adopted_with_every_row_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("theirs.db");
    let mut sql = FOREIGN_PRE_FIX_SCHEMA.to_owned();
    // Each status, each time form a server writes.
    let rows = [
        (
            "success",
            "2026-05-11 15:13:00",
            Some("2026-05-11 15:49:00"),
        ),
        (
            "failure",
            "2026-05-11T15:13:00Z",
            Some("2026-05-11T15:20:00.5Z"),
        ),
        (
            "cancelled",
            "2026-05-11 15:13:00.250",
            Some("2026-05-11 15:14:00"),
        ),
        (
            "interrupted",
            "2026-05-11T17:13:00+02:00",
            Some("2026-05-11 15:30:00"),
        ),
        ("aborted_no_skill", "2026-05-11T15:13:00", None),
    ];
    for (n, (status, started, finished)) in rows.iter().enumerate() {
        sql.push_str(&foreign_row(n as u32 + 1, status, started, *finished));
    }
    SqliteConnection::establish(path.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute(&sql)
        .expect("their schema");

    // Not adopted yet: refused, and the refusal names the way out.
    match SqliteStorage::open(&path) {
        Err(StorageError::Incompatible { detail }) => {
            assert!(detail.contains("--adopt"), "{detail}")
        }
        other => panic!("expected Incompatible, got {other:?}"),
    }
    let recorded = SqliteStorage::adopt(&path, &SqliteOptions::default()).expect("adopt");
    // Recorded as migration 1, then every later migration applied (the fix,
    // the host identity columns).
    assert_eq!(recorded.len(), MIGRATIONS, "{recorded:?}");
    assert!(recorded.windows(2).all(|pair| pair[0] < pair[1]));

    let store = SqliteStorage::open(&path).expect("open after adoption");
    let time = |text: &str| {
        chrono::DateTime::parse_from_rfc3339(text)
            .expect("time")
            .with_timezone(&chrono::Utc)
    };
    for (n, (status, _, _)) in rows.iter().enumerate() {
        let n = n as u32 + 1;
        let id: TaskId = format!("01890a5d-ac96-774b-bcce-{n:012}")
            .parse()
            .expect("id");
        let row = store.get_task(id).expect("read").expect("kept");
        assert_eq!(row.status.as_str(), *status);
        assert_eq!(
            (
                row.repo.as_str(),
                row.issue_number,
                row.user.as_str(),
                row.agent.as_str(),
                row.agent_type.as_str(),
                row.model.as_str(),
                row.provider.as_str(),
                row.worker_id,
                row.interrupt_reason.as_deref(),
            ),
            (
                "acme/widgets",
                n,
                "alice",
                "fixer",
                "claude_sdk",
                "claude-opus",
                "anthropic",
                None,
                None
            )
        );
        // Every time, each form read as the instant it names.
        let (_, started, finished) = rows[n as usize - 1];
        let instant = |text: &str| {
            chrono::DateTime::parse_from_rfc3339(text)
                .map(|at| at.with_timezone(&chrono::Utc))
                .unwrap_or_else(|_| {
                    let naive = chrono::NaiveDateTime::parse_from_str(
                        &text.replace('T', " "),
                        "%Y-%m-%d %H:%M:%S%.f",
                    )
                    .expect("a zone-less form");
                    naive.and_utc()
                })
        };
        assert_eq!(row.started_at, instant(started), "row {n} started_at");
        let (finished_at, interrupted_at) = if row.status.as_str() == "interrupted" {
            (None, finished.map(instant))
        } else {
            (finished.map(instant), None)
        };
        assert_eq!(row.finished_at, finished_at, "row {n} finished_at");
        assert_eq!(row.interrupted_at, interrupted_at, "row {n} interrupted_at");
        assert_eq!(
            (row.input_tokens, row.output_tokens, row.turns),
            (Some(100 + n), Some(20), Some(3))
        );
        assert_eq!(row.cost_usd, Some(0.5));
        assert_eq!(row.artifacts, Some(vec![format!("pr/{n}")]));
    }
    let by_issue = |n: u32| {
        store
            .list_tasks(&tasktrail_core::TaskFilter::default())
            .expect("list")
            .into_iter()
            .find(|row| row.issue_number == n)
            .expect("row")
    };
    assert_eq!(by_issue(1).started_at, time("2026-05-11T15:13:00Z"));
    assert_eq!(by_issue(1).finished_at, Some(time("2026-05-11T15:49:00Z")));
    assert_eq!(by_issue(3).started_at, time("2026-05-11T15:13:00.25Z"));
    assert_eq!(by_issue(4).started_at, time("2026-05-11T15:13:00Z"));
    // An interrupted row never finished: its time moves to interrupted_at.
    assert_eq!(by_issue(4).finished_at, None);
    assert_eq!(
        by_issue(4).interrupted_at,
        Some(time("2026-05-11T15:30:00Z"))
    );
    assert_eq!(by_issue(5).finished_at, None);
    // Every time is stored in the canonical form now (text order is time
    // order, which listings rely on).
    #[derive(QueryableByName)]
    struct Started {
        #[diesel(sql_type = Text)]
        started_at: String,
    }
    let stored: Vec<Started> = store.with_connection(|connection| {
        diesel::sql_query("SELECT started_at FROM task_history ORDER BY issue_number")
            .load(connection)
            .expect("times")
    });
    let stored: Vec<&str> = stored.iter().map(|row| row.started_at.as_str()).collect();
    assert_eq!(
        stored,
        vec![
            "2026-05-11T15:13:00.000000Z",
            "2026-05-11T15:13:00.000000Z",
            "2026-05-11T15:13:00.250000Z",
            "2026-05-11T15:13:00.000000Z",
            "2026-05-11T15:13:00.000000Z",
        ]
    );
    // Their other table is untouched.
    let notes: Vec<NoteRow> = store.with_connection(|connection| {
        diesel::sql_query("SELECT body FROM notes")
            .load(connection)
            .expect("notes")
    });
    assert_eq!(
        notes,
        vec![NoteRow {
            body: "kept as it is".into()
        }]
    );
    // Adopting again is refused: it is a tasktrail database now.
    assert!(matches!(
        SqliteStorage::adopt(&path, &SqliteOptions::default()),
        Err(StorageError::NotAdoptable { .. })
    ));
}

#[test]
fn a_table_of_another_shape_is_refused_with_every_difference_and_nothing_changes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("other.db");
    SqliteConnection::establish(path.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute(
            "CREATE TABLE task_history (
                id TEXT PRIMARY KEY, repo TEXT, issue_number TEXT, user TEXT, agent TEXT,
                agent_type TEXT, model TEXT, status TEXT, started_at TEXT, finished_at TEXT,
                input_tokens INTEGER, output_tokens INTEGER, cost_usd REAL, turns INTEGER,
                artifacts TEXT, priority INTEGER
             );
             CREATE TABLE workers (name TEXT);
             INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model,
                status, started_at) VALUES ('x', 'a/b', '1', 'u', 'a', 't', 'm', 'queued', 'now');",
        )
        .expect("their schema");
    let before = std::fs::read(&path).expect("read");
    let Err(StorageError::NotAdoptable { differences }) =
        SqliteStorage::adopt(&path, &SqliteOptions::default())
    else {
        panic!("expected NotAdoptable");
    };
    let all = differences.join("\n");
    for expected in ["workers", "provider is missing", "issue_number", "priority"] {
        assert!(all.contains(expected), "{expected}: {all}");
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing changed"
    );
    // Values are checked once the shape is right: a bad status, a NULL,
    // an id that is not a UUID, each named.
    let path = dir.path().join("values.db");
    let mut sql = FOREIGN_PRE_FIX_SCHEMA.replace("repo VARCHAR(200) NOT NULL", "repo VARCHAR(200)");
    sql.push_str(&foreign_row(1, "queued", "2026-05-11 15:13:00", None));
    sql.push_str(
        "INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, \
         status, started_at) VALUES ('not-a-uuid', NULL, 2, 'u', 'a', 't', 'm', 'p', 'success', 'x');",
    );
    SqliteConnection::establish(path.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute(&sql)
        .expect("their rows");
    let before = std::fs::read(&path).expect("read");
    let Err(StorageError::NotAdoptable { differences }) =
        SqliteStorage::adopt(&path, &SqliteOptions::default())
    else {
        panic!("expected NotAdoptable");
    };
    let all = differences.join("\n");
    for expected in [
        "\"queued\"",
        "no repo",
        "not a UUID",
        "started_at that is not a time",
    ] {
        assert!(all.contains(expected), "{expected}: {all}");
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        before,
        "nothing changed"
    );
}

/// Adoption rewrites every time into the canonical form, a row's
/// `finished_at` and an interrupted row's `interrupted_at` (its old
/// `finished_at`) even when its `started_at` was canonical already.
#[test]
fn adoption_makes_each_time_of_a_row_canonical_not_only_its_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("times.db");
    let mut sql = FOREIGN_PRE_FIX_SCHEMA.to_owned();
    for (n, status) in [(1, "success"), (2, "interrupted")] {
        sql.push_str(&foreign_row(
            n,
            status,
            "2026-05-11T15:13:00.000000Z",
            Some("2026-05-11 15:49:00"),
        ));
    }
    SqliteConnection::establish(path.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute(&sql)
        .expect("their rows");
    SqliteStorage::adopt(&path, &SqliteOptions::default()).expect("adopted");
    #[derive(QueryableByName, Debug, PartialEq)]
    struct Times {
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        finished_at: Option<String>,
        #[diesel(sql_type = diesel::sql_types::Nullable<Text>)]
        interrupted_at: Option<String>,
    }
    let mut connection =
        SqliteConnection::establish(path.to_str().expect("utf-8")).expect("connect");
    let times: Vec<Times> = diesel::sql_query(
        "SELECT finished_at, interrupted_at FROM task_history ORDER BY issue_number",
    )
    .load(&mut connection)
    .expect("the times");
    let canonical = Some("2026-05-11T15:49:00.000000Z".to_owned());
    assert_eq!(
        times,
        vec![
            Times {
                finished_at: canonical.clone(),
                interrupted_at: None
            },
            Times {
                finished_at: None,
                interrupted_at: canonical
            },
        ]
    );
}

/// A database holding the pre-fix table and nothing else is adopted; one
/// with no table at all is refused, for that one reason.
#[test]
fn a_database_of_the_pre_fix_table_alone_is_adopted_and_an_empty_one_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("alone.db");
    let schema = FOREIGN_PRE_FIX_SCHEMA
        .replace(
            "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);",
            "",
        )
        .replace("INSERT INTO notes (body) VALUES ('kept as it is');", "");
    let mut sql = schema.clone();
    sql.push_str(&foreign_row(
        1,
        "success",
        "2026-05-11 15:13:00",
        Some("2026-05-11 15:49:00"),
    ));
    SqliteConnection::establish(path.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute(&sql)
        .expect("their rows");
    let recorded = SqliteStorage::adopt(&path, &SqliteOptions::default()).expect("adopted");
    assert_eq!(recorded.len(), MIGRATIONS, "{recorded:?}");
    let empty = dir.path().join("empty.db");
    SqliteConnection::establish(empty.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute("VACUUM;")
        .expect("an empty database");
    assert_refused_for_one_reason(&empty);
}

/// Adoption refuses `path` with exactly one difference, leaving the file
/// as it was.
fn assert_refused_for_one_reason(path: &Path) {
    let before = std::fs::read(path).expect("read");
    let Err(StorageError::NotAdoptable { differences }) =
        SqliteStorage::adopt(path, &SqliteOptions::default())
    else {
        panic!("expected NotAdoptable");
    };
    assert_eq!(differences.len(), 1, "{differences:?}");
    assert_eq!(
        std::fs::read(path).expect("read"),
        before,
        "nothing changed"
    );
}

/// A pre-fix table without a primary key holding two rows of one id: the
/// upgrade's primary key could not hold them, so adoption lists them
/// instead of failing halfway.
#[test]
fn a_table_with_two_rows_of_one_id_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("twice.db");
    let mut sql = FOREIGN_PRE_FIX_SCHEMA.replace("id VARCHAR(36) PRIMARY KEY", "id VARCHAR(36)");
    sql.push_str(&foreign_row(
        1,
        "success",
        "2026-05-11 15:13:00",
        Some("2026-05-11 15:49:00"),
    ));
    sql.push_str(&foreign_row(
        1,
        "failure",
        "2026-05-11 16:13:00",
        Some("2026-05-11 16:49:00"),
    ));
    SqliteConnection::establish(path.to_str().expect("utf-8"))
        .expect("create")
        .batch_execute(&sql)
        .expect("their rows");
    assert_refused_for_one_reason(&path);
}

/// A tasktrail database that has not run every migration yet has the
/// pre-fix table and nothing in the way of the upgrade, but it is
/// tasktrail's own: `migrate` upgrades it, adoption refuses it for its
/// migration record.
#[test]
fn a_tasktrail_database_behind_on_migrations_is_refused_for_adoption_and_left_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ours.db");
    make_a_database_at_its_first_migration(&path);
    assert_refused_for_one_reason(&path);
}

/// A tasktrail database at `path` that has run its first migration only.
fn make_a_database_at_its_first_migration(path: &Path) {
    let store = SqliteStorage::open_unmigrated(path, &SqliteOptions::default()).expect("open");
    store.with_connection(|connection| {
        connection
            .run_next_migration(SQLITE_MIGRATIONS)
            .expect("the first migration only");
    });
}

fn applied_versions(path: &Path) -> Vec<String> {
    let mut connection =
        SqliteConnection::establish(path.to_str().expect("utf-8")).expect("connect");
    connection
        .applied_migrations()
        .expect("read the migrations")
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn a_read_only_open_of_a_database_behind_on_migrations_is_refused_and_migrates_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    make_a_database_at_its_first_migration(&path);
    let before = applied_versions(&path);
    assert_eq!(before.len(), 1);
    let error = SqliteStorage::open_read_only(&path, &SqliteOptions::default())
        .expect_err("a migration is pending");
    assert!(
        matches!(&error, StorageError::Incompatible { detail } if detail.contains("migrate")),
        "{error:?}"
    );
    assert_eq!(applied_versions(&path), before);
}

/// One pre-fix row per status, with and without a `finished_at` (the
/// pre-fix schema allowed it NULL), and with every run column NULL.
const EVERY_STATUS_ROWS: &str = "
INSERT INTO task_history (id, repo, issue_number, user, agent, agent_type, model, provider, status, started_at, finished_at, input_tokens, output_tokens, cost_usd, turns, artifacts) VALUES
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e01', 'acme/widgets', 1, 'alice', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'success', '2026-05-10T10:00:00.000000Z', '2026-05-10T10:05:00.000000Z', 1200, 300, 0.42, 7, '[\"pr/17\"]'),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e02', 'acme/widgets', 2, 'bob', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'failure', '2026-05-10T11:00:00.000000Z', '2026-05-10T11:06:00.000000Z', 10, 20, 0.01, 1, '[]'),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e03', 'acme/gears', 3, 'carol', 'triager', 'claude_sdk', 'claude-haiku', 'anthropic', 'cancelled', '2026-05-10T12:00:00.000000Z', '2026-05-10T12:07:00.000000Z', 5, 6, 0.002, 2, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e04', 'acme/gears', 4, 'dave', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted', '2026-05-10T13:00:00.000000Z', '2026-05-10T13:08:00.000000Z', NULL, NULL, NULL, NULL, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e05', 'acme/gears', 5, 'erin', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'aborted_no_skill', '2026-05-10T14:00:00.000000Z', '2026-05-10T14:09:00.000000Z', 0, 0, 0.0, 0, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e06', 'acme/gears', 6, 'frank', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'failure', '2026-05-10T15:00:00.000000Z', NULL, NULL, NULL, NULL, NULL, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e07', 'acme/gears', 7, 'grace', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'interrupted', '2026-05-10T16:00:00.000000Z', NULL, NULL, NULL, NULL, NULL, NULL),
 ('1b4f6a52-32d4-4a0e-9a55-1a2b3c4d5e08', 'acme/gears', 8, 'heidi', 'fixer', 'claude_sdk', 'claude-opus', 'anthropic', 'cancelled', '2026-05-10T17:00:00.000000Z', NULL, NULL, NULL, NULL, NULL, '[]');
";

/// The columns the upgrade adds to `task_history`, NULL on every old row
/// except `interrupted_at` (an interrupted row's old `finished_at`).
const NEW_TASK_COLUMNS: [&str; 4] = [
    "worker_id",
    "interrupted_at",
    "interrupt_reason",
    "interrupted_by",
];

#[derive(QueryableByName)]
struct ColumnName {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct Cell {
    #[diesel(sql_type = Text)]
    id: String,
    #[diesel(sql_type = Text)]
    value: String,
}

/// Every column of every `task_history` row, whatever the schema: id ->
/// column -> the value as SQLite's `quote()` spells it (type included:
/// `NULL`, `'text'`, `42`, `0.42`).
fn every_cell(
    store: &SqliteStorage,
) -> std::collections::BTreeMap<String, std::collections::BTreeMap<String, String>> {
    store.with_connection(|c| {
        let columns: Vec<ColumnName> =
            diesel::sql_query("SELECT name FROM pragma_table_info('task_history') ORDER BY cid")
                .load(c)
                .expect("columns");
        let mut rows: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<String, String>,
        > = Default::default();
        for column in columns {
            // A column name read from the schema, quoted as an identifier.
            let query = format!(
                "SELECT id, quote(\"{}\") AS value FROM task_history",
                column.name
            );
            for cell in diesel::sql_query(query).load::<Cell>(c).expect("cells") {
                rows.entry(cell.id)
                    .or_default()
                    .insert(column.name.clone(), cell.value);
            }
        }
        rows
    })
}

/// The upgrade compares every column of every row, for every status, the
/// columns it adds included: an old column keeps its value (an interrupted
/// row's `finished_at` moves to `interrupted_at`), a new one is NULL. Kills
/// a migration that fills `interrupted_at` (or clears `finished_at`) for
/// rows that are not `interrupted`.
#[test]
fn the_upgrade_keeps_every_column_of_every_row_of_every_status() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.db");
    let old = store_at_pre_fix_schema(&path);
    old.with_connection(|c| c.batch_execute(EVERY_STATUS_ROWS))
        .expect("rows of every status");
    let before = every_cell(&old);
    drop(old);
    assert_eq!(before.len(), 12);
    let statuses: std::collections::BTreeSet<&str> =
        before.values().map(|row| row["status"].as_str()).collect();
    assert_eq!(statuses.len(), 5, "every pre-fix status: {statuses:?}");

    let store = SqliteStorage::open(&path).expect("open upgrades");
    let after = every_cell(&store);
    let mut expected = before.clone();
    for row in expected.values_mut() {
        for column in NEW_TASK_COLUMNS {
            assert!(!row.contains_key(column), "{column} is new");
            row.insert(column.to_owned(), "NULL".to_owned());
        }
        if row["status"] == "'interrupted'" {
            let finished_at = row.insert("finished_at".to_owned(), "NULL".to_owned());
            row.insert("interrupted_at".to_owned(), finished_at.expect("column"));
        }
    }
    assert_eq!(after, expected, "every column of every row");
    // And every upgraded row reads back as a record.
    assert_eq!(
        store.list_tasks(&Default::default()).expect("list").len(),
        12
    );
}
