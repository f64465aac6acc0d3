//! The worker's side of liveness on Linux: who this process is, and whether
//! the process that registered a pid is still the one running under it.

use std::fs;

use std::os::unix::fs::MetadataExt;

use tasktrail_core::{Clock, HostIdentity, ProcessProbe, WorkerId, WorkerRegistration};

/// The local host could not describe this process.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    /// `/proc/self/stat` could not be read or parsed.
    #[error("cannot read this process's start time from /proc: {detail}")]
    ProcessStartUnknown {
        /// What went wrong.
        detail: String,
    },
}

/// Reads `/proc`: a process's start marker is `<boot id>:<start ticks>`, the
/// kernel's boot id and field 22 of `/proc/<pid>/stat`. A pid reused by a new
/// process, or any pid after a reboot, gets a different marker.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcfsProbe;

impl ProcessProbe for ProcfsProbe {
    fn process_start_marker(&self, pid: u32) -> Option<String> {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let (state, start_ticks) = parse_stat(&stat)?;
        // A zombie has exited; only its exit status is left to collect.
        if state == 'Z' || state == 'X' {
            return None;
        }
        Some(format!("{}:{start_ticks}", boot_id()))
    }
}

/// The state letter (field 3) and start time in ticks (field 22) of a
/// `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and
/// may itself hold spaces and parentheses, so fields are counted after the
/// last `)`.
fn parse_stat(stat: &str) -> Option<(char, u64)> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    // After the state (field 3) come fields 4..; start time is field 22.
    let start_ticks = fields.nth(22 - 4)?.parse().ok()?;
    Some((state, start_ticks))
}

fn boot_id() -> String {
    read_boot_id().unwrap_or_else(|| "unknown-boot".to_owned())
}

fn read_boot_id() -> Option<String> {
    fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .ok()
        .map(|id| id.trim().to_owned())
        .filter(|id| !id.is_empty())
}

/// The inode of a `/proc/<who>/ns/pid` link's target: the PID namespace.
fn pid_namespace_of(who: &str) -> Option<u64> {
    fs::metadata(format!("/proc/{who}/ns/pid"))
        .ok()
        .map(|metadata| metadata.ino())
}

/// This process's boot and PID namespace (`/proc/sys/kernel/random/boot_id`
/// and the inode of `/proc/self/ns/pid`), or `None` when `/proc` cannot
/// say: a worker registered without it is never judged by a pid probe.
pub fn current_host_identity() -> Option<HostIdentity> {
    Some(HostIdentity {
        boot_id: read_boot_id()?,
        pid_namespace: pid_namespace_of("self")?,
    })
}

/// The boot and PID namespace whose processes this process's `/proc` shows,
/// when that is provably its own: the identity a judge may probe pids in
/// ([`tasktrail_core::LivenessPolicy::local_identity`]). `None` when `/proc`
/// belongs to another PID namespace (a container that shares the host's
/// `/proc`, `unshare --pid` without `--mount-proc`): `/proc/self` must name
/// this process's own pid, and `/proc/1`, where readable, must live in this
/// process's namespace.
pub fn probe_identity() -> Option<HostIdentity> {
    let identity = current_host_identity()?;
    let self_link = fs::read_link("/proc/self").ok()?;
    let pid_seen_by_proc: u32 = self_link.to_str()?.parse().ok()?;
    if pid_seen_by_proc != std::process::id() {
        return None;
    }
    // pid 1 of the namespace `/proc` was mounted for lives in that
    // namespace; unreadable without privileges, then the pid check decides.
    if let Some(init_namespace) = pid_namespace_of("1") {
        if init_namespace != identity.pid_namespace {
            return None;
        }
    }
    Some(identity)
}

/// This machine's host name (`/proc/sys/kernel/hostname`, then `$HOSTNAME`,
/// then `localhost`).
pub fn local_host_name() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|name| name.trim().to_owned())
        .filter(|name| !name.is_empty())
        .or_else(|| {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|name| !name.is_empty())
        })
        .unwrap_or_else(|| "localhost".to_owned())
}

/// A registration for this process under a fresh worker id.
pub fn current_registration(clock: &dyn Clock) -> Result<WorkerRegistration, HostError> {
    let pid = std::process::id();
    let process_start_marker =
        ProcfsProbe
            .process_start_marker(pid)
            .ok_or_else(|| HostError::ProcessStartUnknown {
                detail: format!("/proc/{pid}/stat is missing or unreadable"),
            })?;
    Ok(WorkerRegistration {
        id: WorkerId::new_random(),
        host: local_host_name(),
        pid,
        process_start_marker,
        host_identity: current_host_identity(),
        started_at: clock.now(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn parses_a_stat_line_whose_command_holds_parentheses_and_spaces() {
        let mut line = String::from("123 (a (weird) name) S");
        for field in 4..=21 {
            line.push_str(&format!(" {field}"));
        }
        line.push_str(" 987654 rest of line");
        assert_eq!(parse_stat(&line), Some(('S', 987_654)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_has_a_stable_marker() {
        let pid = std::process::id();
        let first = ProcfsProbe.process_start_marker(pid).expect("own marker");
        assert_eq!(ProcfsProbe.process_start_marker(pid), Some(first.clone()));
        assert_ne!(ProcfsProbe.process_start_marker(1), Some(first));
    }

    #[test]
    fn an_exited_and_reaped_child_has_no_marker() {
        let mut child = Command::new("true").spawn().expect("spawn");
        let pid = child.id();
        child.wait().expect("wait");
        assert_eq!(ProcfsProbe.process_start_marker(pid), None);
    }

    #[test]
    fn a_killed_child_is_gone_once_reaped_and_looks_dead_as_a_zombie() {
        let mut child = Command::new("sleep").arg("30").spawn().expect("spawn");
        let pid = child.id();
        assert!(ProcfsProbe.process_start_marker(pid).is_some());
        child.kill().expect("kill");
        // Not reaped yet: a zombie counts as gone too (poll: the kill is
        // asynchronous).
        let mut zombie_seen = false;
        for _ in 0..200 {
            if ProcfsProbe.process_start_marker(pid).is_none() {
                zombie_seen = true;
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert!(zombie_seen, "a killed process must stop looking alive");
        child.wait().expect("reap");
        assert_eq!(ProcfsProbe.process_start_marker(pid), None);
    }

    #[test]
    fn registration_describes_this_process() {
        let registration =
            current_registration(&tasktrail_core::SystemClock).expect("registration");
        assert_eq!(registration.pid, std::process::id());
        assert_eq!(registration.host, local_host_name());
        assert_eq!(
            ProcfsProbe.process_start_marker(registration.pid),
            Some(registration.process_start_marker)
        );
        let identity = registration.host_identity.expect("identity on Linux");
        assert_eq!(
            identity.boot_id,
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .expect("boot id")
                .trim()
        );
        let link = fs::read_link("/proc/self/ns/pid").expect("ns link");
        assert_eq!(
            link.to_str(),
            Some(format!("pid:[{}]", identity.pid_namespace).as_str())
        );
    }

    #[test]
    fn the_probe_identity_is_this_processs_own_when_proc_is_its_own() {
        // The test runs with its own /proc (CI and the dev machines do).
        assert_eq!(probe_identity(), current_host_identity());
    }
}
