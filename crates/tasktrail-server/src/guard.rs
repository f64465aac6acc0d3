//! Who gets in, and how long a request may take: the bearer token, the
//! dashboard's session cookie (with its cross-site check), `--public-read`,
//! and the request timeout. [`guarded`] wraps the server's routes in all of
//! it; the body limit is the router's own (`api::MAX_BODY_BYTES`). A
//! browser refused a page (a `GET` accepting `text/html`) gets the same
//! `401` and challenge with a page that sends it to the login form.
//!
//! The token's text is never kept, shown or answered: a [`Token`] holds the
//! SHA-256 digests of the token and of the session cookie's value (itself a
//! digest of the token), and every comparison is of two digests in constant
//! time, so neither the presented token's bytes nor its length decide how
//! long a refusal takes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::rejection::FormRejection;
use axum::extract::{Request, State};
use axum::http::header::{
    AUTHORIZATION, COOKIE, HOST, ORIGIN, RETRY_AFTER, SET_COOKIE, WWW_AUTHENTICATE,
};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Form, Json, Router};
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// How long a request may take when `--request-timeout` is not given.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The environment variable that may hold the token itself.
pub const TOKEN_VARIABLE: &str = "TASKTRAIL_SERVER_TOKEN";

/// The dashboard's session cookie (set by `POST /ui/login`).
pub const SESSION_COOKIE: &str = "tasktrail_session";

/// Where the dashboard trades the token for the session cookie.
pub const LOGIN_PATH: &str = "/ui/login";

/// Where the dashboard drops the session cookie.
pub const LOGOUT_PATH: &str = "/ui/logout";

/// What the 401 answers carry in `WWW-Authenticate`.
const CHALLENGE: &str = "Bearer realm=\"tasktrail\"";

type Sha256Digest = [u8; 32];

fn sha256(parts: &[&[u8]]) -> Sha256Digest {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part);
    }
    hasher.finalize().into()
}

/// The server's token. Only digests are kept; `Debug` shows none of it.
#[derive(Clone)]
pub struct Token {
    /// SHA-256 of the token.
    digest: Sha256Digest,
    /// The session cookie's value: a digest of the token, so the cookie
    /// (and the `Set-Cookie` answer) never holds the token itself.
    session: String,
    /// SHA-256 of `session`.
    session_digest: Sha256Digest,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(redacted)")
    }
}

/// Why no token could be had. No variant holds the token's text.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// Both `--token-file` and `TASKTRAIL_SERVER_TOKEN` were given.
    #[error("give the token one way: --token-file or {TOKEN_VARIABLE}, not both")]
    BothSources,
    /// The token file could not be read.
    #[error("cannot read the token file {}: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The token is empty (after its trailing newline is trimmed).
    #[error("{0} is empty")]
    Empty(String),
    /// The token holds something other than printable ASCII (spaces,
    /// control characters, non-ASCII): it could not travel in a header.
    #[error("{0} must hold printable ASCII without spaces (for example `openssl rand -hex 32`)")]
    NotPrintable(String),
}

impl Token {
    /// A token from its text; `source` names where it came from in errors.
    fn parse(text: &str, source: impl Into<String>) -> Result<Self, TokenError> {
        if text.is_empty() {
            return Err(TokenError::Empty(source.into()));
        }
        if !text.bytes().all(|byte| byte.is_ascii_graphic()) {
            return Err(TokenError::NotPrintable(source.into()));
        }
        let session: String = sha256(&[b"tasktrail-session-v1\0", text.as_bytes()])
            .iter()
            .map(|byte| format!("{byte:02x}"))
            .collect();
        Ok(Self {
            digest: sha256(&[text.as_bytes()]),
            session_digest: sha256(&[session.as_bytes()]),
            session,
        })
    }

    /// A token given directly (tests, embedders).
    pub fn new(text: &str) -> Result<Self, TokenError> {
        Self::parse(text, "the token")
    }

    /// The token in `path`, its one trailing newline (`\n` or `\r\n`)
    /// trimmed.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let unreadable = |source| TokenError::Unreadable {
            path: path.to_owned(),
            source,
        };
        let bytes = std::fs::read(path).map_err(unreadable)?;
        let text = String::from_utf8(bytes)
            .map_err(|_| TokenError::NotPrintable(format!("the token file {}", path.display())))?;
        let text = text
            .strip_suffix('\n')
            .map(|text| text.strip_suffix('\r').unwrap_or(text))
            .unwrap_or(&text);
        Self::parse(text, format!("the token file {}", path.display()))
    }

    /// The server's token from `--token-file` and/or the value of
    /// `TASKTRAIL_SERVER_TOKEN`: none, one, or an error (both given, an
    /// unreadable or empty file, an empty variable).
    pub fn from_sources(
        file: Option<&Path>,
        variable: Option<std::ffi::OsString>,
    ) -> Result<Option<Self>, TokenError> {
        match (file, variable) {
            (Some(_), Some(_)) => Err(TokenError::BothSources),
            (Some(path), None) => Self::from_file(path).map(Some),
            (None, Some(value)) => match value.into_string() {
                Ok(text) => Self::parse(&text, TOKEN_VARIABLE).map(Some),
                Err(_) => Err(TokenError::NotPrintable(TOKEN_VARIABLE.to_owned())),
            },
            (None, None) => Ok(None),
        }
    }

    /// Whether `presented` is the token: digests compared in constant time.
    fn matches(&self, presented: &[u8]) -> bool {
        sha256(&[presented]).ct_eq(&self.digest).into()
    }

    /// Whether `presented` is the session cookie's value.
    fn matches_session(&self, presented: &[u8]) -> bool {
        sha256(&[presented]).ct_eq(&self.session_digest).into()
    }
}

/// How the server guards its routes.
#[derive(Debug, Clone)]
pub struct Guard {
    /// With a token, every route but `GET /healthz` needs it (the bearer
    /// header, or the session cookie). Without, everything is open (the
    /// binary allows that on a loopback address only).
    pub token: Option<Token>,
    /// `GET`/`HEAD` requests pass without the token (`--public-read`).
    pub public_read: bool,
    /// How long a request may take before it is answered `503`.
    pub request_timeout: Duration,
}

impl Default for Guard {
    fn default() -> Self {
        Self {
            token: None,
            public_read: false,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
        }
    }
}

/// `router` behind `guard`: the token check (and, with a token, `POST
/// /ui/login` and `POST /ui/logout`), then the request timeout around all
/// of it.
pub fn guarded(router: Router, guard: Guard) -> Router {
    let timeout = guard.request_timeout;
    let router = match &guard.token {
        Some(token) => router
            .route(LOGIN_PATH, post(login).with_state(token.clone()))
            .route(LOGOUT_PATH, post(logout)),
        None => router,
    };
    router
        .layer(middleware::from_fn_with_state(Arc::new(guard), authorize))
        .layer(middleware::from_fn_with_state(timeout, time_limit))
}

fn error(status: StatusCode, message: &str) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn unauthorized() -> Response {
    let mut response = error(
        StatusCode::UNAUTHORIZED,
        "a token is needed: send `Authorization: Bearer <token>`",
    );
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    response
}

/// How a request proved it holds the token.
enum Credential {
    Bearer,
    Cookie,
    None,
}

/// An `Authorization` header decides alone (a wrong one is refused even
/// with a good cookie); without one, the session cookie.
fn credential(headers: &HeaderMap, token: &Token) -> Credential {
    if let Some(value) = headers.get(AUTHORIZATION) {
        let bytes = value.as_bytes();
        let presented = match bytes.get(..7) {
            Some(scheme) if scheme.eq_ignore_ascii_case(b"bearer ") => &bytes[7..],
            _ => return Credential::None,
        };
        return if token.matches(presented) {
            Credential::Bearer
        } else {
            Credential::None
        };
    }
    let mut cookie_found = false;
    for header in headers.get_all(COOKIE) {
        for pair in header.as_bytes().split(|byte| *byte == b';') {
            let pair = pair.trim_ascii();
            if let Some(value) = pair
                .strip_prefix(SESSION_COOKIE.as_bytes())
                .and_then(|rest| rest.strip_prefix(b"="))
            {
                // Every session cookie is compared (no early exit).
                cookie_found |= token.matches_session(value);
            }
        }
    }
    if cookie_found {
        Credential::Cookie
    } else {
        Credential::None
    }
}

fn read_only(method: &Method) -> bool {
    method == Method::GET || method == Method::HEAD
}

/// Whether a browser sent this request from the server's own pages:
/// `Sec-Fetch-Site: same-origin`, or (browsers without it) an `Origin`
/// naming the `Host` the request was sent to. Neither header: not proven.
fn same_origin(headers: &HeaderMap) -> bool {
    if let Some(site) = headers.get("sec-fetch-site") {
        return site.as_bytes() == b"same-origin";
    }
    let (Some(origin), Some(host)) = (headers.get(ORIGIN), headers.get(HOST)) else {
        return false;
    };
    let origin = origin.as_bytes();
    let authority = origin
        .strip_prefix(b"https://")
        .or_else(|| origin.strip_prefix(b"http://"));
    authority.is_some_and(|authority| authority.eq_ignore_ascii_case(host.as_bytes()))
}

fn cross_site() -> Response {
    error(
        StatusCode::FORBIDDEN,
        "a state-changing request with the session cookie must come from this server's own \
         pages (same-origin Sec-Fetch-Site or Origin); scripts send `Authorization: Bearer`",
    )
}

async fn authorize(State(guard): State<Arc<Guard>>, request: Request, next: Next) -> Response {
    let Some(token) = &guard.token else {
        return next.run(request).await;
    };
    let method = request.method();
    let path = request.uri().path();
    let open = (read_only(method) && (path == "/healthz" || guard.public_read))
        // The login checks the token itself; the logout only drops a cookie.
        || path == LOGIN_PATH
        || path == LOGOUT_PATH;
    if open {
        return next.run(request).await;
    }
    match credential(request.headers(), token) {
        Credential::Bearer => next.run(request).await,
        Credential::Cookie if read_only(method) || same_origin(request.headers()) => {
            next.run(request).await
        }
        Credential::Cookie => cross_site(),
        Credential::None if read_only(method) && wants_html(request.headers()) => {
            unauthorized_page(request.uri())
        }
        Credential::None => unauthorized(),
    }
}

/// Whether a browser asked for a page (`Accept` naming `text/html`).
fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(axum::http::header::ACCEPT)
        .is_some_and(|accept| {
            accept
                .as_bytes()
                .windows(9)
                .any(|part| part == b"text/html")
        })
}

/// The 401 a browser gets for a page: the same status and challenge, and a
/// page that sends it to the login form (coming back to `uri` after).
fn unauthorized_page(uri: &axum::http::Uri) -> Response {
    let back: String = uri
        .path_and_query()
        .map_or("/", |path| path.as_str())
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~/".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect();
    let login = format!("{LOGIN_PATH}?next={back}");
    let body = format!(
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"refresh\" content=\"0; url={login}\">\
         <title>Log in · tasktrail</title></head>\
         <body><p>A token is needed: <a href=\"{login}\">log in</a>.</p></body></html>"
    );
    let mut response = (StatusCode::UNAUTHORIZED, axum::response::Html(body)).into_response();
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static(CHALLENGE));
    response
}

fn session_cookie(value: &str, max_age: Option<u32>) -> HeaderValue {
    let mut cookie = format!("{SESSION_COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Secure");
    if let Some(seconds) = max_age {
        cookie.push_str(&format!("; Max-Age={seconds}"));
    }
    HeaderValue::from_str(&cookie).expect("a cookie of printable ASCII")
}

/// `POST /ui/login` with the form field `token`: `204` and the session
/// cookie (`HttpOnly; SameSite=Strict; Secure`), or `401`. Same-origin only.
async fn login(
    State(token): State<Token>,
    headers: HeaderMap,
    form: Result<Form<HashMap<String, String>>, FormRejection>,
) -> Response {
    if !same_origin(&headers) {
        return cross_site();
    }
    let form = match form {
        Ok(Form(form)) => form,
        Err(rejection) => return error(rejection.status(), &rejection.body_text()),
    };
    let Some(presented) = form.get("token") else {
        return error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "missing form field `token`",
        );
    };
    if !token.matches(presented.as_bytes()) {
        return unauthorized();
    }
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session_cookie(&token.session, None));
    response
}

/// `POST /ui/logout`: `204`, the session cookie dropped.
async fn logout() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(SET_COOKIE, session_cookie("", Some(0)));
    response
}

async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            let mut response = error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!(
                    "the request took longer than {}",
                    humantime::format_duration(limit)
                ),
            );
            response
                .headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_str(value).expect("value"));
        }
        map
    }

    #[test]
    fn the_token_is_never_shown_and_its_sources_are_checked() {
        let token = Token::new("s3cret-token").expect("token");
        assert!(!format!("{token:?}").contains("s3cret"));
        assert!(!token.session.contains("s3cret"));
        assert!(token.matches(b"s3cret-token"));
        for wrong in [
            &b"s3cret-tokeN"[..],
            b"s3cret",
            b"s3cret-token-and-more",
            b"",
        ] {
            assert!(!token.matches(wrong));
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("token");
        std::fs::write(&file, "s3cret-token\r\n").expect("write");
        assert!(Token::from_file(&file)
            .expect("token")
            .matches(b"s3cret-token"));
        std::fs::write(&file, "s3cret-token\n").expect("write");
        assert!(Token::from_file(&file)
            .expect("token")
            .matches(b"s3cret-token"));
        std::fs::write(&file, "\n").expect("write");
        assert!(matches!(Token::from_file(&file), Err(TokenError::Empty(_))));
        std::fs::write(&file, "two words").expect("write");
        let refused = Token::from_file(&file).expect_err("a space");
        assert!(!refused.to_string().contains("words"), "{refused}");
        assert!(matches!(
            Token::from_file(&dir.path().join("absent")),
            Err(TokenError::Unreadable { .. })
        ));
        assert!(matches!(
            Token::from_sources(Some(&file), Some("x".into())),
            Err(TokenError::BothSources)
        ));
        assert!(matches!(
            Token::from_sources(None, Some("".into())),
            Err(TokenError::Empty(_))
        ));
        assert!(Token::from_sources(None, None).expect("none").is_none());
    }

    #[test]
    fn the_header_decides_then_the_cookie() {
        let token = Token::new("abc123").expect("token");
        let session = token.session.clone();
        let cases: Vec<(HeaderMap, &str)> = vec![
            (headers(&[("authorization", "Bearer abc123")]), "bearer"),
            (headers(&[("authorization", "bearer abc123")]), "bearer"),
            (headers(&[("authorization", "Bearer abc1234")]), "none"),
            (headers(&[("authorization", "Basic abc123")]), "none"),
            (headers(&[("authorization", "Bearer")]), "none"),
            (
                headers(&[("cookie", &format!("a=b; {SESSION_COOKIE}={session}"))]),
                "cookie",
            ),
            (
                headers(&[("cookie", &format!("{SESSION_COOKIE}=abc123"))]),
                "none",
            ),
            (
                headers(&[
                    ("authorization", "Bearer wrong"),
                    ("cookie", &format!("{SESSION_COOKIE}={session}")),
                ]),
                "none",
            ),
            (headers(&[]), "none"),
        ];
        for (map, expected) in cases {
            let got = match credential(&map, &token) {
                Credential::Bearer => "bearer",
                Credential::Cookie => "cookie",
                Credential::None => "none",
            };
            assert_eq!(got, expected, "{map:?}");
        }
    }

    #[test]
    fn same_origin_needs_the_fetch_metadata_or_a_matching_origin() {
        let host = ("host", "127.0.0.1:8080");
        assert!(same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-origin")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "cross-site"),
            ("origin", "http://127.0.0.1:8080"),
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("sec-fetch-site", "same-site")
        ])));
        assert!(same_origin(&headers(&[
            host,
            ("origin", "http://127.0.0.1:8080")
        ])));
        assert!(!same_origin(&headers(&[
            host,
            ("origin", "http://evil.example")
        ])));
        assert!(!same_origin(&headers(&[host, ("origin", "null")])));
        assert!(!same_origin(&headers(&[host])));
    }
}
