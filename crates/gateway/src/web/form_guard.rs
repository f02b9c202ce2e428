//! The CSRF token of a form posted before any session exists: sign-up, log-in, recovery, and
//! the consent flow's log-in. Without it, another site could post the attacker's credentials
//! into a victim's browser and log it into the attacker's account (login CSRF), and the
//! victim's records would go there.
//!
//! The page sets a random form cookie for the path its form posts to, and the form carries a
//! token derived from that cookie, in the same way a session's CSRF token is derived from its
//! session. Another site can neither read the cookie nor derive the token. This comes on top of
//! the Origin check, for browsers that send no `Origin`. Over HTTPS the cookie is `__Host-`, so
//! no other origin can plant one either. Over plain HTTP, a page on another port of the same host
//! could plant one, since cookies ignore ports; there the Origin check is what holds.

use super::layout;
use super::session::{cookie, from_our_pages, with_cookies};
use crate::oauth::{csrf_matches, csrf_token};
use crate::state::AppState;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use maud::{html, Markup};
use selfcloud_control::tokens::hash_token;

/// Over HTTPS, `__Host-` (Secure, Path=/, this origin only). Over plain HTTP it is limited to
/// the form's own path, as the session cookie is, since cookies ignore ports.
fn cookie_name(secure: bool) -> &'static str {
    if secure {
        "__Host-selfcloud_form"
    } else {
        "selfcloud_form"
    }
}

/// A pre-session form's token, and the cookie it comes from when the page sets a new one.
pub struct FormGuard {
    token: String,
    set_cookie: Option<HeaderValue>,
}

impl FormGuard {
    /// The guard of a page whose form posts under `path` (`/login`, `/oauth`...). It reuses the
    /// browser's form cookie there if it has one, so a form in another tab stays good; otherwise
    /// it makes a new one.
    pub fn for_page(s: &AppState, headers: &HeaderMap, path: &str) -> FormGuard {
        let name = cookie_name(s.secure_cookies);
        if let Some(value) = cookie(headers, name).filter(|v| is_form_cookie(v)) {
            return FormGuard { token: csrf_token(&hash_token(value)), set_cookie: None };
        }
        let value: String = (0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect();
        let (path, secure) = if s.secure_cookies { ("/", "; Secure") } else { (path, "") };
        // A browser session's cookie: it ends when the browser closes, as a form left open would.
        let line = format!("{name}={value}; Path={path}{secure}; HttpOnly; SameSite=Lax");
        let set_cookie = HeaderValue::from_str(&line).expect("hex is a cookie value");
        FormGuard { token: csrf_token(&hash_token(&value)), set_cookie: Some(set_cookie) }
    }

    /// The page of the form: `body` is given the form's hidden token field to put in it, and the
    /// page sets the cookie that token comes from when it is new.
    pub fn page(self, status: StatusCode, title: &str, body: impl FnOnce(Markup) -> Markup) -> Response {
        let field = html! { input type="hidden" name="csrf" value=(self.token); };
        with_cookies(layout::page(status, title, None, body(field)), self.set_cookie.into_iter().collect())
    }
}

/// A form cookie as this module makes them (32 random bytes in hex). Anything else a browser
/// sends under that name, planted or garbled, is replaced rather than trusted.
fn is_form_cookie(value: &str) -> bool {
    value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// What a pre-session form's checks found.
#[derive(Debug, PartialEq, Eq)]
pub enum FormCheck {
    Holds,
    /// Sent from another site: refused outright.
    CrossSite,
    /// From our own origin, but without the token of this browser's form cookie: a page left open
    /// across a browser restart (the cookie ends with the browser) or a forgery. The form is shown
    /// again, fresh, and nothing else happens.
    Stale,
}

/// Checks a pre-session form: its `Origin`, then its `csrf` field (`sent`) against the browser's
/// form cookie.
pub fn check_form(s: &AppState, headers: &HeaderMap, sent: Option<&str>) -> FormCheck {
    if !from_our_pages(s, headers) {
        return FormCheck::CrossSite;
    }
    match cookie(headers, cookie_name(s.secure_cookies)) {
        Some(value) if csrf_matches(sent, &hash_token(value)) => FormCheck::Holds,
        _ => FormCheck::Stale,
    }
}

/// What a stale form's page says above it.
pub const STALE: &str =
    "This form was too old to send, or not sent from this page. It is ready again: send it once more.";
