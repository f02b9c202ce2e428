//! The browser's web session: its cookies, the caller it stands for on the Super-App's pages,
//! and the checks every form passes (same origin, CSRF token).

use crate::auth::Caller;
use crate::oauth::{csrf_matches, csrf_token, sent_from_our_pages};
use crate::state::AppState;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Redirect, Response};
use selfcloud_control::tokens::hash_token;
use selfcloud_control::TokenKind;
use std::sync::Arc;

/// The web session cookie's name. Over HTTPS it is `__Host-` prefixed (Secure, Path=/, no
/// Domain: only this origin can set or read it). Over plain HTTP (loopback development) it is
/// limited to the pages that need it, `/oauth` and `/me`: cookies ignore ports, so an app's
/// loopback callback on another port of this host would otherwise receive it with every request.
pub fn web_cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-selfcloud_web"
    } else {
        "selfcloud_web"
    }
}

fn paths(secure: bool) -> &'static [&'static str] {
    if secure {
        &["/"]
    } else {
        &["/oauth", "/me"]
    }
}

fn cookie_line(secure: bool, path: &str, value: &str, max_age: u64) -> HeaderValue {
    let name = web_cookie_name(secure);
    let secure_attr = if secure { "; Secure" } else { "" };
    let line = format!("{name}={value}; Path={path}{secure_attr}; HttpOnly; SameSite=Lax; Max-Age={max_age}");
    HeaderValue::from_str(&line).expect("a token is a cookie value")
}

/// The `Set-Cookie` lines of a new web session. `now` is the instant it was made at, so the
/// cookie lives exactly as long as the session.
pub fn session_cookies(secure: bool, token: &str, expires_at: u64, now: u64) -> Vec<HeaderValue> {
    let max_age = expires_at.saturating_sub(now);
    paths(secure).iter().map(|path| cookie_line(secure, path, token, max_age)).collect()
}

/// The `Set-Cookie` lines that end the web session in the browser.
pub fn clear_cookies(secure: bool) -> Vec<HeaderValue> {
    paths(secure).iter().map(|path| cookie_line(secure, path, "", 0)).collect()
}

pub fn with_cookies(mut resp: Response, cookies: Vec<HeaderValue>) -> Response {
    for c in cookies {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(n, _)| *n == name && !n.is_empty())
        .map(|(_, v)| v)
        .filter(|v| !v.is_empty())
}

/// Where a log-in may send the browser next: a page of the dashboard, given as a path. Anything
/// else (another host, `//host`, a backslash a browser reads as a slash, a scheme, control
/// characters) is not followed: the dashboard itself is.
pub fn safe_next(next: Option<&str>) -> &str {
    let Some(next) = next else { return "/me" };
    let on_dashboard = next == "/me" || next.starts_with("/me/") || next.starts_with("/me?");
    let plain = next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\');
    if on_dashboard && plain && !next.contains("//") {
        next
    } else {
        "/me"
    }
}

/// The owner, on a dashboard page, through the web session cookie. A page without one sends the
/// browser to the log-in page (and back to the page after); a form without one is refused.
pub struct WebSession {
    pub caller: Caller,
    pub username: String,
    pub csrf: String,
}

pub enum NoSession {
    LogIn(String),
    Refused(Response),
}

impl IntoResponse for NoSession {
    fn into_response(self) -> Response {
        match self {
            NoSession::LogIn(next) => {
                let query = serde_urlencoded::to_string([("next", next)]).unwrap_or_default();
                Redirect::to(&format!("/login?{query}")).into_response()
            }
            NoSession::Refused(resp) => resp,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for WebSession {
    type Rejection = NoSession;
    async fn from_request_parts(parts: &mut Parts, s: &Arc<AppState>) -> Result<Self, NoSession> {
        let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
        let refuse = |e: selfcloud_core::Error| NoSession::Refused(super::layout::error_page(&e));
        if !is_read && !from_our_pages(s, &parts.headers) {
            return Err(refuse(selfcloud_core::Error::forbidden(
                "this form must be sent from this server's own pages",
            )));
        }
        let session = cookie(&parts.headers, web_cookie_name(s.secure_cookies))
            .and_then(|token| Some((s.control.authenticate(token, s.clock.now())?, hash_token(token))))
            .filter(|(info, _)| info.kind == TokenKind::Web);
        let Some((info, token_hash)) = session else {
            let next = parts.uri.path_and_query().map_or("/me", |p| p.as_str());
            return Err(if is_read {
                NoSession::LogIn(safe_next(Some(next)).to_owned())
            } else {
                refuse(selfcloud_core::Error::unauthenticated("your session ended; log in again"))
            });
        };
        let caller = Caller { token: info, token_hash };
        // The dashboard counts against the owner's own request budget, like their API calls.
        let tier = s.control.tier_of(caller.token.instance_id);
        s.rate.check_token(&caller.token.rate_key, tier).map_err(refuse)?;
        let username = s.control.profile(caller.token.user_id).await.map_err(refuse)?.username;
        let csrf = csrf_token(&caller.token_hash);
        Ok(WebSession { caller, username, csrf })
    }
}

impl WebSession {
    /// A form's token: the hidden `csrf` field, or the `x-csrf-token` header of the page's script.
    pub fn check_csrf(&self, sent: Option<&str>) -> Result<(), selfcloud_core::Error> {
        if csrf_matches(sent, &self.caller.token_hash) {
            Ok(())
        } else {
            Err(selfcloud_core::Error::forbidden("the form's CSRF token is missing or wrong; reload the page"))
        }
    }
}

/// A dashboard form, posted: the session, and the form's fields once its `csrf` field matched
/// (a handler cannot forget the check). A form that does not read as `T` is an error page, as
/// is one without a session or from another origin.
pub struct Posted<T> {
    pub session: WebSession,
    pub form: T,
}

/// A form with nothing but its CSRF token (a button: revoke, log out, export).
#[derive(serde::Deserialize)]
pub struct Empty {}

/// The largest form a dashboard page posts (a memory, a password, a few fields).
const MAX_FORM_BYTES: usize = 64 * 1024;

impl<T: serde::de::DeserializeOwned> axum::extract::FromRequest<Arc<AppState>> for Posted<T> {
    type Rejection = Response;
    async fn from_request(req: axum::extract::Request, s: &Arc<AppState>) -> Result<Self, Response> {
        use selfcloud_core::Error;
        let page = |e: Error| super::layout::error_page(&e);
        let (mut parts, body) = req.into_parts();
        let session = WebSession::from_request_parts(&mut parts, s).await.map_err(IntoResponse::into_response)?;
        let is_form = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        if !is_form {
            return Err(page(Error::new(selfcloud_core::ErrorCode::UnsupportedMediaType, "send this page's form")));
        }
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
            .await
            .map_err(|_| page(Error::new(selfcloud_core::ErrorCode::TooLarge, "the form is too large")))?;
        let sent: Vec<String> =
            url::form_urlencoded::parse(&bytes).filter(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned()).collect();
        // Exactly one token: a second one is not this page's form.
        let sent = if sent.len() == 1 { sent.first().map(String::as_str) } else { None };
        session.check_csrf(sent).map_err(page)?;
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| page(Error::invalid(format!("the form is malformed: {e}"))))?;
        Ok(Posted { session, form })
    }
}

/// Whether a browser sent this form from one of this origin's pages.
pub fn from_our_pages(s: &AppState, headers: &HeaderMap) -> bool {
    let h = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    sent_from_our_pages(h("sec-fetch-site"), h("origin"), &s.issuer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_dashboard_paths_are_followed_after_log_in() {
        for good in ["/me", "/me/log?actor=owner", "/me/assistant"] {
            assert_eq!(safe_next(Some(good)), good);
        }
        for bad in [
            "https://evil.example/",
            "//evil.example/me",
            "/me//evil.example",
            "/\\evil.example",
            "/me/\\evil",
            "/meevil",
            "/oauth/authorize",
            "javascript:alert(1)",
            "/me/\nx",
            "",
        ] {
            assert_eq!(safe_next(Some(bad)), "/me", "{bad:?}");
        }
        assert_eq!(safe_next(None), "/me");
    }

    #[test]
    fn plain_http_cookies_cover_only_the_pages_that_need_them() {
        let lines = session_cookies(false, "scw_x", 100, 40);
        let lines: Vec<_> = lines.iter().map(|v| v.to_str().unwrap()).collect();
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("selfcloud_web=scw_x; Path=/oauth;"), "{}", lines[0]);
        assert!(lines[1].contains("Path=/me;") && lines[1].contains("Max-Age=60"), "{}", lines[1]);
        let secure = session_cookies(true, "scw_x", 100, 40);
        let line = secure[0].to_str().unwrap();
        assert!(line.starts_with("__Host-selfcloud_web=scw_x; Path=/; Secure; HttpOnly; SameSite=Lax"), "{line}");
        assert!(clear_cookies(false).iter().all(|c| c.to_str().unwrap().contains("Max-Age=0")));
    }
}
