//! The `status` column.

use std::fmt;
use std::str::FromStr;

/// Every value the `task_history.status` column may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TaskStatus {
    /// In flight: the row was inserted at start and not finished yet.
    Running,
    /// Finished: the agent did the work.
    Success,
    /// Finished: the agent failed.
    Failure,
    /// Finished: someone cancelled the task.
    Cancelled,
    /// The worker stopped (shutdown) or died (recovered at the next boot).
    Interrupted,
    /// Finished: no skill matched the task.
    AbortedNoSkill,
}

/// A status string that is not one of [`TaskStatus::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown task status {input:?} (expected one of running, success, failure, cancelled, interrupted, aborted_no_skill)")]
pub struct UnknownStatusError {
    input: String,
}

impl TaskStatus {
    /// Every status, in column-value order.
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Running,
        TaskStatus::Success,
        TaskStatus::Failure,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
        TaskStatus::AbortedNoSkill,
    ];

    /// The column value.
    pub const fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Running => "running",
            TaskStatus::Success => "success",
            TaskStatus::Failure => "failure",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Interrupted => "interrupted",
            TaskStatus::AbortedNoSkill => "aborted_no_skill",
        }
    }

    /// Whether the row is final (every status but `running`).
    pub const fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Running)
    }

    /// Whether a session of a task in this status may be offered for resume
    /// (`Storage::resumable_session`): the task completed (success, failure,
    /// cancelled, aborted_no_skill). A `running` task's session is still in
    /// use; an `interrupted` task's sessions are invalidated with it and are
    /// never resumed. Every backend's resume query filters on
    /// [`TaskStatus::RESUMABLE`], the statuses for which this holds.
    pub const fn is_resumable(self) -> bool {
        self.is_final() && !matches!(self, TaskStatus::Interrupted)
    }

    /// The statuses whose sessions may be resumed ([`TaskStatus::is_resumable`]),
    /// in column-value order: what the SQL backends' resume queries filter on.
    pub const RESUMABLE: [TaskStatus; 4] = [
        TaskStatus::Success,
        TaskStatus::Failure,
        TaskStatus::Cancelled,
        TaskStatus::AbortedNoSkill,
    ];
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for TaskStatus {
    type Err = UnknownStatusError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == input)
            .ok_or_else(|| UnknownStatusError {
                input: input.chars().take(64).collect(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_round_trips() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
            // Kills cargo-mutants' `Display -> ""`.
            assert_eq!(status.to_string(), status.as_str());
        }
        assert!("RUNNING".parse::<TaskStatus>().is_err());
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn the_resumable_list_is_exactly_the_resumable_statuses() {
        let resumable: Vec<TaskStatus> = TaskStatus::ALL
            .into_iter()
            .filter(|status| status.is_resumable())
            .collect();
        assert_eq!(resumable, TaskStatus::RESUMABLE);
        assert!(!TaskStatus::Running.is_resumable());
        assert!(!TaskStatus::Interrupted.is_resumable());
        assert!(TaskStatus::Success.is_resumable());
    }
}
