//! The HTML of the log-in, consent and error pages. Every value is escaped; pages refuse to be
//! framed (clickjacking) and load nothing from elsewhere.

use super::ValidAuthorize;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width\">\
         <title>{title} - selfcloud</title><style>body{{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;color:#222}}\
         li{{margin:.4rem 0}}button{{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}}input[type=text],input[type=password]{{display:block;width:100%;padding:.4rem;margin:.3rem 0 1rem}}\
         .error{{color:#a00}}</style></head><body>{body}</body></html>",
        title = escape(title)
    );
    let mut resp = (status, Html(html)).into_response();
    let h = resp.headers_mut();
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn hidden(pairs: &[(&str, &str)]) -> String {
    pairs
        .iter()
        .map(|(name, value)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape(name), escape(value)))
        .collect()
}

pub fn error(message: &str) -> Response {
    page(
        StatusCode::BAD_REQUEST,
        "Cannot authorize",
        &format!("<h1>This app's request cannot go on</h1><p class=\"error\">{}</p>", escape(message)),
    )
}

/// Asks the user to log in, then comes back to the same authorization request.
pub fn login(request: &[(&str, &str)], failed: bool) -> Response {
    let note = if failed { "<p class=\"error\">Wrong username or password.</p>" } else { "" };
    let body = format!(
        "<h1>Log in to selfcloud</h1><p>An app wants access to your instance. Log in to review its request.</p>{note}\
         <form method=\"post\" action=\"/oauth/login\">{hidden}\
         <label>Username<input type=\"text\" name=\"username\" autocomplete=\"username\" required></label>\
         <label>Password<input type=\"password\" name=\"password\" autocomplete=\"current-password\" required></label>\
         <button type=\"submit\">Log in</button></form>",
        hidden = hidden(request)
    );
    page(if failed { StatusCode::UNAUTHORIZED } else { StatusCode::OK }, "Log in", &body)
}

/// Names the app and each scope in plain words; each scope can be unticked.
/// With `token_ceiling` (the app asks for the assistant) the user may set a daily token budget.
pub fn consent(
    req: &ValidAuthorize,
    username: &str,
    request: &[(&str, &str)],
    csrf: &str,
    token_ceiling: Option<u64>,
) -> Response {
    let scopes: String = req
        .scopes
        .iter()
        .map(|s| {
            format!(
                "<li><label><input type=\"checkbox\" name=\"grant_scope\" value=\"{v}\" checked> {d} <small><code>{v}</code></small></label></li>",
                v = escape(&s.to_string()),
                d = escape(&s.describe())
            )
        })
        .collect();
    let budget = token_ceiling
        .map(|ceiling| {
            format!(
                "<p><label>Tokens a day it may spend on your assistant (at most {ceiling}) \
                 <input type=\"number\" name=\"token_budget\" min=\"0\" max=\"{ceiling}\" \
                 placeholder=\"{ceiling}\"></label></p>"
            )
        })
        .unwrap_or_default();
    let host =
        url::Url::parse(&req.redirect_uri).ok().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    let body = format!(
        "<h1>Allow <q>{app}</q> to use your instance?</h1>\
         <p>Logged in as <strong>{user}</strong>. <q>{app}</q> asks to:</p>\
         <form method=\"post\" action=\"/oauth/authorize\">{hidden}<ul>{scopes}</ul>{budget}\
         <p>You will be sent back to <strong>{host}</strong>. You can revoke this access at any time.</p>\
         <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button>\
         <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button></form>",
        app = escape(&req.app.name),
        user = escape(username),
        host = escape(&host),
        hidden = hidden(&[request, &[("csrf", csrf)]].concat()),
    );
    page(StatusCode::OK, "Authorize app", &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape("<script>\"x\"&'y'</script>"), "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;");
    }
}
