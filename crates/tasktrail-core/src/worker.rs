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
    /// How old a heartbeat may be before its worker counts as dead. The
    /// default is [`LivenessPolicy::DEFAULT_LEASE`]: three heartbeat
    /// intervals.
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

    /// Decides whether `worker` is alive at `now`.
    ///
    /// - A worker that stopped cleanly or was declared dead is dead.
    /// - A worker on this host is alive exactly when a process with its pid
    ///   exists *and* has the start marker it registered (a reused pid does
    ///   not count). No timeout is involved.
    /// - A worker on another host is alive while its heartbeat is younger
    ///   than the lease.
    pub fn judge(
        &self,
        worker: &WorkerRecord,
        now: Timestamp,
        probe: &dyn ProcessProbe,
    ) -> Liveness {
        match worker.state {
            WorkerState::Stopped => return Liveness::Dead(DeathCause::Deregistered),
            WorkerState::Dead => return Liveness::Dead(DeathCause::DeclaredDead),
            WorkerState::Alive => {}
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
        let silence = now - worker.heartbeat_at;
        if silence > self.lease {
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
    /// Whether the owner of a `running` row is alive; `None` when the row
    /// names no registered worker.
    fn judge(&self, worker: Option<&WorkerRecord>) -> Liveness;
}

/// The judge a booting worker uses: a [`LivenessPolicy`], a process probe
/// and the sweep's time.
#[derive(Clone, Copy)]
pub struct PolicyJudge<'a> {
    /// The rules.
    pub policy: &'a LivenessPolicy,
    /// The local process table.
    pub probe: &'a dyn ProcessProbe,
    /// The time of the sweep.
    pub now: Timestamp,
}

impl fmt::Debug for PolicyJudge<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyJudge")
            .field("policy", self.policy)
            .field("now", &self.now)
            .finish_non_exhaustive()
    }
}

impl LivenessJudge for PolicyJudge<'_> {
    fn judge(&self, worker: Option<&WorkerRecord>) -> Liveness {
        match worker {
            None => Liveness::Dead(DeathCause::UnknownWorker),
            Some(worker) => self.policy.judge(worker, self.now, self.probe),
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

    fn worker(host: &str, pid: u32, marker: &str, heartbeat_at: Timestamp) -> WorkerRecord {
        WorkerRecord {
            id: WorkerId::new_random(),
            host: host.into(),
            pid,
            process_start_marker: marker.into(),
            started_at: heartbeat_at,
            heartbeat_at,
            state: WorkerState::Alive,
            stopped_at: None,
        }
    }

    fn t(seconds: i64) -> Timestamp {
        chrono::Utc
            .timestamp_opt(1_700_000_000 + seconds, 0)
            .single()
            .expect("valid")
    }

    #[test]
    fn same_host_worker_is_judged_by_its_process_not_its_heartbeat() {
        let policy = LivenessPolicy::for_host("dev");
        let probe = FakeProcesses(vec![(10, "boot:100")]);
        // A fresh heartbeat does not save a killed process...
        let killed = worker("dev", 11, "boot:100", t(0));
        assert!(matches!(
            policy.judge(&killed, t(1), &probe),
            Liveness::Dead(DeathCause::ProcessGone { .. })
        ));
        // ...a reused pid does not look alive...
        let reused = worker("dev", 10, "boot:50", t(0));
        assert!(matches!(
            policy.judge(&reused, t(1), &probe),
            Liveness::Dead(DeathCause::PidReused { .. })
        ));
        // ...and an old heartbeat does not kill a live process.
        let alive = worker("dev", 10, "boot:100", t(0));
        assert_eq!(policy.judge(&alive, t(3600), &probe), Liveness::Alive);
    }

    #[test]
    fn other_host_worker_is_dead_only_after_the_lease() {
        let policy = LivenessPolicy::for_host("dev");
        let probe = FakeProcesses(vec![]);
        let remote = worker("other", 10, "x", t(0));
        assert_eq!(policy.judge(&remote, t(15), &probe), Liveness::Alive);
        assert!(matches!(
            policy.judge(&remote, t(16), &probe),
            Liveness::Dead(DeathCause::LeaseExpired { .. })
        ));
    }

    #[test]
    fn stopped_and_declared_dead_workers_are_dead() {
        let policy = LivenessPolicy::for_host("dev");
        let probe = FakeProcesses(vec![(10, "m")]);
        let mut w = worker("dev", 10, "m", t(0));
        w.state = WorkerState::Stopped;
        assert_eq!(
            policy.judge(&w, t(0), &probe),
            Liveness::Dead(DeathCause::Deregistered)
        );
        w.state = WorkerState::Dead;
        assert_eq!(
            policy.judge(&w, t(0), &probe),
            Liveness::Dead(DeathCause::DeclaredDead)
        );
    }
}
