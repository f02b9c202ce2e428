//! The page shell every Super-App page shares (the consent pages too), and small formatters.

use super::WebSession;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use maud::{html, Markup, DOCTYPE};
use selfcloud_core::Error;

/// A whole page: its title, the dashboard's navigation when logged in, the body.
pub fn page(status: StatusCode, title: &str, session: Option<&WebSession>, body: Markup) -> Response {
    page_with(status, title, session, body, "")
}

/// [`page`], letting its forms go to `form_action` too (the consent page's redirect origin).
pub fn page_with(
    status: StatusCode,
    title: &str,
    session: Option<&WebSession>,
    body: Markup,
    form_action: &str,
) -> Response {
    let markup = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if let Some(s) = session { meta name="csrf-token" content=(s.csrf); }
                title { (title) " \u{2013} selfcloud" }
                link rel="stylesheet" href="/static/selfcloud.css";
                script src="/static/selfcloud.js" defer {}
            }
            body {
                header {
                    a.brand href=(if session.is_some() { "/me" } else { "/" }) { "selfcloud" }
                    @if let Some(s) = session {
                        nav aria-label="Dashboard" {
                            a href="/me" { "Overview" }
                            a href="/me/assistant" { "Assistant" }
                            a href="/me/log" { "Access log" }
                            a href="/me/account" { "Account" }
                            form.inline method="post" action="/me/logout" {
                                input type="hidden" name="csrf" value=(s.csrf);
                                button.link type="submit" { "Log out " (s.username) }
                            }
                        }
                    }
                }
                main { (body) }
            }
        }
    };
    let resp = (status, Html(markup.into_string())).into_response();
    super::secure(resp, form_action)
}

/// An error as a page, with the error's own status.
pub fn error_page(e: &Error) -> Response {
    if let Some(detail) = &e.detail {
        tracing::error!(detail = %detail, "a page failed");
    }
    let body = html! {
        h1 { "That did not work" }
        p.error role="alert" { (e.message) }
        p { a href="/me" { "Back to your dashboard" } }
    };
    page(e.status(), "Error", None, body)
}

/// The hidden CSRF field of a dashboard form.
pub fn csrf_field(s: &WebSession) -> Markup {
    html! { input type="hidden" name="csrf" value=(s.csrf); }
}

/// Bytes as a person reads them.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let (mut value, mut unit) = (n as f64, 0);
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} bytes")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A moment (Unix milliseconds) as `2026-12-04 03:12 UTC`.
pub fn when_ms(ms: u64) -> String {
    match time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) {
        Ok(t) => {
            format!("{:04}-{:02}-{:02} {:02}:{:02} UTC", t.year(), u8::from(t.month()), t.day(), t.hour(), t.minute())
        }
        Err(_) => "?".into(),
    }
}

/// A whole number with thousands separated, as the consent page writes budgets.
pub fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_read_as_people_write_them() {
        assert_eq!(bytes(512), "512 bytes");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(64 << 20), "64.0 MiB");
        assert_eq!(when_ms(1_796_354_000_000), "2026-12-04 03:13 UTC");
        assert_eq!(count(20_000), "20,000");
        assert_eq!(count(999), "999");
        assert_eq!(count(1_234_567), "1,234,567");
    }

    #[test]
    fn values_are_escaped_in_pages() {
        let e = Error::invalid("<script>alert(1)</script>");
        let resp = error_page(&e);
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let csp = resp.headers()["content-security-policy"].to_str().unwrap().to_owned();
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
    }
}
