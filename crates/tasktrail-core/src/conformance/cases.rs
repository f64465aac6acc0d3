//! The bodies of the conformance cases, one private function each. Each is
//! public only through the wrapper of the same name that
//! [`for_each_conformance_case!`](crate::for_each_conformance_case) makes in
//! the parent module: a body left out of that list is dead code, which the
//! lints refuse.

use super::*;

pub(super) fn start_inserts_one_running_row_with_every_seed_column<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (worker, _) = w.local_worker();
    let spec = w.spec("acme/widgets");
    let running = Task::queue(spec.clone())
        .start(&worker, w.store)
        .expect("start");
    let row = w.row(running.id());
    assert_eq!(row.id, running.id());
    assert_eq!(row.status, TaskStatus::Running);
    assert_eq!(
        (row.repo.as_str(), row.issue_number),
        (spec.repo(), spec.issue_number())
    );
    assert_eq!(
        (
            row.user.as_str(),
            row.agent.as_str(),
            row.agent_type.as_str(),
            row.model.as_str(),
            row.provider.as_str()
        ),
        (
            spec.user(),
            spec.agent(),
            spec.agent_type(),
            spec.model(),
            spec.provider()
        )
    );
    assert_eq!(row.started_at, running.started_at());
    assert_eq!(row.worker_id, Some(worker.id()));
    assert_eq!(row.finished_at, None);
    assert_eq!(
        (row.input_tokens, row.output_tokens, row.turns),
        (None, None, None)
    );
    assert_eq!(row.cost_usd, None);
    assert_eq!(row.artifacts, None);
    assert_eq!(w.inserts(running.id()), 1, "exactly one INSERT");
    assert_eq!(
        w.store
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .len(),
        1
    );
}

pub(super) fn finish_with_each_outcome_updates_the_same_row<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let outcomes = [
        Outcome::Success(report()),
        Outcome::Failure(report()),
        Outcome::Cancelled(report()),
        Outcome::AbortedNoSkill(report()),
        interrupted("worker received SIGTERM"),
    ];
    for outcome in outcomes {
        let running = w.start(&worker);
        let id = running.id();
        w.clock.advance(Duration::seconds(90));
        let finished = running.finish(outcome.clone(), w.store).expect("finish");
        let row = w.row(id);
        assert_eq!(row.status, outcome.status());
        assert_eq!(w.inserts(id), 1, "finish must not INSERT");
        match outcome.report() {
            Some(report) => {
                assert_eq!(row.finished_at, Some(finished.finished_at()));
                assert_eq!(row.input_tokens, Some(report.input_tokens));
                assert_eq!(row.output_tokens, Some(report.output_tokens));
                assert_eq!(row.cost_usd, Some(report.cost_usd.dollars()));
                assert_eq!(row.turns, Some(report.turns));
                assert_eq!(row.artifacts.as_ref(), Some(&report.artifacts));
                assert_eq!(row.interrupted_at, None);
            }
            None => {
                assert_eq!(
                    row.finished_at, None,
                    "interrupted rows keep finished_at NULL"
                );
                assert_eq!(
                    (row.input_tokens, row.output_tokens, row.turns),
                    (None, None, None)
                );
                assert_eq!((row.cost_usd, row.artifacts.clone()), (None, None));
                assert_eq!(row.interrupted_at, Some(finished.finished_at()));
                assert_eq!(
                    row.interrupt_reason.as_deref(),
                    Some("worker received SIGTERM")
                );
                assert_eq!(row.interrupted_by, Some(worker.id()));
            }
        }
    }
    assert_eq!(
        w.store
            .list_tasks(&TaskFilter::default())
            .expect("list")
            .len(),
        5
    );
}

pub(super) fn timestamps_round_trip_to_the_microsecond<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let running = w.start(&worker);
    let started = running.started_at();
    assert_ne!(started.timestamp_subsec_micros(), 0);
    w.clock.advance(Duration::microseconds(1_000_001));
    let finished = running
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let row = w.row(finished.id());
    assert_eq!(row.started_at, started);
    assert_eq!(row.finished_at, Some(finished.finished_at()));
}

pub(super) fn starting_the_same_id_twice_is_refused_and_hands_the_task_back<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (worker, _) = w.local_worker();
    let id = TaskId::new_random();
    let spec = w.spec("acme/widgets");
    let first = Task::queue_with_id(id, spec.clone())
        .start(&worker, w.store)
        .expect("first start");
    let before = w.row(id);
    let other_spec = w.spec("acme/gears");
    let error = Task::queue_with_id(id, other_spec)
        .start(&worker, w.store)
        .expect_err("second start");
    assert!(
        matches!(error.error, StorageError::DuplicateTask { id: dup } if dup == id),
        "{:?}",
        error.error
    );
    assert_eq!(error.into_task().id(), id);
    assert_eq!(w.row(id), before, "the first row is unchanged");
    drop(first);
}

pub(super) fn finishing_twice_is_refused_and_changes_nothing<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let running = w.start(&worker);
    let id = running.id();
    running
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let before = w.row(id);
    w.clock.advance(Duration::seconds(5));
    let again = w
        .store
        .finish_running(&FinishRow {
            id,
            worker: worker.id(),
            outcome: Outcome::Failure(RunReport::empty()),
            at: w.clock.now(),
        })
        .expect("second finish");
    assert_eq!(
        again,
        FinishWrite::Refused(FinishRefusal::AlreadyFinished {
            status: TaskStatus::Success
        })
    );
    assert_eq!(w.row(id), before, "a finished row never changes again");
    assert_eq!(w.inserts(id), 1);
}

pub(super) fn finish_by_a_worker_that_does_not_own_the_row_is_refused<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (owner, _) = w.local_worker();
    let (intruder, _) = w.local_worker();
    let running = w.start(&owner);
    let id = running.id();
    let before = w.row(id);
    let write = w
        .store
        .finish_running(&FinishRow {
            id,
            worker: intruder.id(),
            outcome: Outcome::Success(report()),
            at: w.clock.now(),
        })
        .expect("finish");
    assert_eq!(
        write,
        FinishWrite::Refused(FinishRefusal::OwnedByAnotherWorker {
            owner: Some(owner.id())
        })
    );
    assert_eq!(w.row(id), before);
    running
        .finish(Outcome::Success(report()), w.store)
        .expect("the owner still can");
}

pub(super) fn finish_of_an_id_with_no_row_never_inserts<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let ghost = TaskId::new_random();
    let write = w
        .store
        .finish_running(&FinishRow {
            id: ghost,
            worker: worker.id(),
            outcome: Outcome::Success(report()),
            at: w.clock.now(),
        })
        .expect("finish");
    assert_eq!(write, FinishWrite::Refused(FinishRefusal::Missing));
    assert_eq!(w.store.get_task(ghost).expect("get"), None);
    assert_eq!(w.inserts(ghost), 0);
}

pub(super) fn finish_after_recovery_interrupted_the_row_is_refused<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (victim, victim_pid) = w.local_worker();
    let running = w.start(&victim);
    let id = running.id();
    w.kill(victim_pid);
    let (rescuer, _) = w.local_worker();
    assert_eq!(w.sweep(&rescuer, SweepMode::Apply).len(), 1);
    let before = w.row(id);
    let error = running
        .finish(Outcome::Success(report()), w.store)
        .expect_err("late finish");
    assert!(
        matches!(&error, FinishError::Refused { refusal: FinishRefusal::InterruptedByRecovery { recovered_by: Some(by) }, .. } if *by == rescuer.id()),
        "{error:?}"
    );
    assert_eq!(w.row(id), before);
    assert_eq!(w.inserts(id), 1);
}

/// An `Interrupted` finish (its own UPDATE, with the sessions'
/// invalidation in one transaction) is refused like a completed one on a
/// row another worker owns, a row already finished and a row a sweep
/// already recovered: the row and its sessions stay exactly as they were.
/// Kills a mutant that drops the owner (or the `running`) term from the
/// interrupted finish's `WHERE`.
pub(super) fn an_interrupted_finish_is_fenced_like_a_completed_one<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (owner, _) = w.local_worker();
    let (intruder, _) = w.local_worker();
    let try_interrupt = |w: &World<'_, S>, id: TaskId, by: WorkerId| {
        w.store
            .finish_running(&FinishRow {
                id,
                worker: by,
                outcome: interrupted("late interrupt"),
                at: w.clock.now(),
            })
            .expect("finish")
    };

    // A foreign row: running, owned by another worker.
    let foreign = w.start(&owner);
    foreign
        .record_session(SessionId::parse("sess_foreign").expect("id"), w.store)
        .expect("record");
    w.clock.advance(Duration::seconds(3));
    let before = (
        w.row(foreign.id()),
        w.store.list_sessions().expect("sessions"),
    );
    assert_eq!(
        try_interrupt(w, foreign.id(), intruder.id()),
        FinishWrite::Refused(FinishRefusal::OwnedByAnotherWorker {
            owner: Some(owner.id())
        })
    );
    assert_eq!(
        (
            w.row(foreign.id()),
            w.store.list_sessions().expect("sessions")
        ),
        before,
        "a foreign row and its sessions are untouched"
    );

    // A finished row, by its own worker (and by another one).
    let key = key_of(&w.row(foreign.id()));
    let foreign_id = foreign.id();
    foreign
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    w.clock.advance(Duration::seconds(3));
    let before = (
        w.row(foreign_id),
        w.store.list_sessions().expect("sessions"),
    );
    for by in [owner.id(), intruder.id()] {
        let refused = try_interrupt(w, foreign_id, by);
        assert!(
            matches!(
                refused,
                FinishWrite::Refused(
                    FinishRefusal::AlreadyFinished {
                        status: TaskStatus::Success
                    } | FinishRefusal::OwnedByAnotherWorker { .. }
                )
            ),
            "{refused:?}"
        );
        assert_eq!(
            (
                w.row(foreign_id),
                w.store.list_sessions().expect("sessions")
            ),
            before,
            "a finished row and its sessions never change again"
        );
    }
    assert_eq!(
        try_interrupt(w, foreign_id, owner.id()),
        FinishWrite::Refused(FinishRefusal::AlreadyFinished {
            status: TaskStatus::Success
        })
    );
    assert_eq!(
        w.store
            .resumable_session(&key)
            .expect("resumable")
            .map(|session| session.session_id.as_str().to_owned()),
        Some("sess_foreign".to_owned()),
        "the finished task's session is still offered"
    );

    // A row a sweep recovered, by its dead owner and by the sweeper.
    let (victim, victim_pid) = w.local_worker();
    let orphan = w.start(&victim);
    let orphan_id = orphan.id();
    w.kill(victim_pid);
    assert_eq!(w.sweep(&intruder, SweepMode::Apply).len(), 1);
    w.clock.advance(Duration::seconds(3));
    let before = (w.row(orphan_id), w.store.list_sessions().expect("sessions"));
    for by in [victim.id(), intruder.id()] {
        let refused = try_interrupt(w, orphan_id, by);
        assert!(
            matches!(
                refused,
                FinishWrite::Refused(
                    FinishRefusal::InterruptedByRecovery { .. }
                        | FinishRefusal::OwnedByAnotherWorker { .. }
                )
            ),
            "{refused:?}"
        );
        assert_eq!(
            (w.row(orphan_id), w.store.list_sessions().expect("sessions")),
            before,
            "a recovered row never changes again"
        );
    }
    assert_eq!(w.inserts(foreign_id), 1);
    assert_eq!(w.inserts(orphan_id), 1);
    drop(orphan);
}

pub(super) fn recovery_interrupts_a_dead_same_host_workers_rows_and_fences_it<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (victim, victim_pid) = w.local_worker();
    let a = w.start(&victim);
    w.clock.advance(Duration::seconds(30));
    let b = w.start(&victim);
    w.clock.advance(Duration::minutes(36));
    w.kill(victim_pid);
    let (rescuer, _) = w.local_worker();
    let recovered = w.sweep(&rescuer, SweepMode::Apply);
    let ids: Vec<TaskId> = recovered.iter().map(|r| r.task.id).collect();
    assert_eq!(ids, vec![a.id(), b.id()], "oldest first, each once");
    for task in &recovered {
        let row = w.row(task.task.id);
        assert_eq!(row, task.task, "the reported record is the stored row");
        assert_eq!(row.status, TaskStatus::Interrupted);
        assert_eq!(
            (
                row.finished_at,
                row.cost_usd,
                row.input_tokens,
                row.output_tokens
            ),
            (None, None, None, None)
        );
        assert_eq!(row.interrupted_by, Some(rescuer.id()));
        assert_eq!(row.interrupted_at, Some(w.clock.now()));
        assert!(row
            .interrupt_reason
            .as_deref()
            .is_some_and(|r| r.contains(&victim.id().to_string())));
        assert_eq!(task.dead_worker, Some(victim.id()));
        let hint = task.hint();
        assert!(hint.starts_with("[recovery] "), "{hint}");
        for needle in [
            row.id.to_string(),
            row.repo_issue(),
            row.agent.clone(),
            row.model.clone(),
            victim.id().to_string(),
        ] {
            assert!(hint.contains(&needle), "hint {hint:?} lacks {needle:?}");
        }
    }
    assert!(
        recovered[0].hint().contains("ran_for=36m30s"),
        "{}",
        recovered[0].hint()
    );
    let state = w
        .store
        .list_workers()
        .expect("workers")
        .into_iter()
        .find(|x| x.id == victim.id())
        .map(|x| x.state);
    assert_eq!(state, Some(WorkerState::Dead));
    assert!(matches!(
        victim.heartbeat(w.store),
        Err(StorageError::WorkerNotAlive { .. })
    ));
    let spec = w.spec("acme/widgets");
    let late = Task::queue(spec)
        .start(&victim, w.store)
        .expect_err("a dead worker cannot start");
    assert!(matches!(late.error, StorageError::WorkerNotAlive { .. }));
    let refused = late.into_task().id();
    // A backend may check liveness inside the INSERT itself (one statement
    // that inserts nothing), so at most one statement and no row.
    assert!(w.inserts(refused) <= 1, "at most one INSERT statement");
    assert_eq!(
        w.store.get_task(refused).expect("get"),
        None,
        "nothing inserted"
    );
}

pub(super) fn recovery_treats_a_reused_pid_as_dead<S: Storage>(w: &mut World<'_, S>) {
    let (victim, victim_pid) = w.local_worker();
    let running = w.start(&victim);
    w.reuse_pid(victim_pid);
    let (rescuer, _) = w.local_worker();
    let recovered = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(
        recovered.iter().map(|r| r.task.id).collect::<Vec<_>>(),
        vec![running.id()]
    );
}

pub(super) fn recovery_leaves_live_workers_rows_alone<S: Storage>(w: &mut World<'_, S>) {
    let (local, _) = w.local_worker();
    let (remote, _) = w.worker_on("elsewhere");
    let (rescuer, _) = w.local_worker();
    let rows = [w.start(&local), w.start(&remote), w.start(&rescuer)];
    w.clock.advance(Duration::seconds(10));
    assert!(w.sweep(&rescuer, SweepMode::Apply).is_empty());
    for running in rows {
        assert_eq!(w.row(running.id()).status, TaskStatus::Running);
        running
            .finish(Outcome::Success(report()), w.store)
            .expect("owners still finish");
    }
}

pub(super) fn recovery_of_workers_registered_before_locks_follows_the_heartbeat_lease<
    S: Storage,
>(
    w: &mut World<'_, S>,
) {
    let (beating, _) = w.worker_on("elsewhere");
    let (silent, _) = w.worker_on("elsewhere");
    w.change_lock(beating.id(), LockChange::RegisteredBeforeLocks);
    w.change_lock(silent.id(), LockChange::RegisteredBeforeLocks);
    let kept = w.start(&beating);
    let lost = w.start(&silent);
    // Time passes for the store's clock (the database's, on Postgres): both
    // have been silent for nearly a lease, then one heartbeats.
    let almost = LivenessPolicy::DEFAULT_LEASE - Duration::seconds(1);
    w.age_heartbeat(&beating, almost);
    w.age_heartbeat(&silent, almost);
    beating.heartbeat(w.store).expect("beat");
    let (rescuer, _) = w.local_worker();
    assert!(
        w.sweep(&rescuer, SweepMode::Apply).is_empty(),
        "within the lease both are alive"
    );
    w.age_heartbeat(&beating, Duration::seconds(2));
    w.age_heartbeat(&silent, Duration::seconds(2));
    let recovered = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(
        recovered.iter().map(|r| r.task.id).collect::<Vec<_>>(),
        vec![lost.id()]
    );
    assert_eq!(w.row(kept.id()).status, TaskStatus::Running);
}

pub(super) fn a_held_lock_keeps_a_silent_worker_alive_and_reports_it_stalled<S: Storage>(
    w: &mut World<'_, S>,
) {
    // Stopped (SIGSTOP) or hung for an hour, in another PID namespace or on
    // another machine: it still holds its lock.
    for place in [
        Place::Elsewhere,
        Place::OtherPidNamespace,
        Place::LookAlikeHost,
    ] {
        let (stalled, _) = w.worker_at(place);
        let running = w.start(&stalled);
        w.age_heartbeat(&stalled, Duration::hours(1));
        let (rescuer, _) = w.local_worker();
        let (recovered, noticed) = w.sweep_noticing(&rescuer, SweepMode::Apply);
        assert!(recovered.is_empty(), "{place:?}: a held lock is alive");
        assert_eq!(
            noticed
                .iter()
                .map(|owner| (
                    owner.record.id,
                    matches!(owner.verdict, Liveness::Stalled { .. })
                ))
                .collect::<Vec<_>>(),
            vec![(stalled.id(), true)],
            "{place:?}: reported stalled"
        );
        assert!(noticed[0].silence >= Duration::hours(1), "{place:?}");
        // When it wakes up it finishes its task normally.
        stalled.heartbeat(w.store).expect("it is still alive");
        running
            .finish(Outcome::Success(report()), w.store)
            .expect("the stalled worker finishes its task");
        rescuer.deregister(w.store).expect("deregister");
    }
}

pub(super) fn a_held_lock_wins_over_a_process_probe_that_says_gone<S: Storage>(
    w: &mut World<'_, S>,
) {
    // Same boot and PID namespace, the pid is not in the process table (a
    // probe that cannot see it), yet the worker holds its lock: alive.
    let (holder, pid) = w.local_worker();
    let running = w.start(&holder);
    w.processes.kill(pid);
    let (rescuer, _) = w.local_worker();
    assert!(w.sweep(&rescuer, SweepMode::Apply).is_empty());
    assert_eq!(w.row(running.id()).status, TaskStatus::Running);
    running
        .finish(Outcome::Success(report()), w.store)
        .expect("its owner finishes it");
}

pub(super) fn a_free_lock_proves_death_only_once_the_owner_is_silent_past_the_grace<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (victim, victim_pid) = w.worker_at(Place::OtherPidNamespace);
    let running = w.start(&victim);
    let id = running.id();
    std::mem::forget(running); // SIGKILL: no drop
    w.change_lock(victim.id(), LockChange::ReleasedByDeath);
    let (rescuer, _) = w.local_worker();
    // A judge that has not watched the lock for a grace yet (Postgres: a
    // fresh connection) waits too: give every backend's judge the grace.
    std::thread::sleep(
        (SUITE_GRACE + Duration::milliseconds(200))
            .to_std()
            .expect("positive"),
    );
    // Its last heartbeat, just before its process died.
    victim.heartbeat(w.store).expect("a last heartbeat");
    let (recovered, noticed) = w.sweep_noticing(&rescuer, SweepMode::Apply);
    assert!(recovered.is_empty(), "within the grace: not yet provable");
    assert_eq!(
        noticed
            .iter()
            .map(|owner| (owner.record.id, owner.verdict.clone()))
            .collect::<Vec<_>>(),
        vec![(victim.id(), Liveness::NotYetProvable(Unproven::WithinGrace))]
    );
    assert_eq!(w.row(id).status, TaskStatus::Running);
    w.age_heartbeat(&victim, SUITE_GRACE + Duration::seconds(1));
    let recovered = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(
        recovered.iter().map(|r| r.task.id).collect::<Vec<_>>(),
        vec![id]
    );
    assert!(
        matches!(&recovered[0].cause, DeathCause::LockReleased { pid, .. } if *pid == victim_pid),
        "{:?}",
        recovered[0].cause
    );
    assert!(matches!(
        victim.heartbeat(w.store),
        Err(StorageError::WorkerNotAlive { .. })
    ));
}

pub(super) fn look_alike_hosts_and_other_pid_namespaces_are_never_judged_by_pid<S: Storage>(
    w: &mut World<'_, S>,
) {
    // Their pids are not in the judge's process table, and the judge's host
    // name is theirs: a probe would call them gone. Whatever their lock
    // says, a fresh heartbeat keeps them.
    let mut rows = Vec::new();
    for place in [Place::LookAlikeHost, Place::OtherPidNamespace] {
        for change in [None, Some(LockChange::RegisteredBeforeLocks)] {
            let (worker, _) = w.worker_at(place);
            if let Some(change) = change {
                w.change_lock(worker.id(), change);
            }
            rows.push((w.start(&worker), worker));
        }
    }
    let (rescuer, _) = w.local_worker();
    assert!(w.sweep(&rescuer, SweepMode::Apply).is_empty());
    for (running, worker) in rows {
        assert_eq!(w.row(running.id()).status, TaskStatus::Running);
        worker.heartbeat(w.store).expect("still alive");
        running
            .finish(Outcome::Success(report()), w.store)
            .expect("its owner finishes it");
    }
}

pub(super) fn recovery_with_no_orphans_is_a_no_op<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let done = w.start(&worker);
    let id = done.id();
    done.finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let before = w.store.list_tasks(&TaskFilter::default()).expect("list");
    let workers_before = w.store.list_workers().expect("workers");
    let (rescuer, _) = w.local_worker();
    assert!(w.sweep(&rescuer, SweepMode::Apply).is_empty());
    assert_eq!(
        w.store.list_tasks(&TaskFilter::default()).expect("list"),
        before
    );
    let workers_after = w.store.list_workers().expect("workers");
    assert!(workers_before.iter().all(|old| workers_after.contains(old)));
    assert_eq!(w.row(id).status, TaskStatus::Success);
}

pub(super) fn every_recovered_task_is_reported_once<S: Storage>(w: &mut World<'_, S>) {
    let (victim, pid) = w.local_worker();
    for _ in 0..3 {
        let _ = w.start(&victim);
    }
    w.kill(pid);
    let (first, _) = w.local_worker();
    let (second, _) = w.local_worker();
    assert_eq!(w.sweep(&first, SweepMode::Apply).len(), 3);
    assert!(w.sweep(&second, SweepMode::Apply).is_empty());
    assert!(w.sweep(&first, SweepMode::Apply).is_empty());
}

pub(super) fn dry_run_reports_the_same_tasks_and_changes_nothing<S: Storage>(w: &mut World<'_, S>) {
    let (victim, pid) = w.local_worker();
    let running = w.start(&victim);
    running
        .record_session(SessionId::parse("sess_dry").expect("id"), w.store)
        .expect("session");
    w.kill(pid);
    let (rescuer, _) = w.local_worker();
    let before = w.store.list_tasks(&TaskFilter::default()).expect("list");
    let sessions_before = w.store.list_sessions().expect("sessions");
    let preview = w.sweep(&rescuer, SweepMode::DryRun);
    assert_eq!(
        w.store.list_tasks(&TaskFilter::default()).expect("list"),
        before
    );
    assert_eq!(w.store.list_sessions().expect("sessions"), sessions_before);
    let victim_state = w
        .store
        .list_workers()
        .expect("workers")
        .into_iter()
        .find(|x| x.id == victim.id())
        .map(|x| x.state);
    assert_eq!(victim_state, Some(WorkerState::Alive));
    let applied = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(
        preview
            .iter()
            .map(|r| (r.task.id, r.sessions_invalidated))
            .collect::<Vec<_>>(),
        applied
            .iter()
            .map(|r| (r.task.id, r.sessions_invalidated))
            .collect::<Vec<_>>()
    );
    assert_eq!(applied[0].sessions_invalidated, 1);
}

fn key_of(row: &TaskRecord) -> SessionKey {
    SessionKey {
        repo: row.repo.clone(),
        issue_number: row.issue_number,
        agent: row.agent.clone(),
    }
}

pub(super) fn sessions_are_resumable_only_after_a_completed_run<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let spec = w.spec("acme/widgets");
    let first = Task::queue(spec.clone())
        .start(&worker, w.store)
        .expect("start");
    first
        .record_session(SessionId::parse("sess_1").expect("id"), w.store)
        .expect("record");
    let key = key_of(&w.row(first.id()));
    let first_id = first.id();
    assert_eq!(
        w.store.resumable_session(&key).expect("resumable"),
        None,
        "its task is still running"
    );
    first
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let offered = w
        .store
        .resumable_session(&key)
        .expect("resumable")
        .expect("offered");
    assert_eq!(offered.session_id.as_str(), "sess_1");

    w.clock.advance(Duration::minutes(1));
    let second = Task::queue(spec).start(&worker, w.store).expect("start");
    let second_id = second.id();
    second
        .record_session(SessionId::parse("sess_2").expect("id"), w.store)
        .expect("record");
    second
        .finish(Outcome::Failure(report()), w.store)
        .expect("finish");
    let offered = w
        .store
        .resumable_session(&key)
        .expect("resumable")
        .expect("offered");
    assert_eq!(offered.session_id.as_str(), "sess_2", "newest wins");
    let of_task = |id| {
        w.store
            .list_task_sessions(id)
            .expect("sessions")
            .iter()
            .map(|s| s.session_id.as_str().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(of_task(first_id), vec!["sess_1"], "only the task's own");
    assert_eq!(of_task(second_id), vec!["sess_2"]);
    assert!(of_task(TaskId::new_random()).is_empty());
    let other_key = SessionKey {
        agent: "triager".into(),
        ..key
    };
    assert_eq!(
        w.store.resumable_session(&other_key).expect("resumable"),
        None
    );
}

pub(super) fn sessions_of_interrupted_tasks_are_invalidated_and_never_resumed<S: Storage>(
    w: &mut World<'_, S>,
) {
    // Interrupted by recovery.
    let (victim, pid) = w.local_worker();
    let spec = w.spec("acme/widgets");
    let orphan = Task::queue(spec.clone())
        .start(&victim, w.store)
        .expect("start");
    orphan
        .record_session(SessionId::parse("sess_orphan").expect("id"), w.store)
        .expect("record");
    let key = key_of(&w.row(orphan.id()));
    w.kill(pid);
    let (rescuer, _) = w.local_worker();
    let recovered = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].sessions_invalidated, 1);
    assert_eq!(w.store.resumable_session(&key).expect("resumable"), None);

    // Interrupted by its own worker on shutdown.
    let stopping = Task::queue(spec).start(&rescuer, w.store).expect("start");
    stopping
        .record_session(SessionId::parse("sess_stopping").expect("id"), w.store)
        .expect("record");
    stopping
        .finish(interrupted("worker received SIGTERM"), w.store)
        .expect("finish");
    assert_eq!(w.store.resumable_session(&key).expect("resumable"), None);

    let sessions = w.store.list_sessions().expect("sessions");
    assert_eq!(sessions.len(), 2);
    for session in sessions {
        assert!(
            session.invalidated_at.is_some(),
            "{} must be invalidated",
            session.session_id
        );
        assert!(session.invalidation_reason.is_some());
    }
}

pub(super) fn session_writes_are_checked<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let running = w.start(&worker);
    running
        .record_session(SessionId::parse("sess_a").expect("id"), w.store)
        .expect("record");
    let dup = running.record_session(SessionId::parse("sess_a").expect("id"), w.store);
    assert!(
        matches!(dup, Err(StorageError::DuplicateSession)),
        "{dup:?}"
    );
    let id = running.id();
    running
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let late = w.store.record_session(&crate::backend::NewSession {
        session_id: SessionId::parse("sess_b").expect("id"),
        task_id: id,
        worker: worker.id(),
        repo: "acme/widgets".into(),
        issue_number: 1,
        agent: "fixer".into(),
        created_at: w.clock.now(),
    });
    assert!(
        matches!(late, Err(StorageError::TaskNotRunning { .. })),
        "{late:?}"
    );
    assert_eq!(w.store.list_sessions().expect("sessions").len(), 1);
}

pub(super) fn a_deregistered_workers_leftover_rows_are_orphans<S: Storage>(w: &mut World<'_, S>) {
    let (quitter, _) = w.local_worker();
    let running = w.start(&quitter);
    let quitter_id = quitter.id();
    quitter.deregister(w.store).expect("deregister");
    let state = w
        .store
        .list_workers()
        .expect("workers")
        .into_iter()
        .find(|x| x.id == quitter_id)
        .map(|x| x.state);
    assert_eq!(state, Some(WorkerState::Stopped));
    let (rescuer, _) = w.local_worker();
    let recovered = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(
        recovered.iter().map(|r| r.task.id).collect::<Vec<_>>(),
        vec![running.id()]
    );
}

pub(super) fn listing_filters_orders_and_limits<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let mut ids = Vec::new();
    for (repo, finish) in [
        ("acme/widgets", true),
        ("acme/gears", false),
        ("acme/widgets", false),
        ("acme/gears", true),
    ] {
        let spec = w.spec(repo);
        let running = Task::queue(spec).start(&worker, w.store).expect("start");
        ids.push(running.id());
        if finish {
            running
                .finish(Outcome::Success(report()), w.store)
                .expect("finish");
        }
        w.clock.advance(Duration::seconds(1));
    }
    let all = w.store.list_tasks(&TaskFilter::default()).expect("list");
    assert_eq!(
        all.iter().map(|t| t.id).collect::<Vec<_>>(),
        ids.iter().rev().copied().collect::<Vec<_>>(),
        "newest first"
    );
    let running = w
        .store
        .list_tasks(&TaskFilter {
            status: Some(TaskStatus::Running),
            ..TaskFilter::default()
        })
        .expect("list");
    assert_eq!(
        running.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1]]
    );
    let gears = w
        .store
        .list_tasks(&TaskFilter {
            repo: Some("acme/gears".into()),
            ..TaskFilter::default()
        })
        .expect("list");
    assert_eq!(
        gears.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[3], ids[1]]
    );
    let limited = w
        .store
        .list_tasks(&TaskFilter {
            limit: Some(1),
            ..TaskFilter::default()
        })
        .expect("list");
    assert_eq!(
        limited.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[3]]
    );
    let both = w
        .store
        .list_tasks(&TaskFilter {
            status: Some(TaskStatus::Success),
            repo: Some("acme/widgets".into()),
            limit: Some(10),
            offset: None,
        })
        .expect("list");
    assert_eq!(both.iter().map(|t| t.id).collect::<Vec<_>>(), vec![ids[0]]);
    let paged = |offset, limit| {
        w.store
            .list_tasks(&TaskFilter {
                limit,
                offset: Some(offset),
                ..TaskFilter::default()
            })
            .expect("list")
            .iter()
            .map(|t| t.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        paged(1, Some(2)),
        vec![ids[2], ids[1]],
        "the second page of two"
    );
    assert_eq!(paged(3, Some(2)), vec![ids[0]], "the last page is short");
    assert_eq!(paged(3, None), vec![ids[0]], "an offset without a limit");
    assert!(paged(4, Some(2)).is_empty(), "past the end");
    let running_page = w
        .store
        .list_tasks(&TaskFilter {
            status: Some(TaskStatus::Running),
            limit: Some(1),
            offset: Some(1),
            ..TaskFilter::default()
        })
        .expect("list");
    assert_eq!(
        running_page.iter().map(|t| t.id).collect::<Vec<_>>(),
        vec![ids[1]],
        "the offset applies after the filter"
    );
    assert_eq!(w.store.get_task(TaskId::new_random()).expect("get"), None);
    assert!(w
        .store
        .list_workers()
        .expect("workers")
        .iter()
        .any(|x| x.id == worker.id()));
}

pub(super) fn status_counts_and_hourly_outcomes_count_the_rows<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let empty = w.store.count_tasks_by_status(None).expect("counts");
    assert_eq!(
        empty,
        TaskStatus::ALL.iter().map(|s| (*s, 0)).collect::<Vec<_>>(),
        "every status, zero included"
    );
    // The clock starts at 14:37:02; rows end across three hours.
    let start = w.clock.now();
    let plan: [(&str, Option<Outcome>, i64); 7] = [
        ("acme/widgets", Some(Outcome::Success(report())), 60),
        ("acme/widgets", Some(Outcome::Failure(report())), 60),
        (
            "acme/gears",
            Some(interrupted("worker received SIGTERM")),
            40,
        ),
        ("acme/gears", Some(Outcome::Success(report())), 50),
        ("acme/widgets", Some(Outcome::Cancelled(report())), 70),
        ("acme/widgets", None, 1),
        ("acme/gears", None, 1),
    ];
    for (repo, outcome, minutes) in plan {
        let spec = w.spec(repo);
        let running = Task::queue(spec).start(&worker, w.store).expect("start");
        w.clock.advance(Duration::minutes(minutes));
        if let Some(outcome) = outcome {
            running.finish(outcome, w.store).expect("finish");
        }
    }
    let all = w.store.list_tasks(&TaskFilter::default()).expect("list");
    let count = |counts: &[(TaskStatus, u64)], status| {
        counts
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, n)| *n)
            .expect("every status")
    };
    let counts = w.store.count_tasks_by_status(None).expect("counts");
    assert_eq!(counts, crate::status_counts(&all, None));
    assert_eq!(
        counts.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        TaskStatus::ALL.to_vec()
    );
    assert_eq!(count(&counts, TaskStatus::Running), 2);
    assert_eq!(count(&counts, TaskStatus::Success), 2);
    assert_eq!(count(&counts, TaskStatus::Interrupted), 1);
    assert_eq!(count(&counts, TaskStatus::AbortedNoSkill), 0);
    let gears = w
        .store
        .count_tasks_by_status(Some("acme/gears"))
        .expect("counts");
    assert_eq!(gears, crate::status_counts(&all, Some("acme/gears")));
    assert_eq!(
        gears.iter().map(|(_, n)| n).sum::<u64>(),
        3,
        "only the repo's rows"
    );
    assert_eq!(count(&gears, TaskStatus::Failure), 0);
    assert_eq!(
        w.store
            .count_tasks_by_status(Some("acme/nothing"))
            .expect("counts")
            .iter()
            .map(|(_, n)| n)
            .sum::<u64>(),
        0
    );

    let buckets = w.store.count_outcomes_by_hour(start).expect("buckets");
    assert_eq!(buckets, crate::outcome_buckets(&all, start));
    let hour = |h: i64| crate::hour_start(start) + Duration::hours(h);
    // Ends: 15:37 success, 16:37 failure, 17:17 interrupted, 18:07
    // success, 19:17 cancelled.
    assert_eq!(
        buckets
            .iter()
            .map(|b| (b.hour, b.status, b.rows))
            .collect::<Vec<_>>(),
        vec![
            (hour(1), TaskStatus::Success, 1),
            (hour(2), TaskStatus::Failure, 1),
            (hour(3), TaskStatus::Interrupted, 1),
            (hour(4), TaskStatus::Success, 1),
            (hour(5), TaskStatus::Cancelled, 1),
        ]
    );
    let later = start + Duration::minutes(60 + 60 + 40 + 1);
    let recent = w.store.count_outcomes_by_hour(later).expect("buckets");
    assert_eq!(recent, crate::outcome_buckets(&all, later));
    assert_eq!(
        recent.iter().map(|b| b.status).collect::<Vec<_>>(),
        vec![TaskStatus::Success, TaskStatus::Cancelled],
        "rows that ended before `since` are not counted"
    );
}

pub(super) fn an_abandoned_handle_is_interrupted_once_with_its_sessions<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (worker, _) = w.local_worker();
    let running = w.start(&worker);
    let id = running.id();
    running
        .record_session(SessionId::parse("sess_abandoned").expect("id"), w.store)
        .expect("session");
    let kept = w.start(&worker);
    drop(running); // a panic, a cancelled future, an early return
    assert_eq!(w.row(id).status, TaskStatus::Running, "no IO in drop");
    assert_eq!(worker.abandoned(), vec![id]);
    assert_eq!(worker.in_flight(), vec![kept.id()]);

    let sweep = worker.interrupt_abandoned(w.store);
    assert!(sweep.error.is_none(), "{:?}", sweep.error);
    assert_eq!(sweep.recovered.len(), 1);
    let recovered = &sweep.recovered[0];
    assert_eq!(recovered.task.id, id);
    assert_eq!(recovered.cause, crate::DeathCause::HandleAbandoned);
    assert_eq!(recovered.sessions_invalidated, 1);
    assert!(recovered.hint().starts_with("[recovery] "));
    let row = w.row(id);
    assert_eq!(row.status, TaskStatus::Interrupted);
    assert_eq!(
        row.interrupt_reason.as_deref(),
        Some(crate::ABANDONED_REASON)
    );
    assert_eq!(row.interrupted_by, Some(worker.id()));
    assert_eq!(
        (row.finished_at, row.cost_usd, row.turns),
        (None, None, None)
    );
    assert_eq!(w.inserts(id), 1, "interrupting never INSERTs");
    let sessions = w.store.list_sessions().expect("sessions");
    assert!(sessions
        .iter()
        .filter(|s| s.task_id == id)
        .all(|s| s.invalidated_at.is_some()));
    assert_eq!(
        w.store.resumable_session(&key_of(&row)).expect("resume"),
        None
    );

    let again = worker.interrupt_abandoned(w.store);
    assert!(again.recovered.is_empty(), "reported once");
    assert_eq!(
        w.row(kept.id()).status,
        TaskStatus::Running,
        "the other task is untouched"
    );
    kept.finish(Outcome::Success(report()), w.store)
        .expect("the kept task finishes");
}

pub(super) fn a_finished_handle_is_never_treated_as_abandoned<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    let finished = w
        .start(&worker)
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let refused_id = {
        let running = w.start(&worker);
        let id = running.id();
        // Finished by a stop: the handle's own finish is refused, and the
        // refusal settles it too.
        let reason = InterruptReason::new("worker stopped").expect("reason");
        let (interrupted, error) = worker.interrupt_in_flight(w.store, &reason);
        assert!(error.is_none());
        assert_eq!(interrupted, vec![id]);
        assert!(matches!(
            running.finish(Outcome::Success(report()), w.store),
            Err(FinishError::Refused { .. })
        ));
        id
    };
    assert!(worker.abandoned().is_empty() && worker.in_flight().is_empty());
    assert!(worker.interrupt_abandoned(w.store).recovered.is_empty());
    assert_eq!(w.row(finished.id()).status, TaskStatus::Success);
    assert_eq!(
        w.row(refused_id).interrupt_reason.as_deref(),
        Some("worker stopped")
    );
}

pub(super) fn an_abandoned_handle_whose_row_a_sweep_recovered_is_not_reported_again<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (victim, pid) = w.local_worker();
    let running = w.start(&victim);
    let id = running.id();
    w.kill(pid);
    let (rescuer, _) = w.local_worker();
    let swept = w.sweep(&rescuer, SweepMode::Apply);
    assert_eq!(swept.len(), 1);
    let reason = w.row(id).interrupt_reason;
    drop(running);
    let sweep = victim.interrupt_abandoned(w.store);
    assert!(sweep.recovered.is_empty(), "the sweep reported it already");
    assert!(sweep.error.is_none());
    assert_eq!(
        w.row(id).interrupt_reason,
        reason,
        "fenced: nothing written"
    );
    assert!(victim.abandoned().is_empty());
}

pub(super) fn a_live_workers_sweep_recovers_a_dead_workers_rows_and_keeps_its_own<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (sweeper, _) = w.local_worker();
    let (dead, pid) = w.local_worker();
    let mine = w.start(&sweeper);
    let theirs = w.start(&dead);
    let theirs_id = theirs.id();
    std::mem::forget(theirs); // SIGKILL: no drop
    w.kill(pid);
    w.clock.advance(Duration::seconds(30));
    let recovered = w.sweep(&sweeper, SweepMode::Apply);
    assert_eq!(
        recovered.iter().map(|r| r.task.id).collect::<Vec<_>>(),
        vec![theirs_id]
    );
    assert_eq!(w.row(theirs_id).status, TaskStatus::Interrupted);
    assert_eq!(w.row(mine.id()).status, TaskStatus::Running, "its own row");
    assert!(w.sweep(&sweeper, SweepMode::Apply).is_empty(), "once");
    mine.finish(Outcome::Success(report()), w.store)
        .expect("the sweeper finishes its own");
}

pub(super) fn a_recovered_rows_report_is_owed_until_its_reporter_confirms_it<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (victim, pid) = w.local_worker();
    let _a = w.start(&victim);
    let _b = w.start(&victim);
    w.kill(pid);
    let (reporter, _) = w.local_worker();
    let (bystander, _) = w.local_worker();
    // A dry run owes nothing.
    assert_eq!(w.sweep(&reporter, SweepMode::DryRun).len(), 2);
    assert!(w.claim(reporter.id(), w.clock.now()).is_empty());
    w.clock.advance(Duration::seconds(5));
    let recovered = w.sweep(&reporter, SweepMode::Apply);
    assert_eq!(recovered.len(), 2);
    assert!(recovered.iter().all(|r| r.previous_reporter.is_none()));
    // Not confirmed: the reporter's own claim hands them back, the same
    // lines, now marked as made again; a living reporter's reports stay
    // with it.
    w.clock.advance(Duration::seconds(5));
    assert!(w.claim(bystander.id(), w.clock.now()).is_empty());
    let again = w.claim(reporter.id(), w.clock.now());
    assert_eq!(again.len(), 2);
    for (first, second) in recovered.iter().zip(&again) {
        assert_eq!(second.hint(), first.hint(), "the same [recovery] line");
        assert_eq!(second.task, w.row(first.task.id));
        assert_eq!(second.cause, first.cause);
        assert_eq!(second.previous_reporter, Some(reporter.id()));
    }
    // Only the worker that owes a report confirms it.
    assert_eq!(w.confirm(bystander.id(), &again), 0);
    assert_eq!(w.claim(reporter.id(), w.clock.now()).len(), 2);
    assert_eq!(w.confirm(reporter.id(), &again), 2);
    assert_eq!(w.confirm(reporter.id(), &again), 0, "confirmed once");
    assert!(w.claim(reporter.id(), w.clock.now()).is_empty());
    assert!(w.claim(bystander.id(), w.clock.now()).is_empty());
}

pub(super) fn a_dead_reporters_unconfirmed_reports_are_taken_over_once<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (victim, victim_pid) = w.local_worker();
    let _task = w.start(&victim);
    w.kill(victim_pid);
    let (reporter, reporter_pid) = w.local_worker();
    let recovered = w.sweep(&reporter, SweepMode::Apply);
    assert_eq!(recovered.len(), 1);
    // The reporter dies between the sweep's commit and its report.
    w.kill(reporter_pid);
    w.clock.advance(Duration::seconds(30));
    let (first, _) = w.local_worker();
    let (second, _) = w.local_worker();
    // The cut-off for reports owed by ids naming no worker does not apply
    // to a registered reporter found dead: its reports move whenever they
    // were owed.
    let taken = w.claim(first.id(), w.clock.now() - Duration::hours(1));
    assert_eq!(taken.len(), 1, "taken over by the first claim");
    assert_eq!(taken[0].hint(), recovered[0].hint());
    assert_eq!(taken[0].previous_reporter, Some(reporter.id()));
    assert_eq!(
        taken[0].sessions_invalidated,
        recovered[0].sessions_invalidated
    );
    assert!(
        w.claim(second.id(), w.clock.now()).is_empty(),
        "never by two"
    );
    // The claim moved the duty to report, nothing else: the dead
    // reporter's late confirmation counts for nothing.
    assert_eq!(w.confirm(reporter.id(), &taken), 0);
    assert_eq!(w.confirm(first.id(), &taken), 1);
    assert!(w.claim(second.id(), w.clock.now()).is_empty());
}

pub(super) fn an_operator_sweeps_reports_move_only_once_they_are_older_than_the_cut_off<
    S: Storage,
>(
    w: &mut World<'_, S>,
) {
    let (victim, pid) = w.local_worker();
    let _task = w.start(&victim);
    w.kill(pid);
    // An operator's one-shot sweep: an id that never registers.
    let operator = WorkerId::new_random();
    let policy = World::<S>::policy();
    let recovered = w
        .store
        .recover_orphans(
            &RecoveryRequest {
                recovering_worker: operator,
                now: w.clock.now(),
                mode: SweepMode::Apply,
            },
            &PolicyJudge {
                policy: &policy,
                probe: &w.processes,
            },
        )
        .expect("sweep");
    assert_eq!(recovered.len(), 1);
    let (worker, _) = w.local_worker();
    let owed_since = w.clock.now();
    // It may still be printing: not taken while owed since the cut-off.
    assert!(w.claim(worker.id(), owed_since).is_empty());
    let taken = w.claim(worker.id(), owed_since + Duration::milliseconds(1));
    assert_eq!(taken.len(), 1);
    assert_eq!(taken[0].previous_reporter, Some(operator));
    assert_eq!(taken[0].hint(), recovered[0].hint());
}

/// `list_task_rows` (the listing that hands a row it cannot decode back as
/// its own error) reads, when every row is the backend's own, exactly what
/// `list_tasks` reads: the same rows in the same order, under each filter.
pub(super) fn listing_row_by_row_reads_what_listing_reads<S: Storage>(w: &mut World<'_, S>) {
    let (worker, _) = w.local_worker();
    for repo in ["acme/widgets", "acme/gears", "acme/widgets"] {
        let spec = w.spec(repo);
        let running = Task::queue(spec).start(&worker, w.store).expect("start");
        if repo == "acme/gears" {
            running
                .finish(Outcome::Success(report()), w.store)
                .expect("finish");
        }
        w.clock.advance(Duration::seconds(1));
    }
    for filter in [
        TaskFilter::default(),
        TaskFilter {
            status: Some(TaskStatus::Running),
            ..TaskFilter::default()
        },
        TaskFilter {
            repo: Some("acme/gears".into()),
            ..TaskFilter::default()
        },
        TaskFilter {
            limit: Some(2),
            ..TaskFilter::default()
        },
    ] {
        let listed = w.store.list_tasks(&filter).expect("list");
        assert!(!listed.is_empty(), "{filter:?} selects rows");
        let row_by_row: Vec<TaskRecord> = w
            .store
            .list_task_rows(&filter)
            .expect("list rows")
            .into_iter()
            .map(|row| row.expect("every row decodes"))
            .collect();
        assert_eq!(row_by_row, listed, "{filter:?}");
    }
}

/// Interrupting a task (by its own worker, or by a sweep) invalidates that
/// task's sessions only: another running task's session and a completed
/// task's resumable session are left as they were.
pub(super) fn interrupting_a_task_invalidates_its_own_sessions_only<S: Storage>(
    w: &mut World<'_, S>,
) {
    let (worker, _) = w.local_worker();
    let completed = w.start(&worker);
    completed
        .record_session(SessionId::parse("sess_completed").expect("id"), w.store)
        .expect("record");
    let completed_key = key_of(&w.row(completed.id()));
    completed
        .finish(Outcome::Success(report()), w.store)
        .expect("finish");
    let neighbour = w.start(&worker);
    neighbour
        .record_session(SessionId::parse("sess_neighbour").expect("id"), w.store)
        .expect("record");
    let stopping = w.start(&worker);
    stopping
        .record_session(SessionId::parse("sess_stopping").expect("id"), w.store)
        .expect("record");
    stopping
        .finish(interrupted("worker received SIGTERM"), w.store)
        .expect("finish");
    let (dead, pid) = w.local_worker();
    let orphan = w.start(&dead);
    orphan
        .record_session(SessionId::parse("sess_orphan").expect("id"), w.store)
        .expect("record");
    w.kill(pid);
    let preview = w.sweep(&worker, SweepMode::DryRun);
    assert_eq!(preview.len(), 1);
    assert_eq!(
        preview[0].sessions_invalidated, 1,
        "a dry run counts the same"
    );
    let recovered = w.sweep(&worker, SweepMode::Apply);
    assert_eq!(recovered.len(), 1);
    assert_eq!(recovered[0].sessions_invalidated, 1);
    let invalidated: Vec<(String, bool)> = {
        let mut sessions: Vec<(String, bool)> = w
            .store
            .list_sessions()
            .expect("sessions")
            .into_iter()
            .map(|session| {
                (
                    session.session_id.as_str().to_owned(),
                    session.invalidated_at.is_some(),
                )
            })
            .collect();
        sessions.sort();
        sessions
    };
    assert_eq!(
        invalidated,
        vec![
            ("sess_completed".to_owned(), false),
            ("sess_neighbour".to_owned(), false),
            ("sess_orphan".to_owned(), true),
            ("sess_stopping".to_owned(), true),
        ]
    );
    assert_eq!(
        w.store
            .resumable_session(&completed_key)
            .expect("resumable")
            .map(|session| session.session_id.as_str().to_owned()),
        Some("sess_completed".to_owned())
    );
    drop(neighbour);
    drop(orphan);
}
