//! The HTML of the authorization flow's log-in, consent and error pages, on the Super-App's
//! shell (`web::layout`): every value escaped, no framing, nothing inline, nothing from
//! elsewhere.

use super::ValidAuthorize;
use crate::web::form_guard::FormGuard;
use crate::web::layout::{count, page, page_with, when_ms};
use axum::http::StatusCode;
use axum::response::Response;
use maud::{html, Markup};
use selfcloud_core::Scope;

fn hidden(pairs: &[(&str, &str)]) -> Markup {
    html! { @for (name, value) in pairs { input type="hidden" name=(name) value=(value); } }
}

pub fn error(message: &str) -> Response {
    let body = html! { h1 { "This app's request cannot go on" } p.error role="alert" { (message) } };
    page(StatusCode::BAD_REQUEST, "Cannot authorize", None, body)
}

/// Asks the user to log in, then comes back to the same authorization request.
pub fn login(request: &[(&str, &str)], status: StatusCode, problem: Option<&str>, guard: FormGuard) -> Response {
    guard.page(status, "Log in", |token| {
        html! {
            h1 { "Log in to selfcloud" }
            p { "An app wants access to your instance. Log in to review its request." }
            @if let Some(problem) = problem { p.error role="alert" { (problem) } }
            form method="post" action="/oauth/login" {
                (token)
                (hidden(request))
                label { "Username" input type="text" name="username" autocomplete="username" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
        }
    })
}

/// One scope in plain words; the assistant's with the budget it comes with.
pub fn scope_words(scope: &Scope, tokens_per_day: Option<u64>) -> String {
    match (scope, tokens_per_day) {
        (Scope::LlmChat | Scope::LlmEmbed, Some(n)) => format!("{}, up to {} tokens a day", scope.describe(), count(n)),
        _ => scope.describe(),
    }
}

/// What the consent page offers: the request, who decides, and what the user may set.
pub struct ConsentView<'a> {
    pub req: &'a ValidAuthorize,
    pub username: &'a str,
    pub request: &'a [(&'a str, &'a str)],
    pub csrf: &'a str,
    /// The tier's daily token ceiling, when the app asks for the assistant.
    pub token_ceiling: Option<u64>,
    /// What the app already holds (incremental authorization asks only for the rest).
    pub held: Vec<Scope>,
    /// When the grant it holds ends by itself, if it does: kept unless the user chooses again.
    pub held_end: Option<u64>,
}

/// Names the app, its redirect host and each scope in plain words; each new scope can be
/// unticked, and a budget and an expiry set.
pub fn consent(v: &ConsentView) -> Response {
    let req = v.req;
    let redirect = url::Url::parse(&req.redirect_uri).ok();
    let host = redirect.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default();
    let new: Vec<&Scope> = req.scopes.iter().filter(|s| !v.held.iter().any(|h| h.covers(s))).collect();
    let body = html! {
        h1 { "Allow " q { (req.app.name) } " to use your instance?" }
        p { "Logged in as " strong { (v.username) } ". " q { (req.app.name) } " asks to:" }
        form method="post" action="/oauth/authorize" {
            (hidden(v.request))
            input type="hidden" name="csrf" value=(v.csrf);
            // The boxes below are the whole answer: none ticked grants nothing new.
            input type="hidden" name="consent_boxes" value="1";
            ul.consent {
                @for s in &new {
                    li { label.check {
                        input type="checkbox" name="grant_scope" value=(s.to_string()) checked;
                        " " (scope_words(s, v.token_ceiling)) " " small { code { (s.to_string()) } }
                    } }
                }
            }
            @if !v.held.is_empty() {
                p { "It can already:" }
                ul { @for s in &v.held { li { (scope_words(s, None)) } } }
            }
            @if let Some(ceiling) = v.token_ceiling {
                label { "Tokens a day it may spend on your assistant (at most " (count(ceiling)) ")"
                    input type="number" name="token_budget" min="0" max=(ceiling) placeholder=(ceiling); }
            }
            label { "For how long"
                select name="expires_in_days" {
                    @if let Some(end) = v.held_end {
                        option value="keep" selected { "Until " (when_ms(end.saturating_mul(1000))) ", as now" }
                    }
                    option value="" { "Until I revoke it" }
                    option value="1" { "For 1 day" }
                    option value="7" { "For 7 days" }
                    option value="30" { "For 30 days" }
                    option value="365" { "For a year" }
                }
            }
            p { "You will be sent back to " strong { (host) } ". You can revoke this access at any time from your dashboard." }
            div.actions {
                button type="submit" name="decision" value="allow" { "Allow" }
                // Saying no needs no valid field.
                button.secondary type="submit" name="decision" value="deny" formnovalidate { "Deny" }
            }
        }
    };
    // The form's answer redirects to the app: browsers hold that redirect to `form-action` too.
    let origin = redirect.map(|u| u.origin().ascii_serialization()).filter(|o| o != "null").unwrap_or_default();
    let form_action = if origin.is_empty() { String::new() } else { format!(" {origin}") };
    page_with(StatusCode::OK, "Authorize app", None, body, &form_action)
}
