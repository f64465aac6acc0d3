//! The one redactor: what of a database URL or conninfo string must never
//! be shown, and how to show the rest. Every `Display`, error and log line
//! that may hold a connection string goes through it: the root crate's
//! `DatabaseUrl`, the Postgres backend's errors (libpq echoes pieces of
//! what it was given) and the CLI.
//!
//! A password is found in every form libpq accepts: `user:password@` in a
//! URL (also with an unescaped `@` inside, and percent-encoded), a
//! `password=` query parameter (also with a percent-encoded key), and
//! `password=value` / `password = 'quoted value'` in a key/value conninfo
//! string. Each is hidden as written and percent-decoded.

use std::fmt;

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// The secrets of one connection string.
#[derive(Clone)]
pub struct Secrets {
    source: String,
    secrets: Vec<String>,
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secrets(***)")
    }
}

/// `text` with every `%XX` decoded (invalid escapes kept as they are).
fn percent_decode(text: &str) -> String {
    let hex = |byte: u8| char::from(byte).to_digit(16);
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(high), Some(low)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((high * 16 + low) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The value after each `password` key in `text`: `password=value` up to
/// `&`, `#` or whitespace, or `password = 'quoted value'` (conninfo quoting,
/// `\'` escapes), key matched case-insensitively.
fn password_values(text: &str) -> Vec<String> {
    let lower = text.to_ascii_lowercase();
    let mut values = Vec::new();
    for (index, _) in lower.match_indices("password") {
        let after = text[index + "password".len()..].trim_start();
        let Some(after) = after.strip_prefix('=') else {
            continue;
        };
        let after = after.trim_start();
        if let Some(quoted) = after.strip_prefix('\'') {
            // As meant (escapes undone) and as written (between the quotes).
            let mut value = String::new();
            let mut written_end = quoted.len();
            let mut chars = quoted.char_indices();
            while let Some((at, c)) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next().map(|(_, c)| c)),
                    '\'' => {
                        written_end = at;
                        break;
                    }
                    other => value.push(other),
                }
            }
            values.push(quoted[..written_end].to_owned());
            values.push(value);
        } else {
            let end = after
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .unwrap_or(after.len());
            values.push(after[..end].to_owned());
        }
    }
    values
}

impl Secrets {
    /// The secrets of `connection` (a URL or a conninfo string).
    pub fn of(connection: &str) -> Self {
        let decoded = percent_decode(connection);
        let mut found: Vec<String> = Vec::new();
        for form in [connection, decoded.as_str()] {
            if let Some((_, rest)) = form.split_once("://") {
                // The user info ends at the last '@' before the query, even
                // when the password holds an unescaped '@' or '/' (which
                // libpq would misparse and might echo in pieces).
                let before_query = rest.split('?').next().unwrap_or_default();
                if let Some(at) = before_query.rfind('@') {
                    if let Some((_, password)) = before_query[..at].split_once(':') {
                        found.push(password.to_owned());
                        found.extend(
                            password
                                .split(['@', '/', '?', '#', ':'])
                                .filter(|piece| piece.len() >= 4)
                                .map(str::to_owned),
                        );
                    }
                }
            }
            found.extend(password_values(form));
        }
        let decoded_secrets: Vec<String> = found.iter().map(|s| percent_decode(s)).collect();
        found.extend(decoded_secrets);
        found.retain(|secret| !secret.is_empty());
        found.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        found.dedup();
        Self {
            source: connection.to_owned(),
            secrets: found,
        }
    }

    /// These secrets and `other`'s (a second connection string the same
    /// store uses, such as a liveness URL); shown as this one's source.
    pub fn with(mut self, other: &Secrets) -> Self {
        self.secrets.extend(other.secrets.iter().cloned());
        self.secrets
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.secrets.dedup();
        self
    }

    /// Whether the connection string holds a password at all.
    pub fn any(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// `text` with every secret replaced by [`REDACTED`].
    pub fn scrub(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            text = text.replace(secret.as_str(), REDACTED);
        }
        text
    }

    /// The connection string itself, safe to show.
    pub fn redacted(&self) -> String {
        self.scrub(&self.source)
    }
}

/// `connection` (a URL or conninfo string) safe to show: every password in
/// it replaced by [`REDACTED`].
pub fn redact(connection: &str) -> String {
    Secrets::of(connection).redacted()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every form a Postgres URL or conninfo string carries a password in.
    const FORMS: [&str; 9] = [
        "postgres://app:S3cretPw@db.internal:5432/trail",
        "postgresql://app:S3cretPw@db.internal/trail?sslmode=require",
        "postgres://app:S3cr%65tPw@db.internal/trail",
        "postgres://db.internal/trail?user=app&password=S3cretPw",
        "postgres://db.internal/trail?user=app&PASSWORD=S3cretPw&sslmode=disable",
        "postgres://db.internal/trail?user=app&pass%77ord=S3cretPw",
        "host=db.internal user=app password=S3cretPw dbname=trail",
        "host=db.internal user=app password = 'S3cretPw' dbname=trail",
        "postgres://app:S3cret@Pw@db.internal/trail",
    ];

    #[test]
    fn escapes_are_decoded_and_a_cut_or_invalid_one_is_kept_as_written() {
        assert_eq!(percent_decode("S3cr%65tPw"), "S3cretPw");
        assert_eq!(percent_decode("%41b"), "Ab");
        assert_eq!(percent_decode("ab%41"), "abA");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("ab%4"), "ab%4");
        assert_eq!(percent_decode("%zz"), "%zz");
    }

    #[test]
    fn the_debug_output_never_shows_a_secret() {
        for form in FORMS {
            assert_eq!(format!("{:?}", Secrets::of(form)), "Secrets(***)");
        }
    }

    #[test]
    fn no_form_shows_the_password() {
        for form in FORMS {
            let secrets = Secrets::of(form);
            assert!(secrets.any(), "{form}");
            let shown = secrets.redacted();
            for piece in ["S3cretPw", "S3cret", "S3cr%65tPw"] {
                assert!(!shown.contains(piece), "{form} shown as {shown}");
            }
            assert!(shown.contains(REDACTED), "{shown}");
            // Text that echoes the password, as written or decoded.
            let echoed = secrets.scrub(&format!("FATAL: bad password S3cretPw for {form}"));
            assert!(!echoed.contains("S3cret"), "{echoed}");
        }
    }

    #[test]
    fn a_quoted_conninfo_password_with_spaces_and_quotes_is_hidden() {
        let secrets = Secrets::of(r"host=db password='pa ss\'word' dbname=t");
        let shown = secrets.scrub(r"pa ss'word and pa ss\'word");
        assert!(!shown.contains("pa ss"), "{shown}");
    }

    #[test]
    fn the_rest_of_the_url_stays_readable() {
        assert_eq!(
            redact("postgres://app:S3cretPw@db.internal:5432/trail"),
            "postgres://app:***@db.internal:5432/trail"
        );
        assert_eq!(
            redact("postgres://db/trail?user=app&password=S3cretPw&sslmode=disable"),
            "postgres://db/trail?user=app&password=***&sslmode=disable"
        );
        assert_eq!(
            redact("postgres://postgres@127.0.0.1:5432/test"),
            "postgres://postgres@127.0.0.1:5432/test"
        );
        assert!(!Secrets::of("postgres://postgres@127.0.0.1:5432/test").any());
    }
}
