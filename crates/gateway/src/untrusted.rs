//! An instance's answer is untrusted: code that took over an instance answers what it likes, and
//! the gateway hands the answer to a browser on the gateway's own origin. So every forwarded
//! answer is rebuilt here before it leaves: a success keeps its body only under the media type
//! its route promises, and only the headers on [`KEPT`]; an error becomes the gateway's own JSON
//! error, rebuilt from the code it names (its status comes from the code, not from the
//! instance); anything else is an internal error. Every answer then carries `nosniff`, a
//! `Content-Security-Policy` that runs nothing, and `no-store`.
//!
//! The rules are pure functions of the answer's head ([`screen`]); [`answer`] applies them.

use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use selfcloud_core::{Error, ErrorCode};
use selfcloud_instance::part::Answer;
use std::time::Duration;

/// What a route's success may be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Promise {
    /// `application/json`: everything but the two below.
    Json,
    /// JSON, or a stream of server-sent events (`"stream": true`): the LLM and the assistant.
    JsonOrEvents,
    /// A tar archive: the export.
    Tar,
}

const JSON: &str = "application/json";
const EVENTS: &str = "text/event-stream";
const TAR: &str = "application/x-tar";

/// An answer of the gateway's origin runs nothing, is framed by nobody and loads nothing.
pub const ANSWER_CSP: &str = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'; sandbox";

/// The headers of a success kept from the instance (each checked below); every other one (a
/// cookie, a redirect, CORS, a policy of its own) is dropped.
const KEPT: [HeaderName; 3] = [header::CONTENT_LENGTH, header::ETAG, header::RETRY_AFTER];

/// An error's body is read up to this many bytes, for at most [`ERROR_READ`]: the error
/// contract's body is small, and a body that never ends must not hold the call.
const ERROR_BODY_MAX: usize = 16 * 1024;
const ERROR_READ: Duration = Duration::from_secs(5);
/// The longest message kept from an instance's error.
const MESSAGE_CHARS: usize = 1000;
/// The longest wait an instance may ask a client for: a token budget's day.
const RETRY_AFTER_MAX: u64 = 86_400;

impl Promise {
    /// What a route answering `answer` promises.
    pub fn of(answer: Answer) -> Promise {
        match answer {
            Answer::Json | Answer::Created | Answer::Empty => Promise::Json,
            Answer::JsonOrEvents => Promise::JsonOrEvents,
            Answer::Archive => Promise::Tar,
        }
    }

    /// The media type a success of this route is sent as, if `content_type` is one it may be.
    fn media_type(self, content_type: Option<&HeaderValue>) -> Option<&'static str> {
        let given = content_type?.to_str().ok()?.split(';').next()?.trim().to_ascii_lowercase();
        let allowed: &[&'static str] = match self {
            Promise::Json => &[JSON],
            Promise::JsonOrEvents => &[JSON, EVENTS],
            Promise::Tar => &[TAR],
        };
        allowed.iter().copied().find(|t| *t == given)
    }
}

/// What becomes of an answer, by its head.
#[derive(Debug, PartialEq, Eq)]
pub enum Screened {
    /// A success: its body under these headers.
    Pass(HeaderMap),
    /// An error: read its body and rebuild it ([`rebuild`]), keeping this `Retry-After`.
    Error(Option<Duration>),
    /// Not an answer the route gives.
    Refuse(Error),
}

fn refused(why: &str) -> Error {
    Error::internal(format!("the instance gave an answer this route never gives ({why})"))
}

/// A `Retry-After` in seconds, if it is one and not longer than [`RETRY_AFTER_MAX`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let secs: u64 = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    (secs <= RETRY_AFTER_MAX).then(|| Duration::from_secs(secs))
}

/// The rules for an answer with `status` and `headers` on a route that promises `promise`.
pub fn screen(status: StatusCode, headers: &HeaderMap, promise: Promise) -> Screened {
    if status.is_client_error() || status.is_server_error() {
        return Screened::Error(retry_after(headers));
    }
    if ![StatusCode::OK, StatusCode::CREATED, StatusCode::NO_CONTENT].contains(&status) {
        return Screened::Refuse(refused(&format!("status {}", status.as_u16())));
    }
    let mut kept = HeaderMap::new();
    if status != StatusCode::NO_CONTENT {
        let Some(media_type) = promise.media_type(headers.get(header::CONTENT_TYPE)) else {
            return Screened::Refuse(refused("its content type"));
        };
        kept.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    }
    for name in KEPT {
        let Some(value) = headers.get(&name) else { continue };
        let fine = match name {
            header::CONTENT_LENGTH => value.to_str().is_ok_and(|v| v.parse::<u64>().is_ok()),
            // A record's rev: a quoted run of digits.
            header::ETAG => value.to_str().is_ok_and(|v| {
                v.len() <= 24
                    && v.len() >= 3
                    && v.starts_with('"')
                    && v.ends_with('"')
                    && v[1..v.len() - 1].bytes().all(|b| b.is_ascii_digit())
            }),
            _ => retry_after(headers).is_some(),
        };
        if fine {
            kept.insert(name, value.clone());
        }
    }
    Screened::Pass(kept)
}

/// The gateway's error for an instance's error answer of `status` with `body`: the code it
/// names, with its message cleaned (no control characters, at most [`MESSAGE_CHARS`]); an
/// answer that is no error of the contract, or whose code does not fit its status's class,
/// is an internal error.
pub fn rebuild(status: StatusCode, body: &[u8], retry_after: Option<Duration>) -> Error {
    let fits = |e: &Error| e.status().is_server_error() == status.is_server_error();
    match Error::from_body(body, None).filter(fits) {
        Some(e) => {
            let message: String = e.message.chars().filter(|c| !c.is_control()).take(MESSAGE_CHARS).collect();
            let retry_after = retry_after.filter(|_| {
                matches!(e.code, ErrorCode::RateLimited | ErrorCode::BudgetExceeded | ErrorCode::Unavailable)
            });
            Error { retry_after, ..Error::new(e.code, message) }
        }
        None => Error::internal(format!("the instance failed with {} and no error of its protocol", status.as_u16())),
    }
}

/// The headers every forwarded answer carries, whatever the instance said.
fn fence(headers: &mut HeaderMap) {
    headers.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(ANSWER_CSP));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The gateway's own answer for `e`, fenced.
fn error_answer(e: Error) -> Response {
    let mut resp = crate::error::ApiError(e).into_response();
    fence(resp.headers_mut());
    resp
}

/// Rebuilds the instance's answer `resp` on a route that promises `promise`.
pub async fn answer(resp: Response, promise: Promise) -> Response {
    let (parts, body) = resp.into_parts();
    let mut out = match screen(parts.status, &parts.headers, promise) {
        Screened::Pass(headers) => {
            let mut out = Response::new(body);
            *out.status_mut() = parts.status;
            *out.headers_mut() = headers;
            fence(out.headers_mut());
            out
        }
        Screened::Refuse(e) => error_answer(e),
        Screened::Error(retry_after) => {
            let read = tokio::time::timeout(ERROR_READ, http_body_util::Limited::new(body, ERROR_BODY_MAX).collect());
            let bytes = match read.await {
                Ok(Ok(collected)) => collected.to_bytes(),
                _ => Default::default(),
            };
            error_answer(rebuild(parts.status, &bytes, retry_after))
        }
    };
    // What the gateway put on the answer for itself (the scope it used) stays.
    *out.extensions_mut() = parts.extensions;
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Body;
    use axum::http::Method;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.append(*name, HeaderValue::from_static(value));
        }
        h
    }

    #[test]
    fn each_route_family_promises_its_media_types() {
        let promise = |method, path| match selfcloud_instance::service::resolve(&method, path).unwrap() {
            selfcloud_instance::part::Resolved::Found(route, _) => Promise::of(route.answer),
            _ => panic!("{path} is declared"),
        };
        assert_eq!(promise(Method::GET, "/v1/export"), Promise::Tar);
        assert_eq!(promise(Method::POST, "/v1/llm/chat/completions"), Promise::JsonOrEvents);
        assert_eq!(promise(Method::POST, "/v1/assistant/chat"), Promise::JsonOrEvents);
        assert_eq!(promise(Method::GET, "/v1/storage/notes/a"), Promise::Json);
        assert_eq!(promise(Method::POST, "/v1/import"), Promise::Json);
    }

    #[test]
    fn a_success_keeps_only_its_promised_type_and_the_kept_headers() {
        let hostile = head(&[
            ("content-type", "application/JSON; charset=utf-8"),
            ("etag", "\"17\""),
            ("content-length", "12"),
            ("set-cookie", "selfcloud_web=planted"),
            ("location", "https://attacker.invalid/"),
            ("access-control-allow-origin", "*"),
            ("content-security-policy", "script-src *"),
        ]);
        let Screened::Pass(kept) = screen(StatusCode::OK, &hostile, Promise::Json) else { panic!() };
        let names: Vec<&str> = kept.keys().map(HeaderName::as_str).collect();
        assert_eq!(names, ["content-type", "content-length", "etag"]);
        assert_eq!(kept[header::CONTENT_TYPE], "application/json");
        // The wrong type for the route, HTML above all, is refused.
        for (ct, promise) in
            [("text/html", Promise::Json), ("text/event-stream", Promise::Json), ("application/json", Promise::Tar)]
        {
            let h = head(&[("content-type", ct)]);
            assert!(matches!(screen(StatusCode::OK, &h, promise), Screened::Refuse(_)), "{ct}");
        }
        assert!(matches!(screen(StatusCode::OK, &HeaderMap::new(), Promise::Json), Screened::Refuse(_)));
        // A tag that is not a rev is dropped.
        let h = head(&[("content-type", "application/json"), ("etag", "\"<script>\"")]);
        let Screened::Pass(kept) = screen(StatusCode::OK, &h, Promise::Json) else { panic!() };
        assert!(kept.get(header::ETAG).is_none());
    }

    #[test]
    fn only_the_statuses_routes_give_pass() {
        let h = head(&[("content-type", "application/json"), ("location", "https://attacker.invalid/")]);
        for status in [StatusCode::FOUND, StatusCode::SWITCHING_PROTOCOLS, StatusCode::PARTIAL_CONTENT] {
            assert!(matches!(screen(status, &h, Promise::Json), Screened::Refuse(_)), "{status}");
        }
        assert!(matches!(screen(StatusCode::NO_CONTENT, &HeaderMap::new(), Promise::Json), Screened::Pass(_)));
        let h = head(&[("retry-after", "7")]);
        assert_eq!(
            screen(StatusCode::TOO_MANY_REQUESTS, &h, Promise::Json),
            Screened::Error(Some(Duration::from_secs(7)))
        );
        // A budget spent for the day waits until midnight UTC; longer than a day is no wait.
        let h = head(&[("retry-after", "86400")]);
        assert_eq!(
            screen(StatusCode::TOO_MANY_REQUESTS, &h, Promise::Json),
            Screened::Error(Some(Duration::from_secs(86_400)))
        );
        let h = head(&[("retry-after", "86401")]);
        assert_eq!(screen(StatusCode::SERVICE_UNAVAILABLE, &h, Promise::Json), Screened::Error(None));
    }

    #[test]
    fn an_error_is_rebuilt_from_its_code_or_becomes_an_internal_error() {
        let wire = br#"{"error":{"code":"not_found","message":"no such\u001b[31m record"}}"#;
        let e = rebuild(StatusCode::NOT_FOUND, wire, None);
        assert_eq!((e.code, e.message.as_str()), (ErrorCode::NotFound, "no such[31m record"));
        // The status follows the code, not the instance.
        assert_eq!(rebuild(StatusCode::IM_A_TEAPOT, wire, None).status(), StatusCode::NOT_FOUND);
        // A page, or a code that does not fit the status's class, is no error of the protocol.
        let page = b"<html><script>alert(document.cookie)</script></html>";
        let e = rebuild(StatusCode::INTERNAL_SERVER_ERROR, page, None);
        assert_eq!(e.code, ErrorCode::Internal);
        assert!(!e.message.contains('<'), "{}", e.message);
        let e = rebuild(StatusCode::INTERNAL_SERVER_ERROR, wire, None);
        assert_eq!(e.code, ErrorCode::Internal);
        // A long message is cut; a wait is kept only where the code means one.
        let long = format!(r#"{{"error":{{"code":"rate_limited","message":"{}"}}}}"#, "x".repeat(5000));
        let e = rebuild(StatusCode::TOO_MANY_REQUESTS, long.as_bytes(), Some(Duration::from_secs(3)));
        assert_eq!((e.message.len(), e.retry_after), (MESSAGE_CHARS, Some(Duration::from_secs(3))));
        assert_eq!(rebuild(StatusCode::NOT_FOUND, wire, Some(Duration::from_secs(3))).retry_after, None);
    }

    #[tokio::test]
    async fn the_answer_is_fenced_and_an_error_body_is_replaced() {
        let mut hostile = Response::new(Body::from("<script>alert(1)</script>"));
        *hostile.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        hostile.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/html"));
        hostile.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_static("selfcloud_web=x"));
        let out = answer(hostile, Promise::Tar).await;
        assert_eq!(out.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert!(out.headers().get(header::SET_COOKIE).is_none());
        assert_eq!(out.headers()[header::CONTENT_TYPE], "application/json");
        assert_eq!(out.headers()[header::CONTENT_SECURITY_POLICY], ANSWER_CSP);
        let body = out.into_body().collect().await.unwrap().to_bytes();
        let e = Error::from_body(&body, None).unwrap();
        assert_eq!(e.code, ErrorCode::Internal);
    }
}
