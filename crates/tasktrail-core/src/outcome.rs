//! How a task ended, and what it cost.

use std::fmt;

use crate::status::TaskStatus;

/// A cost in US dollars: finite and not negative.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct CostUsd(f64);

/// A cost that was NaN, infinite or negative.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("cost_usd must be a finite number >= 0")]
pub struct InvalidCostError;

impl CostUsd {
    /// Validates a cost.
    pub fn new(dollars: f64) -> Result<Self, InvalidCostError> {
        if dollars.is_finite() && dollars >= 0.0 {
            // Normalise -0.0 to 0.0.
            Ok(Self(dollars.abs()))
        } else {
            Err(InvalidCostError)
        }
    }

    /// The cost in dollars.
    pub const fn dollars(self) -> f64 {
        self.0
    }
}

impl fmt::Display for CostUsd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "${:.4}", self.0)
    }
}

/// What a task that ran to an end reports: the columns the seed issue fills
/// at finish. An interrupted task has none of these (they stay NULL), which is
/// why [`Outcome::Interrupted`] carries an [`InterruptReason`] instead.
#[derive(Debug, Clone, PartialEq)]
pub struct RunReport {
    /// Prompt tokens consumed.
    pub input_tokens: u32,
    /// Completion tokens produced.
    pub output_tokens: u32,
    /// What the run cost.
    pub cost_usd: CostUsd,
    /// Agent turns taken.
    pub turns: u32,
    /// What the run produced (paths, URLs, PR links), stored as a JSON array.
    pub artifacts: Vec<String>,
}

impl RunReport {
    /// A report with no tokens, no cost, no turns and no artifacts.
    pub fn empty() -> Self {
        Self {
            input_tokens: 0,
            output_tokens: 0,
            cost_usd: CostUsd(0.0),
            turns: 0,
            artifacts: Vec::new(),
        }
    }
}

/// Why a task was interrupted: free text for operators (for example
/// `worker received SIGTERM`), at most [`InterruptReason::MAX_LEN`] bytes, no
/// control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct InterruptReason(String);

/// An interrupt reason that was empty, too long or held control characters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("interrupt reason is empty, too long or holds control characters")]
pub struct InvalidReasonError;

impl InterruptReason {
    /// The longest accepted reason, in bytes.
    pub const MAX_LEN: usize = 500;

    /// Validates a reason.
    pub fn new(reason: impl Into<String>) -> Result<Self, InvalidReasonError> {
        let reason = reason.into();
        if reason.trim().is_empty()
            || reason.len() > Self::MAX_LEN
            || reason.chars().any(char::is_control)
        {
            return Err(InvalidReasonError);
        }
        Ok(Self(reason))
    }

    /// The reason text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for InterruptReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How a running task ends. The four completed outcomes carry a
/// [`RunReport`]; an interrupted task carries only a reason, so its tokens,
/// cost, turns and artifacts cannot be set by mistake.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// `success`
    Success(RunReport),
    /// `failure`
    Failure(RunReport),
    /// `cancelled`
    Cancelled(RunReport),
    /// `aborted_no_skill`
    AbortedNoSkill(RunReport),
    /// `interrupted`: `finished_at`, tokens, cost, turns and artifacts stay
    /// NULL and the task's SDK sessions are invalidated.
    Interrupted(InterruptReason),
}

impl Outcome {
    /// The status the row gets.
    pub fn status(&self) -> TaskStatus {
        match self {
            Outcome::Success(_) => TaskStatus::Success,
            Outcome::Failure(_) => TaskStatus::Failure,
            Outcome::Cancelled(_) => TaskStatus::Cancelled,
            Outcome::AbortedNoSkill(_) => TaskStatus::AbortedNoSkill,
            Outcome::Interrupted(_) => TaskStatus::Interrupted,
        }
    }

    /// The report, unless the task was interrupted.
    pub fn report(&self) -> Option<&RunReport> {
        match self {
            Outcome::Success(report)
            | Outcome::Failure(report)
            | Outcome::Cancelled(report)
            | Outcome::AbortedNoSkill(report) => Some(report),
            Outcome::Interrupted(_) => None,
        }
    }

    /// The reason, if the task was interrupted.
    pub fn interrupt_reason(&self) -> Option<&InterruptReason> {
        match self {
            Outcome::Interrupted(reason) => Some(reason),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn costs_must_be_finite_and_not_negative() {
        assert!(CostUsd::new(0.25).is_ok());
        assert_eq!(CostUsd::new(-0.0).map(CostUsd::dollars), Ok(0.0));
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY, -0.01] {
            assert_eq!(CostUsd::new(bad), Err(InvalidCostError), "{bad}");
        }
    }

    /// Kills cargo-mutants' `dollars -> 0.0` and `Display -> ""`.
    #[test]
    fn a_cost_keeps_its_dollars_and_shows_four_places() {
        let cost = CostUsd::new(0.4275).expect("cost");
        assert_eq!(cost.dollars().to_bits(), 0.4275_f64.to_bits());
        assert_eq!(CostUsd::new(0.42).expect("cost").to_string(), "$0.4200");
    }

    /// Kills cargo-mutants' `interrupt_reason -> None`, its deleted match
    /// arm, and `InterruptReason`'s `Display -> ""`.
    #[test]
    fn an_interrupted_outcome_hands_its_reason_back_and_shows_it() {
        let reason = InterruptReason::new("worker received SIGTERM").expect("valid");
        assert_eq!(reason.to_string(), "worker received SIGTERM");
        let outcome = Outcome::Interrupted(reason.clone());
        assert_eq!(outcome.interrupt_reason(), Some(&reason));
        assert_eq!(
            Outcome::Success(RunReport::empty()).interrupt_reason(),
            None
        );
    }

    #[test]
    fn interrupted_outcomes_carry_no_report() {
        let reason = InterruptReason::new("worker received SIGTERM").expect("valid");
        let outcome = Outcome::Interrupted(reason);
        assert_eq!(outcome.status(), TaskStatus::Interrupted);
        assert!(outcome.report().is_none());
        assert!(InterruptReason::new("").is_err());
        assert!(InterruptReason::new("a\nb").is_err());
    }
}
