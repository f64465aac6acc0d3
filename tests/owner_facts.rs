//! What each backend hands the liveness judge: the facts about an owner,
//! never a verdict. The silence is measured on the store's own clock (the
//! sweep's `now` for in-memory and SQLite, whose heartbeats are written with
//! the callers' clock; the database's clock for Postgres) and never negative;
//! every backend reports the owner's liveness lock: held while it lives,
//! free once released (on Postgres, with how long the judge has watched).

use std::sync::{Arc, Mutex, PoisonError};

use chrono::{Duration, TimeZone, Utc};
use tasktrail::backend::*;
use tasktrail::*;

mod common;
use common::{Backend, LockChange};

/// A judge that writes down the facts it is given and calls every owner
/// alive (so nothing changes between sweeps).
#[derive(Default)]
struct Recording(Mutex<Vec<Option<OwnerFacts>>>);

impl LivenessJudge for Recording {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(owner.cloned());
        Liveness::Alive
    }
}

/// The facts a sweep at `now` hands its judge; exactly one owner is asked
/// about.
fn facts_at<B: Backend>(store: &B, sweeper: WorkerId, now: Timestamp) -> OwnerFacts {
    let judge = Recording::default();
    let recovered = store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: sweeper,
                now,
                mode: SweepMode::Apply,
            },
            &judge,
        )
        .expect("sweep");
    assert!(recovered.is_empty(), "the judge called everyone alive");
    let asked = judge.0.into_inner().unwrap_or_else(PoisonError::into_inner);
    assert_eq!(asked.len(), 1, "one owner, asked about once");
    asked
        .into_iter()
        .next()
        .flatten()
        .expect("the row names a registered worker")
}

fn spec() -> TaskSpec {
    TaskSpec::validate(TaskSpecInput {
        repo: "acme/widgets".into(),
        issue_number: 7,
        user: "alice".into(),
        agent: "fixer".into(),
        agent_type: "claude_sdk".into(),
        model: "claude-opus".into(),
        provider: "anthropic".into(),
    })
    .expect("spec")
}

fn register<B: Backend>(store: &B, clock: &Arc<ManualClock>, host: &str) -> RegisteredWorker {
    let pid = 4242;
    RegisteredWorker::register(
        store,
        WorkerRegistration {
            id: WorkerId::new_random(),
            host: host.into(),
            pid,
            process_start_marker: format!("boot:{pid}"),
            host_identity: Some(HostIdentity {
                boot_id: format!("{host}-boot"),
                pid_namespace: 4_026_531_836,
            }),
            started_at: clock.now(),
        },
        clock.clone(),
    )
    .expect("register")
}

/// `callers_clock`: whether its heartbeats are written with the callers'
/// clock (so a sweep's `now` is the store's time, and kernel locks are
/// watched continuously); otherwise the database's clock, and a free lock is
/// watched since the judge's connection began.
fn the_judge_gets_the_owners_facts_on_the_stores_clock<B: Backend>(callers_clock: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(store) = B::fresh(dir.path()) else {
        return;
    };
    let clock = Arc::new(ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 14, 37, 0)
            .single()
            .expect("time"),
    ));
    let owner = register(&store, &clock, "elsewhere");
    let running = Task::queue(spec()).start(&owner, &store).expect("start");
    let sweeper = register(&store, &clock, "here");
    let stored = |id: WorkerId| {
        store
            .list_workers()
            .expect("workers")
            .into_iter()
            .find(|w| w.id == id)
            .expect("row")
    };

    // Ten minutes of silence on the store's clock.
    store.age_heartbeat(owner.id(), Duration::minutes(10));
    let facts = facts_at(&store, sweeper.id(), clock.now());
    assert_eq!(
        facts.record,
        stored(owner.id()),
        "the owner's row as stored"
    );
    assert_eq!(facts.lock, OwnerLock::Held, "a live owner holds its lock");
    assert_eq!(
        facts.record.host_identity,
        Some(HostIdentity {
            boot_id: "elsewhere-boot".into(),
            pid_namespace: 4_026_531_836,
        }),
        "the identity it registered with"
    );
    assert!(
        facts.silence >= Duration::minutes(10)
            && facts.silence < Duration::minutes(10) + Duration::seconds(30),
        "{:?}",
        facts.silence
    );

    // A sweeper whose clock runs two hours ahead.
    let ahead = facts_at(&store, sweeper.id(), clock.now() + Duration::hours(2));
    if callers_clock {
        assert_eq!(ahead.silence, facts.silence + Duration::hours(2));
    } else {
        assert!(
            ahead.silence < Duration::minutes(10) + Duration::seconds(30),
            "the database's clock, not the sweeper's: {:?}",
            ahead.silence
        );
    }

    // A fresh heartbeat and a sweeper whose clock runs behind: never a
    // negative silence.
    owner.heartbeat(&store).expect("heartbeat");
    let behind = facts_at(&store, sweeper.id(), clock.now() - Duration::hours(2));
    assert!(behind.silence >= Duration::zero(), "{:?}", behind.silence);
    assert!(
        behind.silence < Duration::seconds(30),
        "{:?}",
        behind.silence
    );

    // Its process dies: the lock is free, and only the judge's watch
    // differs between kernel locks and database locks.
    store.change_worker_lock(owner.id(), LockChange::ReleasedByDeath);
    let freed = facts_at(&store, sweeper.id(), clock.now());
    match (callers_clock, freed.lock) {
        (true, OwnerLock::Free { watched_for }) => {
            assert_eq!(watched_for, LockWatch::Continuous);
        }
        (
            false,
            OwnerLock::Free {
                watched_for: LockWatch::For(watched),
            },
        ) => {
            assert!(
                watched >= Duration::zero() && watched < Duration::minutes(5),
                "since the sweep's connection began: {watched:?}"
            );
        }
        (_, other) => panic!("expected a free lock, got {other:?}"),
    }

    // A registration older than the locks: nothing to check.
    store.change_worker_lock(owner.id(), LockChange::RegisteredBeforeLocks);
    assert_eq!(
        facts_at(&store, sweeper.id(), clock.now()).lock,
        OwnerLock::NotCheckable
    );

    running
        .finish(
            Outcome::Interrupted(InterruptReason::new("done").expect("reason")),
            &store,
        )
        .expect("finish");
}

#[test]
fn memory_hands_the_judge_facts_on_the_callers_clock() {
    the_judge_gets_the_owners_facts_on_the_stores_clock::<MemoryStorage>(true);
}

#[test]
fn sqlite_hands_the_judge_facts_on_the_callers_clock() {
    the_judge_gets_the_owners_facts_on_the_stores_clock::<SqliteStorage>(true);
}

#[cfg(feature = "postgres")]
#[test]
fn postgres_hands_the_judge_facts_on_the_database_clock() {
    the_judge_gets_the_owners_facts_on_the_stores_clock::<common::PostgresBackend>(false);
}

/// The in-memory store plays a database session lock: one lost while its
/// worker lived (a store restart: free, watched by no judge yet) is taken
/// back at the worker's next heartbeat; one freed by death stays free.
#[test]
fn memory_takes_a_lock_lost_in_a_store_restart_back_at_the_next_heartbeat() {
    let store = MemoryStorage::new();
    let clock = Arc::new(ManualClock::starting_at(
        Utc.with_ymd_and_hms(2026, 5, 11, 15, 0, 0)
            .single()
            .expect("time"),
    ));
    let owner = register(&store, &clock, "owner");
    let sweeper = register(&store, &clock, "sweeper");
    std::mem::forget(Task::queue(spec()).start(&owner, &store).expect("start"));
    let restarted = OwnerLock::Free {
        watched_for: LockWatch::For(Duration::zero()),
    };
    store.set_worker_lock(owner.id(), restarted);
    assert_eq!(facts_at(&store, sweeper.id(), clock.now()).lock, restarted);
    owner.heartbeat(&store).expect("heartbeat");
    assert_eq!(
        facts_at(&store, sweeper.id(), clock.now()).lock,
        OwnerLock::Held
    );
    // Freed by death: a heartbeat (which a dead process never sends) does
    // not take it back.
    let dead = OwnerLock::Free {
        watched_for: LockWatch::Continuous,
    };
    store.set_worker_lock(owner.id(), dead);
    owner.heartbeat(&store).expect("heartbeat");
    assert_eq!(facts_at(&store, sweeper.id(), clock.now()).lock, dead);
}
