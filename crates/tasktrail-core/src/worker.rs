//! Workers, and how a booting worker decides that another one is dead.

use std::fmt;
use std::sync::{Mutex, PoisonError};

use chrono::Duration;

use crate::clock::{Timestamp, UtcSeconds};
use crate::ids::WorkerId;

/// Where a process lives, as far as its pid means anything: the kernel's
/// boot (`/proc/sys/kernel/random/boot_id`) and the PID namespace (the inode
/// of `/proc/self/ns/pid`). A pid names one process only within one boot and
/// one PID namespace; a host name names nothing (cloned VMs and containers
/// share names), so it is never part of an identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostIdentity {
    /// The kernel's boot id.
    pub boot_id: String,
    /// The inode number of the PID namespace.
    pub pid_namespace: u64,
}

/// What a worker writes about itself when it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRegistration {
    /// A fresh id for this boot.
    pub id: WorkerId,
    /// The host name the worker runs on: for people to read, never for
    /// deciding anything.
    pub host: String,
    /// The worker's process id in its PID namespace.
    pub pid: u32,
    /// An opaque marker of when the process started (on Linux: the boot id
    /// and the process start time in clock ticks). A pid reused by another
    /// process has a different marker.
    pub process_start_marker: String,
    /// The boot and PID namespace the pid belongs to, when the process could
    /// tell (`None`: a pid probe never applies to this worker).
    pub host_identity: Option<HostIdentity>,
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
    /// Its host name (for people).
    pub host: String,
    /// Its pid in its PID namespace.
    pub pid: u32,
    /// See [`WorkerRegistration::process_start_marker`].
    pub process_start_marker: String,
    /// See [`WorkerRegistration::host_identity`]; `None` for registrations
    /// written before it was recorded.
    pub host_identity: Option<HostIdentity>,
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
///
/// Death is proven, never guessed: a worker holds, for its whole life, a
/// lock that only the kernel or the database releases when its process is
/// gone (an advisory lock of its Postgres session, an `flock` on a file
/// beside the SQLite database). A held lock means alive; a free lock means
/// dead once the worker has been silent longer than [`grace`](Self::grace)
/// and the judge has been able to watch the lock for that long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LivenessPolicy {
    /// The boot and PID namespace whose pids the judge's `/proc` shows, when
    /// it is sure of them. Only owners registered with exactly this identity
    /// may be judged by the process probe; `None`: never probe.
    pub local_identity: Option<HostIdentity>,
    /// How long an owner whose lock cannot be checked
    /// ([`OwnerLock::NotCheckable`]) may stay silent (its
    /// [`OwnerFacts::silence`], on the store's clock) before it counts as
    /// dead; also how long an owner holding its lock may stay silent before
    /// it is reported [`Liveness::Stalled`]. Default
    /// [`LivenessPolicy::DEFAULT_LEASE`].
    pub lease: Duration,
    /// How long a live worker may need to take its lock back after its
    /// connection dropped (a few heartbeat intervals): a free lock proves
    /// death only once the owner has been silent longer than this, and the
    /// judge has watched the lock for longer than this. Default
    /// [`LivenessPolicy::DEFAULT_GRACE`].
    pub grace: Duration,
}

impl LivenessPolicy {
    /// How often a worker heartbeats by default.
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::seconds(5);
    /// The default lease: three missed heartbeats.
    pub const DEFAULT_LEASE: Duration = Duration::seconds(15);
    /// The default grace: three heartbeat intervals.
    pub const DEFAULT_GRACE: Duration = Duration::seconds(15);

    /// A policy for a judge whose `/proc` shows the pids of `local_identity`
    /// (`None`: it never probes), with the default lease and grace.
    pub fn new(local_identity: Option<HostIdentity>) -> Self {
        Self {
            local_identity,
            lease: Self::DEFAULT_LEASE,
            grace: Self::DEFAULT_GRACE,
        }
    }

    /// Whether the process probe may be asked about `worker`: it was
    /// registered in the judge's own boot and PID namespace.
    pub fn probe_applies_to(&self, worker: &WorkerRecord) -> bool {
        match (&self.local_identity, &worker.host_identity) {
            (Some(local), Some(owner)) => {
                local.boot_id == owner.boot_id && local.pid_namespace == owner.pid_namespace
            }
            _ => false,
        }
    }

    /// Decides whether the owner that `facts` describes is alive. Every
    /// verdict of a recovery sweep is made here, whatever the backend; the
    /// backend only gathers the facts. In this order:
    ///
    /// 1. A worker that stopped cleanly ([`DeathCause::Deregistered`]) or was
    ///    declared dead ([`DeathCause::DeclaredDead`]) is dead.
    /// 2. A worker holding its lock ([`OwnerLock::Held`]) is alive, however
    ///    long it has been silent: past the lease it is
    ///    [`Liveness::Stalled`] (hung or stopped), never dead.
    /// 3. A worker registered in the judge's own boot and PID namespace
    ///    ([`probe_applies_to`](Self::probe_applies_to)) is judged by its
    ///    process at once: gone ([`DeathCause::ProcessGone`]), reused pid
    ///    ([`DeathCause::PidReused`]), or alive.
    /// 4. A free lock ([`OwnerLock::Free`]) proves death
    ///    ([`DeathCause::LockReleased`]) once the owner has been silent
    ///    longer than the grace *and* the judge has watched the lock longer
    ///    than the grace; before that the verdict is
    ///    [`Liveness::NotYetProvable`] and the rows are left alone.
    /// 5. A lock that cannot be checked ([`OwnerLock::NotCheckable`]:
    ///    registrations older than the locks) falls back to the lease
    ///    ([`DeathCause::LeaseExpired`]).
    pub fn judge(&self, facts: &OwnerFacts, probe: &dyn ProcessProbe) -> Liveness {
        let worker = &facts.record;
        match worker.state {
            WorkerState::Stopped => return Liveness::Dead(DeathCause::Deregistered),
            WorkerState::Dead => return Liveness::Dead(DeathCause::DeclaredDead),
            WorkerState::Alive => {}
        }
        if facts.lock == OwnerLock::Held {
            return if facts.silence > self.lease {
                Liveness::Stalled {
                    silence: facts.silence,
                }
            } else {
                Liveness::Alive
            };
        }
        if self.probe_applies_to(worker) {
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
        match facts.lock {
            OwnerLock::Held => Liveness::Alive,
            OwnerLock::Free { watched_for } => {
                let watched_long_enough = match watched_for {
                    LockWatch::Continuous => true,
                    LockWatch::For(watched) => watched > self.grace,
                };
                if !watched_long_enough {
                    Liveness::NotYetProvable(Unproven::JudgeWatchedTooBriefly)
                } else if facts.silence <= self.grace {
                    Liveness::NotYetProvable(Unproven::WithinGrace)
                } else {
                    Liveness::Dead(DeathCause::LockReleased {
                        host: worker.host.clone(),
                        pid: worker.pid,
                        last_heartbeat: worker.heartbeat_at,
                    })
                }
            }
            OwnerLock::NotCheckable => {
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
    /// The state of the lock only a living owner holds.
    pub lock: OwnerLock,
}

impl OwnerFacts {
    /// The facts about `record` at `store_now`, a time on the clock its
    /// heartbeats were written with: `silence` is `store_now -
    /// record.heartbeat_at`, or zero if the heartbeat is newer.
    pub fn observed_at(record: WorkerRecord, store_now: Timestamp, lock: OwnerLock) -> Self {
        let silence = (store_now - record.heartbeat_at).max(Duration::zero());
        Self {
            record,
            silence,
            lock,
        }
    }
}

/// What a store sees of the lock a living owner holds for its whole life
/// (the session advisory lock on Postgres, an `flock` on its lock file
/// beside a SQLite database). The judge tests it without taking it for
/// longer than the test, so it never stands in the way of the owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OwnerLock {
    /// Held: the owner's process (and, on Postgres, its session) exists.
    Held,
    /// Free: the kernel or the database released it, or the owner has not
    /// taken it back yet after its connection dropped.
    Free {
        /// How long the judge has been able to see the owner take it back.
        watched_for: LockWatch,
    },
    /// No lock can be checked for this owner: registered before locks were
    /// recorded, its lock file is missing, or the owner is not `alive` (the
    /// store did not look).
    NotCheckable,
}

/// How long a judge has been able to see a free lock being taken back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWatch {
    /// For as long as the lock exists: a kernel lock on a file outlives no
    /// process and needs no connection to observe.
    Continuous,
    /// For this long, on the store's clock: on Postgres the younger of the
    /// database's uptime and the judge's own connection (after a restart, a
    /// failover or a reconnect, every lock is free until its owner reconnects).
    For(Duration),
}

/// Whether a worker is alive.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Liveness {
    /// Its rows must not be touched.
    Alive,
    /// It holds its lock but has been silent longer than the lease: hung or
    /// stopped (SIGSTOP, a debugger, a frozen VM). Alive: its rows are never
    /// touched; reported so an operator can look.
    Stalled {
        /// How long it has been silent, on the store's clock.
        silence: Duration,
    },
    /// Its lock is free, but that does not prove death yet; its rows are
    /// left alone.
    NotYetProvable(Unproven),
    /// Its `running` rows are orphans.
    Dead(DeathCause),
}

impl Liveness {
    /// Whether the owner's rows may be interrupted.
    pub fn is_dead(&self) -> bool {
        matches!(self, Liveness::Dead(_))
    }
}

/// Why a free lock does not prove death yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Unproven {
    /// The owner's last heartbeat is younger than the grace: it may be
    /// taking its lock back after a dropped connection.
    WithinGrace,
    /// The judge has not watched the lock for a whole grace (it or the
    /// database just (re)started): every lock looks free until its owner
    /// reconnects.
    JudgeWatchedTooBriefly,
}

impl fmt::Display for Unproven {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Unproven::WithinGrace => {
                "its lock is free but its last heartbeat is younger than the grace"
            }
            Unproven::JudgeWatchedTooBriefly => {
                "its lock is free but this judge (or the database) connected less than a grace ago"
            }
        })
    }
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
    /// The lock the worker held for its whole life is free (the kernel or
    /// the database released it: its process is gone, or its database
    /// session ended), and stayed free past the grace.
    LockReleased {
        /// The host name.
        host: String,
        /// The pid.
        pid: u32,
        /// The last heartbeat seen.
        last_heartbeat: Timestamp,
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

impl DeathCause {
    /// The cause as one stable snake_case word, for metric labels, log
    /// fields and stored reports: `process_gone`, `pid_reused`,
    /// `lease_expired`, `lock_released`, `deregistered`, `declared_dead`,
    /// `unknown_worker`, `handle_abandoned`.
    pub fn kind(&self) -> &'static str {
        match self {
            DeathCause::ProcessGone { .. } => "process_gone",
            DeathCause::PidReused { .. } => "pid_reused",
            DeathCause::LeaseExpired { .. } => "lease_expired",
            DeathCause::LockReleased { .. } => "lock_released",
            DeathCause::Deregistered => "deregistered",
            DeathCause::DeclaredDead => "declared_dead",
            DeathCause::UnknownWorker => "unknown_worker",
            DeathCause::HandleAbandoned => "handle_abandoned",
        }
    }
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
            DeathCause::LockReleased {
                host,
                pid,
                last_heartbeat,
            } => write!(
                f,
                "the liveness lock of process {pid} on {host} is free and it has been silent since {}",
                UtcSeconds(*last_heartbeat)
            ),
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

/// An owner a sweep left alone for a reason an operator should hear about:
/// it is [`Liveness::Stalled`], or its lock is free but its death is
/// [`Liveness::NotYetProvable`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoticedOwner {
    /// The owner's row.
    pub record: WorkerRecord,
    /// Its silence on the store's clock.
    pub silence: Duration,
    /// The verdict.
    pub verdict: Liveness,
}

/// A [`PolicyJudge`] that also remembers the owners it left alone for a
/// reason worth reporting ([`NoticedOwner`]).
pub struct NoticingJudge<'a> {
    judge: PolicyJudge<'a>,
    noticed: Mutex<Vec<NoticedOwner>>,
}

impl fmt::Debug for NoticingJudge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NoticingJudge")
            .field("judge", &self.judge)
            .finish_non_exhaustive()
    }
}

impl<'a> NoticingJudge<'a> {
    /// Wraps `judge`.
    pub fn new(judge: PolicyJudge<'a>) -> Self {
        Self {
            judge,
            noticed: Mutex::new(Vec::new()),
        }
    }

    /// The owners it noticed, in the order it judged them.
    pub fn into_noticed(self) -> Vec<NoticedOwner> {
        self.noticed
            .into_inner()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl LivenessJudge for NoticingJudge<'_> {
    fn judge(&self, owner: Option<&OwnerFacts>) -> Liveness {
        let verdict = self.judge.judge(owner);
        if let (Some(facts), Liveness::Stalled { .. } | Liveness::NotYetProvable(_)) =
            (owner, &verdict)
        {
            self.noticed
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(NoticedOwner {
                    record: facts.record.clone(),
                    silence: facts.silence,
                    verdict: verdict.clone(),
                });
        }
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn every_death_cause_has_its_documented_kind() {
        let at = chrono::Utc
            .with_ymd_and_hms(2026, 5, 11, 14, 0, 0)
            .single()
            .expect("time");
        let host = || "vm-1".to_owned();
        for (cause, kind) in [
            (
                DeathCause::ProcessGone {
                    host: host(),
                    pid: 7,
                },
                "process_gone",
            ),
            (
                DeathCause::PidReused {
                    host: host(),
                    pid: 7,
                },
                "pid_reused",
            ),
            (
                DeathCause::LeaseExpired {
                    host: host(),
                    last_heartbeat: at,
                    lease: Duration::seconds(60),
                },
                "lease_expired",
            ),
            (
                DeathCause::LockReleased {
                    host: host(),
                    pid: 7,
                    last_heartbeat: at,
                },
                "lock_released",
            ),
            (DeathCause::Deregistered, "deregistered"),
            (DeathCause::DeclaredDead, "declared_dead"),
            (DeathCause::UnknownWorker, "unknown_worker"),
            (DeathCause::HandleAbandoned, "handle_abandoned"),
        ] {
            assert_eq!(cause.kind(), kind, "{cause:?}");
        }
    }

    #[test]
    fn each_unproven_reason_says_why_in_words() {
        let within_grace = Unproven::WithinGrace.to_string();
        let too_briefly = Unproven::JudgeWatchedTooBriefly.to_string();
        assert!(
            within_grace.contains("younger than the grace"),
            "{within_grace}"
        );
        assert!(
            too_briefly.contains("connected less than a grace ago"),
            "{too_briefly}"
        );
    }

    #[test]
    fn the_judges_debug_output_names_them_and_their_policy() {
        let policy = policy();
        let probe = FakeProcesses(vec![]);
        let judge = PolicyJudge {
            policy: &policy,
            probe: &probe,
        };
        let shown = format!("{judge:?}");
        assert!(shown.starts_with("PolicyJudge {"), "{shown}");
        assert!(shown.contains("policy: LivenessPolicy"), "{shown}");
        let noticing = format!("{:?}", NoticingJudge::new(judge));
        assert!(noticing.starts_with("NoticingJudge {"), "{noticing}");
        assert!(noticing.contains("judge: PolicyJudge"), "{noticing}");
    }

    #[test]
    fn every_worker_state_round_trips_through_its_column_value() {
        for (state, column) in [
            (WorkerState::Alive, "alive"),
            (WorkerState::Stopped, "stopped"),
            (WorkerState::Dead, "dead"),
        ] {
            assert_eq!(state.as_str(), column);
            assert_eq!(WorkerState::from_column(column), Some(state));
        }
        assert_eq!(WorkerState::from_column("Alive"), None);
        assert_eq!(WorkerState::from_column(""), None);
    }

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

    fn identity(boot: &str, pid_namespace: u64) -> HostIdentity {
        HostIdentity {
            boot_id: boot.into(),
            pid_namespace,
        }
    }

    /// The judge's own boot and PID namespace.
    fn here() -> HostIdentity {
        identity("boot-a", 4_026_531_836)
    }

    fn policy() -> LivenessPolicy {
        LivenessPolicy::new(Some(here()))
    }

    fn worker(identity: Option<HostIdentity>, pid: u32, marker: &str) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new_random(),
            host: "dev".into(),
            pid,
            process_start_marker: marker.into(),
            host_identity: identity,
            started_at: t(0),
            heartbeat_at: t(0),
            state: WorkerState::Alive,
            stopped_at: None,
        }
    }

    /// `record` silent for `silence` seconds, its lock as given.
    fn facts(record: &WorkerRecord, silence: i64, lock: OwnerLock) -> OwnerFacts {
        OwnerFacts {
            record: record.clone(),
            silence: Duration::seconds(silence),
            lock,
        }
    }

    fn free_for(seconds: i64) -> OwnerLock {
        OwnerLock::Free {
            watched_for: LockWatch::For(Duration::seconds(seconds)),
        }
    }

    const FREE_FOREVER: OwnerLock = OwnerLock::Free {
        watched_for: LockWatch::Continuous,
    };

    fn all_locks() -> [OwnerLock; 4] {
        [
            OwnerLock::Held,
            FREE_FOREVER,
            free_for(1),
            OwnerLock::NotCheckable,
        ]
    }

    /// Owners that share the judge's host name but not its boot or PID
    /// namespace (look-alike hosts, containers), and one with no identity.
    fn foreign_identities() -> [Option<HostIdentity>; 4] {
        [
            Some(identity("boot-b", here().pid_namespace)),
            Some(identity("boot-a", 4_026_532_178)),
            Some(identity("boot-b", 4_026_532_178)),
            None,
        ]
    }

    #[test]
    fn stopped_and_declared_dead_workers_are_dead_whatever_else_is_known() {
        let probe = FakeProcesses(vec![(10, "m")]);
        for owner in [Some(here()), None] {
            for lock in all_locks() {
                let mut w = worker(owner.clone(), 10, "m");
                w.state = WorkerState::Stopped;
                assert_eq!(
                    policy().judge(&facts(&w, 0, lock), &probe),
                    Liveness::Dead(DeathCause::Deregistered),
                    "{lock:?}"
                );
                w.state = WorkerState::Dead;
                assert_eq!(
                    policy().judge(&facts(&w, 0, lock), &probe),
                    Liveness::Dead(DeathCause::DeclaredDead),
                    "{lock:?}"
                );
            }
        }
    }

    #[test]
    fn a_held_lock_is_alive_even_when_the_probe_and_the_silence_say_otherwise() {
        // Same boot and namespace, process gone or pid reused: the lock wins.
        let no_process = FakeProcesses(vec![]);
        let reused = FakeProcesses(vec![(10, "other")]);
        for probe in [&no_process, &reused] {
            let w = worker(Some(here()), 10, "m");
            assert_eq!(
                policy().judge(&facts(&w, 0, OwnerLock::Held), probe),
                Liveness::Alive
            );
        }
        // Silent exactly the lease: alive; longer: stalled, never dead.
        let w = worker(None, 10, "m");
        assert_eq!(
            policy().judge(&facts(&w, 15, OwnerLock::Held), &no_process),
            Liveness::Alive
        );
        assert_eq!(
            policy().judge(&facts(&w, 16, OwnerLock::Held), &no_process),
            Liveness::Stalled {
                silence: Duration::seconds(16)
            }
        );
        assert_eq!(
            policy().judge(&facts(&w, 100_000, OwnerLock::Held), &no_process),
            Liveness::Stalled {
                silence: Duration::seconds(100_000)
            }
        );
    }

    #[test]
    fn the_probe_decides_at_once_only_in_the_judges_own_boot_and_pid_namespace() {
        let probe = FakeProcesses(vec![(10, "boot:100")]);
        for lock in [FREE_FOREVER, free_for(0), OwnerLock::NotCheckable] {
            // A fresh heartbeat does not save a killed process...
            let killed = worker(Some(here()), 11, "boot:100");
            assert_eq!(
                policy().judge(&facts(&killed, 0, lock), &probe),
                Liveness::Dead(DeathCause::ProcessGone {
                    host: "dev".into(),
                    pid: 11
                }),
                "{lock:?}"
            );
            // ...a reused pid does not look alive...
            let reused = worker(Some(here()), 10, "boot:50");
            assert_eq!(
                policy().judge(&facts(&reused, 0, lock), &probe),
                Liveness::Dead(DeathCause::PidReused {
                    host: "dev".into(),
                    pid: 10
                }),
                "{lock:?}"
            );
            // ...and a long silence does not kill a live process.
            let alive = worker(Some(here()), 10, "boot:100");
            assert_eq!(
                policy().judge(&facts(&alive, 3600, lock), &probe),
                Liveness::Alive,
                "{lock:?}"
            );
            // Anywhere else the local process table means nothing: pid 11
            // is not running here, yet a fresh owner is not dead.
            for owner in foreign_identities() {
                let elsewhere = worker(owner.clone(), 11, "boot:100");
                assert!(
                    !policy()
                        .judge(&facts(&elsewhere, 0, lock), &probe)
                        .is_dead(),
                    "{owner:?} {lock:?}"
                );
            }
        }
        // A judge unsure of its own /proc never probes.
        let unsure = LivenessPolicy::new(None);
        let killed = worker(Some(here()), 11, "boot:100");
        assert!(!unsure
            .judge(&facts(&killed, 0, OwnerLock::NotCheckable), &probe)
            .is_dead());
    }

    #[test]
    fn a_free_lock_proves_death_only_past_the_grace_and_once_the_judge_watched_a_grace() {
        let probe = FakeProcesses(vec![]);
        for owner in foreign_identities() {
            let mut w = worker(owner.clone(), 10, "m");
            w.heartbeat_at = t(42);
            let dead = Liveness::Dead(DeathCause::LockReleased {
                host: "dev".into(),
                pid: 10,
                last_heartbeat: t(42),
            });
            assert_eq!(
                policy().judge(&facts(&w, 15, FREE_FOREVER), &probe),
                Liveness::NotYetProvable(Unproven::WithinGrace),
                "a silence of exactly the grace is not proof"
            );
            assert_eq!(policy().judge(&facts(&w, 16, FREE_FOREVER), &probe), dead);
            assert_eq!(policy().judge(&facts(&w, 16, free_for(16)), &probe), dead);
            assert_eq!(
                policy().judge(&facts(&w, 3600, free_for(15)), &probe),
                Liveness::NotYetProvable(Unproven::JudgeWatchedTooBriefly),
                "a judge that watched exactly the grace waits"
            );
            assert_eq!(
                policy().judge(&facts(&w, 3600, free_for(0)), &probe),
                Liveness::NotYetProvable(Unproven::JudgeWatchedTooBriefly)
            );
        }
        let short = LivenessPolicy {
            grace: Duration::seconds(2),
            ..policy()
        };
        let w = worker(None, 10, "m");
        assert!(short.judge(&facts(&w, 3, free_for(3)), &probe).is_dead());
        assert!(!short.judge(&facts(&w, 2, free_for(3)), &probe).is_dead());
    }

    #[test]
    fn an_uncheckable_lock_falls_back_to_the_lease_on_the_stores_clock() {
        let probe = FakeProcesses(vec![(10, "x")]);
        for owner in foreign_identities() {
            let mut remote = worker(owner, 10, "x");
            remote.heartbeat_at = t(42);
            assert_eq!(
                policy().judge(&facts(&remote, 0, OwnerLock::NotCheckable), &probe),
                Liveness::Alive
            );
            assert_eq!(
                policy().judge(&facts(&remote, 15, OwnerLock::NotCheckable), &probe),
                Liveness::Alive,
                "a silence of exactly the lease is alive"
            );
            assert_eq!(
                policy().judge(&facts(&remote, 16, OwnerLock::NotCheckable), &probe),
                Liveness::Dead(DeathCause::LeaseExpired {
                    host: "dev".into(),
                    last_heartbeat: t(42),
                    lease: LivenessPolicy::DEFAULT_LEASE,
                })
            );
        }
        let short = LivenessPolicy {
            lease: Duration::seconds(2),
            ..policy()
        };
        let remote = worker(None, 10, "x");
        assert!(matches!(
            short.judge(&facts(&remote, 3, OwnerLock::NotCheckable), &probe),
            Liveness::Dead(DeathCause::LeaseExpired { lease, .. }) if lease == Duration::seconds(2)
        ));
    }

    #[test]
    fn the_probe_needs_both_the_boot_id_and_the_pid_namespace() {
        let p = policy();
        assert!(p.probe_applies_to(&worker(Some(here()), 1, "m")));
        for owner in foreign_identities() {
            assert!(
                !p.probe_applies_to(&worker(owner.clone(), 1, "m")),
                "{owner:?}"
            );
        }
        assert!(!LivenessPolicy::new(None).probe_applies_to(&worker(Some(here()), 1, "m")));
    }

    #[test]
    fn silence_is_measured_on_the_stores_clock_and_never_negative() {
        let mut w = worker(None, 10, "x");
        w.heartbeat_at = t(100);
        let facts = OwnerFacts::observed_at(w.clone(), t(130), OwnerLock::NotCheckable);
        assert_eq!(facts.silence, Duration::seconds(30));
        assert_eq!(facts.record, w);
        let ahead = OwnerFacts::observed_at(w, t(90), OwnerLock::Held);
        assert_eq!(ahead.silence, Duration::zero());
        assert_eq!(ahead.lock, OwnerLock::Held);
    }

    #[test]
    fn the_policy_judge_calls_a_row_without_a_worker_unknown_and_asks_the_policy_otherwise() {
        let policy = policy();
        let probe = FakeProcesses(vec![(10, "m")]);
        let judge = PolicyJudge {
            policy: &policy,
            probe: &probe,
        };
        assert_eq!(
            LivenessJudge::judge(&judge, None),
            Liveness::Dead(DeathCause::UnknownWorker)
        );
        let alive = facts(&worker(Some(here()), 10, "m"), 0, OwnerLock::Held);
        assert_eq!(LivenessJudge::judge(&judge, Some(&alive)), Liveness::Alive);
        let gone = facts(&worker(Some(here()), 11, "m"), 0, FREE_FOREVER);
        assert!(matches!(
            LivenessJudge::judge(&judge, Some(&gone)),
            Liveness::Dead(DeathCause::ProcessGone { .. })
        ));
    }

    #[test]
    fn the_noticing_judge_remembers_stalled_and_unproven_owners_only() {
        let policy = policy();
        let probe = FakeProcesses(vec![]);
        let judge = NoticingJudge::new(PolicyJudge {
            policy: &policy,
            probe: &probe,
        });
        let stalled = facts(&worker(None, 1, "m"), 60, OwnerLock::Held);
        let unproven = facts(&worker(None, 2, "m"), 1, FREE_FOREVER);
        let alive = facts(&worker(None, 3, "m"), 1, OwnerLock::Held);
        let dead = facts(&worker(None, 4, "m"), 60, FREE_FOREVER);
        for owner in [&stalled, &unproven, &alive, &dead] {
            LivenessJudge::judge(&judge, Some(owner));
        }
        LivenessJudge::judge(&judge, None);
        let noticed = judge.into_noticed();
        assert_eq!(
            noticed.iter().map(|n| n.record.pid).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert_eq!(
            noticed[0].verdict,
            Liveness::Stalled {
                silence: Duration::seconds(60)
            }
        );
        assert_eq!(
            noticed[1].verdict,
            Liveness::NotYetProvable(Unproven::WithinGrace)
        );
    }
}
