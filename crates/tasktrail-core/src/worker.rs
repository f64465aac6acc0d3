//! Workers, and how a booting worker decides that another one is dead.

use std::fmt;

use chrono::Duration;

use crate::clock::{Timestamp, UtcSeconds};
use crate::ids::WorkerId;

/// What a worker writes about itself when it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRegistration {
    /// A fresh id for this boot.
    pub id: WorkerId,
    /// The host name the worker runs on.
    pub host: String,
    /// The worker's process id on that host.
    pub pid: u32,
    /// An opaque marker of when the process started (on Linux: the boot id
    /// and the process start time in clock ticks). A pid reused by another
    /// process has a different marker.
    pub process_start_marker: String,
    /// When the worker booted; also its first heartbeat.
    pub started_at: Timestamp,
}

/// Where a worker is in its life, as the `workers.state` column says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkerState {
    /// Registered and (as far as its heartbeat says) running.
    Alive,
    /// Deregistered on a clean stop.
    Stopped,
    /// Declared dead by a recovery sweep; it must stop writing.
    Dead,
}

impl WorkerState {
    /// The column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            WorkerState::Alive => "alive",
            WorkerState::Stopped => "stopped",
            WorkerState::Dead => "dead",
        }
    }

    /// Parses the column value.
    pub fn from_column(value: &str) -> Option<Self> {
        match value {
            "alive" => Some(WorkerState::Alive),
            "stopped" => Some(WorkerState::Stopped),
            "dead" => Some(WorkerState::Dead),
            _ => None,
        }
    }
}

/// A `workers` row read back from storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    /// The worker's id.
    pub id: WorkerId,
    /// Its host.
    pub host: String,
    /// Its pid on that host.
    pub pid: u32,
    /// See [`WorkerRegistration::process_start_marker`].
    pub process_start_marker: String,
    /// When it booted.
    pub started_at: Timestamp,
    /// Its last heartbeat.
    pub heartbeat_at: Timestamp,
    /// Its state.
    pub state: WorkerState,
    /// When it stopped or was declared dead.
    pub stopped_at: Option<Timestamp>,
}

/// Asks the local operating system about a process.
pub trait ProcessProbe: Send + Sync {
    /// The start marker of process `pid` on this host (in the same format as
    /// [`WorkerRegistration::process_start_marker`]), or `None` if no such
    /// process exists.
    fn process_start_marker(&self, pid: u32) -> Option<String>;
}

/// The rules for deciding whether the owner of a `running` row is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// The host the judging worker runs on. Workers on this host are judged
    /// exactly, by asking the operating system; others by their heartbeat.
    pub local_host: String,
    /// How long a worker on another host may stay silent (its
    /// [`OwnerFacts::silence`], on the store's clock) before it counts as
    /// dead. The default is [`LivenessPolicy::DEFAULT_LEASE`]: three
    /// heartbeat intervals.
    pub lease: Duration,
}

impl LivenessPolicy {
    /// How often a worker heartbeats by default.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::seconds(5);
    /// The default lease: three missed heartbeats.
    pub const DEFAULT_LEASE: Duration = Duration::seconds(15);

    /// A policy for a worker on `local_host` with the default lease.
    pub fn for_host(local_host: impl Into<String>) -> Self {
        Self {
            local_host: local_host.into(),
            lease: Self::DEFAULT_LEASE,
        }
    }

    /// Decides whether the owner that `facts` describes is alive. Every
    /// verdict of a recovery sweep is made here, whatever the backend; the
    /// backend only gathers the facts. In this order:
    ///
    /// - A worker that stopped cleanly ([`DeathCause::Deregistered`]) or was
    ///   declared dead ([`DeathCause::DeclaredDead`]) is dead.
    /// - A worker whose database session ended ([`OwnerSession::Released`]:
    ///   the lock it holds on its own session is free) is dead at once
    ///   ([`DeathCause::SessionEnded`]), without waiting out the lease.
    /// - A worker on this host is alive exactly when a process with its pid
    ///   exists *and* has the start marker it registered (a reused pid does
    ///   not count). No timeout is involved.
    /// - A worker on another host is alive while its
    ///   [`silence`](OwnerFacts::silence) is no longer than the lease.
    pub fn judge(&self, facts: &OwnerFacts, probe: &dyn ProcessProbe) -> Liveness {
        let worker = &facts.record;
        match worker.state {
            WorkerState::Stopped => return Liveness::Dead(DeathCause::Deregistered),
            WorkerState::Dead => return Liveness::Dead(DeathCause::DeclaredDead),
            WorkerState::Alive => {}
        }
        if facts.session == OwnerSession::Released {
            return Liveness::Dead(DeathCause::SessionEnded {
                host: worker.host.clone(),
                pid: worker.pid,
            });
        }
        if worker.host == self.local_host {
            return match probe.process_start_marker(worker.pid) {
                None => Liveness::Dead(DeathCause::ProcessGone {
                    host: worker.host.clone(),
                    pid: worker.pid,
                }),
                Some(marker) if marker != worker.process_start_marker => {
                    Liveness::Dead(DeathCause::PidReused {
                        host: worker.host.clone(),
                        pid: worker.pid,
                    })
                }
                Some(_) => Liveness::Alive,
            };
        }
        if facts.silence > self.lease {
            Liveness::Dead(DeathCause::LeaseExpired {
                host: worker.host.clone(),
                last_heartbeat: worker.heartbeat_at,
                lease: self.lease,
            })
        } else {
            Liveness::Alive
        }
    }
}

/// What a store knows about the owner of `running` rows when a sweep judges
/// it: the facts [`LivenessPolicy::judge`] decides on. Backends gather them,
/// they never decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnerFacts {
    /// The owner's `workers` row.
    pub record: WorkerRecord,
    /// Time since its last heartbeat on the *store's* clock, never negative:
    /// the sweep's `now` minus `heartbeat_at` where heartbeats are written
    /// with the callers' clock (in-memory, SQLite); the database's
    /// `clock_timestamp()` minus `heartbeat_at` on Postgres, whose heartbeats
    /// are the database's `now()`.
    pub silence: Duration,
    /// Whether the owner's database session still exists.
    pub session: OwnerSession,
}

impl OwnerFacts {
    /// The facts about `record` at `store_now`, a time on the clock its
    /// heartbeats were written with: `silence` is `store_now -
    /// record.heartbeat_at`, or zero if the heartbeat is newer.
    pub fn observed_at(record: WorkerRecord, store_now: Timestamp, session: OwnerSession) -> Self {
        let silence = (store_now - record.heartbeat_at).max(Duration::zero());
        Self {
            record,
            silence,
            session,
        }
    }
}

/// What a store can see of an owner's database session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerSession {
    /// The backend cannot see database sessions (in-memory, SQLite), or did
    /// not look because the owner is no longer `alive` (Postgres).
    NotObservable,
    /// The owner's database session still holds its lock.
    Held,
    /// The lock a live owner holds on its own session is free: the session
    /// ended (its process crashed, its host vanished, its store was dropped).
    Released,
}

/// Whether a worker is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Liveness {
    /// Its rows must not be touched.
    Alive,
    /// Its `running` rows are orphans.
    Dead(DeathCause),
}

/// Why a worker counts as dead.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeathCause {
    /// Same host, and no process has its pid.
    ProcessGone {
        /// The host.
        host: String,
        /// The pid.
        pid: u32,
    },
    /// Same host, and the pid now belongs to a different process.
    PidReused {
        /// The host.
        host: String,
        /// The pid.
        pid: u32,
    },
    /// Another host, and its heartbeat is older than the lease.
    LeaseExpired {
        /// The host.
        host: String,
        /// The last heartbeat seen.
        last_heartbeat: Timestamp,
        /// The lease it exceeded.
        lease: Duration,
    },
    /// The worker's database session ended: the server released the lock
    /// that a live worker holds on its own connection (Postgres), so its
    /// process crashed, its host vanished, or its store was dropped.
    SessionEnded {
        /// The host.
        host: String,
        /// The pid.
        pid: u32,
    },
    /// The worker deregistered yet left rows `running`.
    Deregistered,
    /// An earlier sweep already declared the worker dead.
    DeclaredDead,
    /// The row names a worker that never registered (or no worker at all,
    /// as rows written before the fix do).
    UnknownWorker,
    /// The worker is alive, but the task's `Task<Running>` handle was
    /// dropped without a finish (a panic, a cancelled future, an early
    /// return), so the worker interrupted the row itself.
    HandleAbandoned,
}

impl fmt::Display for DeathCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeathCause::ProcessGone { host, pid } => {
                write!(f, "process {pid} on {host} is gone")
            }
            DeathCause::PidReused { host, pid } => {
                write!(f, "pid {pid} on {host} now belongs to another process")
            }
            DeathCause::LeaseExpired {
                host,
                last_heartbeat,
                lease,
            } => write!(
                f,
                "no heartbeat from {host} since {} (lease {}s)",
                UtcSeconds(*last_heartbeat),
                lease.num_seconds()
            ),
            DeathCause::SessionEnded { host, pid } => {
                write!(f, "the database session of process {pid} on {host} ended")
            }
            DeathCause::Deregistered => f.write_str("worker stopped without finishing the task"),
            DeathCause::DeclaredDead => f.write_str("worker was already declared dead"),
            DeathCause::UnknownWorker => f.write_str("row names no registered worker"),
            DeathCause::HandleAbandoned => f.write_str(
                "abandoned: the task handle was dropped without a finish \
                 (panic, cancellation or early return) while its worker ran",
            ),
        }
    }
}

/// What a storage backend asks during a recovery sweep.
pub trait LivenessJudge {
    /// Whether the owner of a `running` row is alive, from the facts the
    /// store gathered about it; `None` when the row names no registered
    /// worker.
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness;
}

/// The judge a booting worker uses: a [`LivenessPolicy`] and a process
/// probe. (The time it judges at is in the facts: each store measures an
/// owner's silence on its own clock.)
#[derive(Clone, Copy)]
pub struct PolicyJudge<'a> {
    /// The rules.
    pub policy: &'a LivenessPolicy,
    /// The local process table.
    pub probe: &'a dyn ProcessProbe,
}

impl fmt::Debug for PolicyJudge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyJudge")
            .field("policy", self.policy)
            .finish_non_exhaustive()
    }
}

impl LivenessJudge for PolicyJudge<'_> {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        match owner {
            None => Liveness::Dead(DeathCause::UnknownWorker),
            Some(facts) => self.policy.judge(facts, self.probe),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    struct FakeProcesses(Vec<(u32, &'static str)>);

    impl ProcessProbe for FakeProcesses {
        fn process_start_marker(&self, pid: u32) -> Option<String> {
            self.0
                .iter()
                .find(|(p, _)| *p == pid)
                .map(|(_, marker)| (*marker).to_owned())
        }
    }

    fn t(seconds: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000 + seconds, 0)
            .single()
            .expect("valid")
    }

    fn worker(host: &str, pid: u32, marker: &str) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new_random(),
            host: host.into(),
            pid,
            process_start_marker: marker.into(),
            started_at: t(0),
            heartbeat_at: t(0),
            state: WorkerState::Alive,
            stopped_at: None,
        }
    }

    /// `record` silent for `silence` seconds, its session as given.
    fn facts(record: &WorkerRecord, silence: i64, session: OwnerSession) -> OwnerFacts {
        OwnerFacts {
            record: record.clone(),
            silence: Duration::seconds(silence),
            session,
        }
    }

    const SESSIONS: [OwnerSession; 3] = [
        OwnerSession::NotObservable,
        OwnerSession::Held,
        OwnerSession::Released,
    ];

    #[test]
    fn stopped_and_declared_dead_workers_are_dead_whatever_else_is_known() {
        let policy = LivenessPolicy::for_host("dev");
        let probe = FakeProcesses(vec![(10, "m")]);
        for host in ["dev", "other"] {
            for session in SESSIONS {
                let mut w = worker(host, 10, "m");
                w.state = WorkerState::Stopped;
                assert_eq!(
                    policy.judge(&facts(&w, 0, session), &probe),
                    Liveness::Dead(DeathCause::Deregistered),
                    "{host} {session:?}"
                );
                w.state = WorkerState::Dead;
                assert_eq!(
                    policy.judge(&facts(&w, 0, session), &probe),
                    Liveness::Dead(DeathCause::DeclaredDead),
                    "{host} {session:?}"
                );
            }
        }
    }

    #[test]
    fn a_released_session_is_death_at_once_on_any_host() {
        let policy = LivenessPolicy::for_host("dev");
        // The process runs with its marker and the heartbeat is fresh: only
        // the session says the worker is gone.
        let probe = FakeProcesses(vec![(10, "boot:100")]);
        for host in ["dev", "other"] {
            let w = worker(host, 10, "boot:100");
            assert_eq!(
                policy.judge(&facts(&w, 0, OwnerSession::Released), &probe),
                Liveness::Dead(DeathCause::SessionEnded {
                    host: host.into(),
                    pid: 10
                }),
                "{host}"
            );
            for session in [OwnerSession::NotObservable, OwnerSession::Held] {
                assert_eq!(
                    policy.judge(&facts(&w, 0, session), &probe),
                    Liveness::Alive,
                    "{host} {session:?}"
                );
            }
        }
    }

    #[test]
    fn same_host_worker_is_judged_by_its_process_not_its_heartbeat() {
        let policy = LivenessPolicy::for_host("dev");
        let probe = FakeProcesses(vec![(10, "boot:100")]);
        for session in [OwnerSession::NotObservable, OwnerSession::Held] {
            // A fresh heartbeat does not save a killed process...
            let killed = worker("dev", 11, "boot:100");
            assert_eq!(
                policy.judge(&facts(&killed, 0, session), &probe),
                Liveness::Dead(DeathCause::ProcessGone {
                    host: "dev".into(),
                    pid: 11
                })
            );
            // ...a reused pid does not look alive...
            let reused = worker("dev", 10, "boot:50");
            assert_eq!(
                policy.judge(&facts(&reused, 0, session), &probe),
                Liveness::Dead(DeathCause::PidReused {
                    host: "dev".into(),
                    pid: 10
                })
            );
            // ...and a long silence does not kill a live process.
            let alive = worker("dev", 10, "boot:100");
            assert_eq!(
                policy.judge(&facts(&alive, 3600, session), &probe),
                Liveness::Alive
            );
        }
    }

    #[test]
    fn other_host_worker_is_dead_only_when_its_silence_exceeds_the_lease() {
        let policy = LivenessPolicy::for_host("dev");
        // The remote pid happens to exist here: it must not matter.
        let probe = FakeProcesses(vec![(10, "x")]);
        let mut remote = worker("other", 10, "x");
        remote.heartbeat_at = t(42);
        for session in [OwnerSession::NotObservable, OwnerSession::Held] {
            assert_eq!(
                policy.judge(&facts(&remote, 0, session), &probe),
                Liveness::Alive
            );
            assert_eq!(
                policy.judge(&facts(&remote, 15, session), &probe),
                Liveness::Alive,
                "a silence of exactly the lease is alive"
            );
            assert_eq!(
                policy.judge(&facts(&remote, 16, session), &probe),
                Liveness::Dead(DeathCause::LeaseExpired {
                    host: "other".into(),
                    last_heartbeat: t(42),
                    lease: LivenessPolicy::DEFAULT_LEASE,
                })
            );
        }
        let no_process = FakeProcesses(vec![]);
        assert_eq!(
            policy.judge(&facts(&remote, 1, OwnerSession::Held), &no_process),
            Liveness::Alive,
            "another host's worker is not judged by the local process table"
        );
        let short = LivenessPolicy {
            lease: Duration::seconds(2),
            ..policy
        };
        assert!(matches!(
            short.judge(&facts(&remote, 3, OwnerSession::Held), &probe),
            Liveness::Dead(DeathCause::LeaseExpired { lease, .. }) if lease == Duration::seconds(2)
        ));
    }

    #[test]
    fn silence_is_measured_on_the_stores_clock_and_never_negative() {
        let mut w = worker("other", 10, "x");
        w.heartbeat_at = t(100);
        let facts = OwnerFacts::observed_at(w.clone(), t(130), OwnerSession::NotObservable);
        assert_eq!(facts.silence, Duration::seconds(30));
        assert_eq!(facts.record, w);
        let ahead = OwnerFacts::observed_at(w, t(90), OwnerSession::Held);
        assert_eq!(ahead.silence, Duration::zero());
        assert_eq!(ahead.session, OwnerSession::Held);
    }

    #[test]
    fn the_policy_judge_calls_a_row_without_a_worker_unknown_and_asks_the_policy_otherwise() {
        let policy = LivenessPolicy::for_host("dev");
        let probe = FakeProcesses(vec![(10, "m")]);
        let judge = PolicyJudge {
            policy: &policy,
            probe: &probe,
        };
        assert_eq!(
            LivenessJudge::judge(&judge, None),
            Liveness::Dead(DeathCause::UnknownWorker)
        );
        let alive = facts(&worker("dev", 10, "m"), 0, OwnerSession::Held);
        assert_eq!(LivenessJudge::judge(&judge, Some(&alive)), Liveness::Alive);
        let gone = facts(&worker("dev", 11, "m"), 0, OwnerSession::Held);
        assert!(matches!(
            LivenessJudge::judge(&judge, Some(&gone)),
            Liveness::Dead(DeathCause::ProcessGone { .. })
        ));
    }
}
