//! (feature `logging`) The binaries' log setup: the library's `tracing`
//! events (targets under `tasktrail::`) and the binaries' own, on stderr,
//! as text or as one JSON object per line, filtered by `TASKTRAIL_LOG`.
//!
//! Both `tasktrail` and `tasktrail-server` call [`install`] with their
//! `--log-format` before doing anything else. Stdout is never written.

use std::fmt;
use std::io::IsTerminal;
use std::str::FromStr;

use tracing_subscriber::EnvFilter;

/// The environment variable holding the log filter: `info` (the default),
/// `warn`, `off`, `tasktrail::recovery=debug,info`: `tracing`'s
/// `EnvFilter` directives.
pub const LOG_ENV: &str = "TASKTRAIL_LOG";

/// The filter when [`LOG_ENV`] is unset or empty.
pub const DEFAULT_FILTER: &str = "info";

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// For people: time, level, target, message, fields.
    #[default]
    Text,
    /// For collectors: one JSON object per line with `timestamp`, `level`,
    /// `target` and `fields` (the message is `fields.message`).
    Json,
}

impl LogFormat {
    /// The flag's value: `text` or `json`.
    pub const fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--log-format` that is neither `text` nor `json`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{given:?} is not a log format (text or json)")]
pub struct LogFormatError {
    /// What was given.
    pub given: String,
}

impl FromStr for LogFormat {
    type Err = LogFormatError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(LogFormatError {
                given: text.to_owned(),
            }),
        }
    }
}

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// [`LOG_ENV`] holds something that is not a filter.
    #[error("{LOG_ENV}={given:?} is not a log filter ({detail}); try {DEFAULT_FILTER}, warn, off or tasktrail=debug")]
    Filter {
        /// The variable's value.
        given: String,
        /// What the parser said.
        detail: String,
    },
    /// [`LOG_ENV`] is not valid UTF-8.
    #[error("{LOG_ENV} is not valid UTF-8")]
    NotUnicode,
    /// A global subscriber was already installed.
    #[error("a log subscriber is already installed")]
    AlreadyInstalled,
}

/// The filter `text` names (empty or blank: [`DEFAULT_FILTER`]). Every
/// directive must parse: a typo is an error, never a silently wider or
/// narrower filter.
pub fn parse_filter(text: &str) -> Result<EnvFilter, LoggingError> {
    let text = text.trim();
    let text = if text.is_empty() {
        DEFAULT_FILTER
    } else {
        text
    };
    EnvFilter::builder()
        .parse(text)
        .map_err(|error| LoggingError::Filter {
            given: text.to_owned(),
            detail: error.to_string(),
        })
}

/// The filter [`LOG_ENV`] names, [`DEFAULT_FILTER`] when it is unset.
pub fn filter_from_env() -> Result<EnvFilter, LoggingError> {
    match std::env::var(LOG_ENV) {
        Ok(text) => parse_filter(&text),
        Err(std::env::VarError::NotPresent) => parse_filter(DEFAULT_FILTER),
        Err(std::env::VarError::NotUnicode(_)) => Err(LoggingError::NotUnicode),
    }
}

/// Installs the process's log subscriber: events that pass [`LOG_ENV`]'s
/// filter, on stderr, in `format` (text is coloured only on a terminal). A
/// stderr that is closed or failing loses the lines, never panics.
pub fn install(format: LogFormat) -> Result<(), LoggingError> {
    let filter = filter_from_env()?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
    };
    installed.map_err(|_| LoggingError::AlreadyInstalled)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_anything_else_is_named() {
        assert_eq!("text".parse(), Ok(LogFormat::Text));
        assert_eq!("JSON".parse(), Ok(LogFormat::Json));
        let error = "xml".parse::<LogFormat>().expect_err("xml");
        assert_eq!(
            error.to_string(),
            "\"xml\" is not a log format (text or json)"
        );
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert_eq!(LogFormat::Json.to_string(), "json");
    }

    #[test]
    fn filters_parse_blank_is_the_default_and_typos_are_refused() {
        for good in ["info", "off", "warn,tasktrail::recovery=debug", "", "  "] {
            assert!(parse_filter(good).is_ok(), "{good:?}");
        }
        assert_eq!(
            parse_filter(" ").expect("default").to_string(),
            DEFAULT_FILTER
        );
        for bad in ["tasktrail=loud", "info,[", "=debug=x"] {
            let error = parse_filter(bad).expect_err(bad).to_string();
            assert!(error.starts_with("TASKTRAIL_LOG="), "{error}");
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
