//! The validated description of a task to dispatch.

use std::fmt;

/// Which field of a [`TaskSpecInput`] was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpecField {
    /// `repo`
    Repo,
    /// `issue_number`
    IssueNumber,
    /// `user`
    User,
    /// `agent`
    Agent,
    /// `agent_type`
    AgentType,
    /// `model`
    Model,
    /// `provider`
    Provider,
}

impl SpecField {
    /// The column name of the field.
    pub const fn column_name(self) -> &'static str {
        match self {
            SpecField::Repo => "repo",
            SpecField::IssueNumber => "issue_number",
            SpecField::User => "user",
            SpecField::Agent => "agent",
            SpecField::AgentType => "agent_type",
            SpecField::Model => "model",
            SpecField::Provider => "provider",
        }
    }
}

/// Why a field was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SpecProblem {
    /// Empty or only whitespace.
    Empty,
    /// Longer than [`TaskSpec::MAX_FIELD_LEN`] bytes.
    TooLong,
    /// Holds a control character (newline, tab, NUL, escape...).
    ControlCharacter,
    /// Leading or trailing whitespace.
    SurroundingWhitespace,
    /// A repo that is not `owner/name`.
    NotOwnerSlashName,
    /// An issue number that is zero or negative.
    NotPositive,
    /// An issue number above [`TaskSpec::MAX_ISSUE_NUMBER`].
    TooLarge,
}

/// A task spec that failed validation; nothing was written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid task spec: field `{}` {}", field.column_name(), describe(*problem))]
pub struct SpecError {
    /// The rejected field.
    pub field: SpecField,
    /// What is wrong with it.
    pub problem: SpecProblem,
}

fn describe(problem: SpecProblem) -> &'static str {
    match problem {
        SpecProblem::Empty => "is empty",
        SpecProblem::TooLong => "is too long",
        SpecProblem::ControlCharacter => "holds a control character",
        SpecProblem::SurroundingWhitespace => "has leading or trailing whitespace",
        SpecProblem::NotOwnerSlashName => "is not of the form owner/name",
        SpecProblem::NotPositive => "must be greater than zero",
        SpecProblem::TooLarge => "is too large",
    }
}

/// Unvalidated input for a [`TaskSpec`], as it arrives from a dispatcher.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskSpecInput {
    /// `owner/name` of the repository the task works on.
    pub repo: String,
    /// The issue the task works on (> 0).
    pub issue_number: i64,
    /// Who asked for the task.
    pub user: String,
    /// The agent's name.
    pub agent: String,
    /// The agent's kind (for example `claude_sdk`).
    pub agent_type: String,
    /// The model the agent runs.
    pub model: String,
    /// The model provider.
    pub provider: String,
}

/// A validated task description: every column the seed issue asks for at
/// start time. Only [`TaskSpec::validate`] makes one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TaskSpec {
    repo: String,
    issue_number: u32,
    user: String,
    agent: String,
    agent_type: String,
    model: String,
    provider: String,
}

impl TaskSpec {
    /// The longest accepted text field, in bytes.
    pub const MAX_FIELD_LEN: usize = 200;
    /// The largest accepted issue number (fits a signed 32-bit column).
    pub const MAX_ISSUE_NUMBER: i64 = i32::MAX as i64;

    /// Validates every field, reporting the first one that is wrong.
    pub fn validate(input: TaskSpecInput) -> Result<Self, SpecError> {
        let TaskSpecInput {
            repo,
            issue_number,
            user,
            agent,
            agent_type,
            model,
            provider,
        } = input;
        check_text(SpecField::Repo, &repo)?;
        check_repo_shape(&repo)?;
        let issue_number = check_issue_number(issue_number)?;
        check_text(SpecField::User, &user)?;
        check_text(SpecField::Agent, &agent)?;
        check_text(SpecField::AgentType, &agent_type)?;
        check_text(SpecField::Model, &model)?;
        check_text(SpecField::Provider, &provider)?;
        Ok(Self {
            repo,
            issue_number,
            user,
            agent,
            agent_type,
            model,
            provider,
        })
    }

    /// `owner/name`.
    pub fn repo(&self) -> &str {
        &self.repo
    }
    /// The issue number (> 0).
    pub fn issue_number(&self) -> u32 {
        self.issue_number
    }
    /// Who asked for the task.
    pub fn user(&self) -> &str {
        &self.user
    }
    /// The agent's name.
    pub fn agent(&self) -> &str {
        &self.agent
    }
    /// The agent's kind.
    pub fn agent_type(&self) -> &str {
        &self.agent_type
    }
    /// The model.
    pub fn model(&self) -> &str {
        &self.model
    }
    /// The provider.
    pub fn provider(&self) -> &str {
        &self.provider
    }
}

impl fmt::Display for TaskSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", self.repo, self.issue_number)
    }
}

fn check_text(field: SpecField, value: &str) -> Result<(), SpecError> {
    let fail = |problem| Err(SpecError { field, problem });
    if value.trim().is_empty() {
        return fail(SpecProblem::Empty);
    }
    if value.len() > TaskSpec::MAX_FIELD_LEN {
        return fail(SpecProblem::TooLong);
    }
    if value.chars().any(char::is_control) {
        return fail(SpecProblem::ControlCharacter);
    }
    if value.trim() != value {
        return fail(SpecProblem::SurroundingWhitespace);
    }
    Ok(())
}

fn check_repo_shape(repo: &str) -> Result<(), SpecError> {
    let valid_part = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && part != "."
            && part != ".."
    };
    match repo.split_once('/') {
        Some((owner, name)) if valid_part(owner) && valid_part(name) => Ok(()),
        _ => Err(SpecError {
            field: SpecField::Repo,
            problem: SpecProblem::NotOwnerSlashName,
        }),
    }
}

fn check_issue_number(issue_number: i64) -> Result<u32, SpecError> {
    let fail = |problem| {
        Err(SpecError {
            field: SpecField::IssueNumber,
            problem,
        })
    };
    if issue_number <= 0 {
        return fail(SpecProblem::NotPositive);
    }
    if issue_number > TaskSpec::MAX_ISSUE_NUMBER {
        return fail(SpecProblem::TooLarge);
    }
    u32::try_from(issue_number).or_else(|_| fail(SpecProblem::TooLarge))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_issue_number_is_accepted_and_the_next_refused() {
        let largest = TaskSpec::validate(TaskSpecInput {
            issue_number: TaskSpec::MAX_ISSUE_NUMBER,
            ..input()
        })
        .expect("the limit itself is allowed");
        assert_eq!(
            i64::from(largest.issue_number()),
            TaskSpec::MAX_ISSUE_NUMBER
        );
        assert_eq!(
            problem_of(TaskSpecInput {
                issue_number: TaskSpec::MAX_ISSUE_NUMBER + 1,
                ..input()
            }),
            (SpecField::IssueNumber, SpecProblem::TooLarge)
        );
    }

    #[test]
    fn a_field_of_exactly_the_longest_length_is_accepted() {
        let spec = TaskSpec::validate(TaskSpecInput {
            model: "m".repeat(TaskSpec::MAX_FIELD_LEN),
            ..input()
        })
        .expect("the limit itself is allowed");
        assert_eq!(spec.model().len(), TaskSpec::MAX_FIELD_LEN);
    }

    #[test]
    fn a_spec_error_names_the_column_and_the_problem() {
        let columns = [
            (SpecField::Repo, "repo"),
            (SpecField::IssueNumber, "issue_number"),
            (SpecField::User, "user"),
            (SpecField::Agent, "agent"),
            (SpecField::AgentType, "agent_type"),
            (SpecField::Model, "model"),
            (SpecField::Provider, "provider"),
        ];
        let problems = [
            (SpecProblem::Empty, "is empty"),
            (SpecProblem::TooLong, "is too long"),
            (SpecProblem::ControlCharacter, "holds a control character"),
            (
                SpecProblem::SurroundingWhitespace,
                "has leading or trailing whitespace",
            ),
            (
                SpecProblem::NotOwnerSlashName,
                "is not of the form owner/name",
            ),
            (SpecProblem::NotPositive, "must be greater than zero"),
            (SpecProblem::TooLarge, "is too large"),
        ];
        for (field, column) in columns {
            assert_eq!(field.column_name(), column);
            for (problem, words) in problems {
                assert_eq!(
                    SpecError { field, problem }.to_string(),
                    format!("invalid task spec: field `{column}` {words}")
                );
            }
        }
    }

    fn input() -> TaskSpecInput {
        TaskSpecInput {
            repo: "acme/widgets".into(),
            issue_number: 1104,
            user: "alice".into(),
            agent: "fixer".into(),
            agent_type: "claude_sdk".into(),
            model: "claude-opus".into(),
            provider: "anthropic".into(),
        }
    }

    fn problem_of(input: TaskSpecInput) -> (SpecField, SpecProblem) {
        let err = TaskSpec::validate(input).expect_err("should be rejected");
        (err.field, err.problem)
    }

    #[test]
    fn a_complete_spec_validates() {
        let spec = TaskSpec::validate(input()).expect("valid");
        assert_eq!(spec.to_string(), "acme/widgets#1104");
        assert_eq!((spec.repo(), spec.issue_number()), ("acme/widgets", 1104));
        assert_eq!(
            (spec.user(), spec.agent(), spec.agent_type()),
            ("alice", "fixer", "claude_sdk")
        );
        assert_eq!(
            (spec.model(), spec.provider()),
            ("claude-opus", "anthropic")
        );
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases: Vec<(TaskSpecInput, SpecField, SpecProblem)> = vec![
            (
                TaskSpecInput {
                    repo: "".into(),
                    ..input()
                },
                SpecField::Repo,
                SpecProblem::Empty,
            ),
            (
                TaskSpecInput {
                    repo: "widgets".into(),
                    ..input()
                },
                SpecField::Repo,
                SpecProblem::NotOwnerSlashName,
            ),
            (
                TaskSpecInput {
                    repo: "a/b/c".into(),
                    ..input()
                },
                SpecField::Repo,
                SpecProblem::NotOwnerSlashName,
            ),
            (
                TaskSpecInput {
                    repo: "/b".into(),
                    ..input()
                },
                SpecField::Repo,
                SpecProblem::NotOwnerSlashName,
            ),
            (
                TaskSpecInput {
                    issue_number: 0,
                    ..input()
                },
                SpecField::IssueNumber,
                SpecProblem::NotPositive,
            ),
            (
                TaskSpecInput {
                    issue_number: -3,
                    ..input()
                },
                SpecField::IssueNumber,
                SpecProblem::NotPositive,
            ),
            (
                TaskSpecInput {
                    issue_number: i64::MAX,
                    ..input()
                },
                SpecField::IssueNumber,
                SpecProblem::TooLarge,
            ),
            (
                TaskSpecInput {
                    user: "   ".into(),
                    ..input()
                },
                SpecField::User,
                SpecProblem::Empty,
            ),
            (
                TaskSpecInput {
                    agent: "a\u{1b}[31m".into(),
                    ..input()
                },
                SpecField::Agent,
                SpecProblem::ControlCharacter,
            ),
            (
                TaskSpecInput {
                    agent_type: " x".into(),
                    ..input()
                },
                SpecField::AgentType,
                SpecProblem::SurroundingWhitespace,
            ),
            (
                TaskSpecInput {
                    model: "m".repeat(TaskSpec::MAX_FIELD_LEN + 1),
                    ..input()
                },
                SpecField::Model,
                SpecProblem::TooLong,
            ),
            (
                TaskSpecInput {
                    provider: "p\0".into(),
                    ..input()
                },
                SpecField::Provider,
                SpecProblem::ControlCharacter,
            ),
        ];
        for (bad, field, problem) in cases {
            assert_eq!(problem_of(bad.clone()), (field, problem), "{bad:?}");
        }
    }
}
