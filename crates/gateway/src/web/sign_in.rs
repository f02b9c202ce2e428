//! Signing up, logging in and out, and recovering an account with its code. Each form must come
//! from this origin's own pages with its token (`form_guard`: a form posted from another site
//! could log the victim's browser into the attacker's account), and each attempt counts against
//! the address's rate limit and, for a log-in or recovery, against the username's (`throttle`).

use super::form_guard::{check_form, FormCheck, FormGuard, STALE};
use super::layout::{csrf_field, error_page, page};
use super::session::{clear_cookies, safe_next, session_cookies, with_cookies, Empty, Posted, WebSession};
use crate::state::AppState;
use crate::throttle;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::Form;
use maud::html;
use selfcloud_control::tokens::hash_token;
use selfcloud_control::TokenKind;
use selfcloud_core::{Error, ErrorCode, UserId};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

pub async fn landing() -> Response {
    let body = html! {
        h1 { "Your own private cloud" }
        p { "An instance of your own: your records, encrypted at rest; a private assistant whose \
             questions and answers never leave it; apps that reach it only with your consent, \
             for what you allow." }
        p.actions {
            a.button href="/signup" { "Create your instance" }
            a.button.secondary href="/login" { "Log in" }
        }
    };
    page(StatusCode::OK, "Welcome", None, body)
}

#[derive(Deserialize, Default)]
pub struct Next {
    next: Option<String>,
}

fn signup_form(
    s: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    username: &str,
    problem: Option<&str>,
) -> Response {
    FormGuard::for_page(s, headers, "/signup").page(status, "Sign up", |token| html! {
        h1 { "Create your instance" }
        @if let Some(p) = problem { p.error role="alert" { (p) } }
        form method="post" action="/signup" {
            (token)
            label { "Username" input type="text" name="username" value=(username) autocomplete="username"
                required minlength="3" maxlength="32" pattern="[a-z0-9][a-z0-9_.\\-]{2,31}"
                aria-describedby="username-help"; }
            small #username-help { "3 to 32 lowercase letters, digits, dots, dashes or underscores." }
            label { "Password" input type="password" name="password" autocomplete="new-password" required minlength="8"; }
            label { "Password again" input type="password" name="password_again" autocomplete="new-password" required; }
            button type="submit" { "Create my instance" }
        }
        p { "Already have one? " a href="/login" { "Log in" } }
    })
}

pub async fn signup_page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    signup_form(&s, &headers, StatusCode::OK, "", None)
}

#[derive(Deserialize)]
pub struct SignupForm {
    username: String,
    password: String,
    password_again: String,
    /// The form's token (a second one fails to read, as a duplicate field).
    csrf: Option<String>,
}

/// The one page that shows a recovery code (sign-up, or a recovery spends the old one). The
/// dashboard opens once the person says they saved it.
fn recovery_code_page(session: &WebSession, code: &str, cookies: Vec<axum::http::HeaderValue>) -> Response {
    let body = html! {
        h1 { "Save your recovery code" }
        p { "If you forget your password, this code is the only way back into your instance: \
             your records are encrypted with a key that only your password and this code can open. \
             It is shown once, now." }
        p.code { code #recovery-code { (code) } }
        form method="post" action="/me/saved" {
            (csrf_field(session))
            label.check { input type="checkbox" name="saved" value="yes" required; " I have saved my recovery code somewhere safe" }
            button type="submit" { "Continue to my dashboard" }
        }
    };
    with_cookies(page(StatusCode::OK, "Your recovery code", None, body), cookies)
}

/// Starts the web session of a person just verified (signed up, recovered): no second
/// password derivation.
async fn start(s: &AppState, user: UserId) -> Result<(WebSession, Vec<axum::http::HeaderValue>), Error> {
    let now = s.clock.now();
    let (token, expires) = s.control.start_session_for(user, TokenKind::Web, now).await?;
    let info = s.control.authenticate(&token, now).ok_or_else(|| Error::internal("a new session did not open"))?;
    let caller = crate::auth::Caller { token: info, token_hash: hash_token(&token) };
    let username = s.control.profile(user).await?.username;
    let csrf = crate::oauth::csrf_token(&caller.token_hash);
    Ok((WebSession { caller, username, csrf }, session_cookies(s.secure_cookies, &token, expires, now)))
}

fn cross_site() -> Response {
    error_page(&Error::forbidden("this form must be sent from this server's own pages"))
}

pub async fn signup(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<SignupForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return signup_form(&s, &headers, StatusCode::BAD_REQUEST, "", Some("Fill in every field."));
    };
    match check_form(&s, &headers, f.csrf.as_deref()) {
        FormCheck::Holds => {}
        FormCheck::CrossSite => return cross_site(),
        FormCheck::Stale => return signup_form(&s, &headers, StatusCode::FORBIDDEN, &f.username, Some(STALE)),
    }
    if let Err(e) = s.rate.check_sign_up(peer.ip()) {
        return error_page(&e);
    }
    if f.password != f.password_again {
        return signup_form(&s, &headers, StatusCode::BAD_REQUEST, &f.username, Some("The two passwords differ."));
    }
    let account = match s.control.sign_up(&f.username, &f.password, s.clock.now()).await {
        Ok(a) => a,
        Err(e) if e.code == ErrorCode::Internal => return error_page(&e),
        Err(e) => return signup_form(&s, &headers, e.status(), &f.username, Some(&e.message)),
    };
    match start(&s, account.user_id).await {
        Ok((session, cookies)) => recovery_code_page(&session, &account.recovery_code, cookies),
        Err(e) => error_page(&e),
    }
}

#[derive(Deserialize)]
pub struct SavedForm {
    saved: Option<String>,
}

pub async fn saved(Posted { form: f, .. }: Posted<SavedForm>) -> Response {
    if f.saved.as_deref() != Some("yes") {
        return error_page(&Error::invalid("tick the box once your recovery code is saved"));
    }
    Redirect::to("/me").into_response()
}

fn login_form(s: &AppState, headers: &HeaderMap, status: StatusCode, next: &str, problem: Option<&str>) -> Response {
    FormGuard::for_page(s, headers, "/login").page(status, "Log in", |token| {
        html! {
            h1 { "Log in" }
            @if let Some(p) = problem { p.error role="alert" { (p) } }
            form method="post" action="/login" {
                (token)
                input type="hidden" name="next" value=(next);
                label { "Username" input type="text" name="username" autocomplete="username" required; }
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                button type="submit" { "Log in" }
            }
            p { a href="/signup" { "Create an instance" } " \u{b7} " a href="/recover" { "Forgot your password?" } }
        }
    })
}

pub async fn login_page(State(s): State<Arc<AppState>>, headers: HeaderMap, Query(q): Query<Next>) -> Response {
    login_form(&s, &headers, StatusCode::OK, safe_next(q.next.as_deref()), None)
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    next: Option<String>,
    csrf: Option<String>,
}

pub async fn login(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return login_form(&s, &headers, StatusCode::BAD_REQUEST, "/me", Some("Fill in every field."));
    };
    let next = safe_next(f.next.as_deref());
    match check_form(&s, &headers, f.csrf.as_deref()) {
        FormCheck::Holds => {}
        FormCheck::CrossSite => return cross_site(),
        FormCheck::Stale => return login_form(&s, &headers, StatusCode::FORBIDDEN, next, Some(STALE)),
    }
    if let Err(e) = s.rate.check_ip(peer.ip()) {
        return error_page(&e);
    }
    let user = match throttle::log_in(&s, &f.username, &f.password).await {
        Ok(u) => u,
        Err(e) if e.code == ErrorCode::Unauthenticated => {
            return login_form(&s, &headers, StatusCode::UNAUTHORIZED, next, Some("Wrong username or password."))
        }
        Err(e) if e.code == ErrorCode::RateLimited => {
            return throttle::with_retry_after(login_form(&s, &headers, e.status(), next, Some(&e.message)), &e)
        }
        Err(e) => return error_page(&e),
    };
    // The browser's session before this log-in ends with it (it may be another account's). Over
    // plain HTTP its cookie is scoped to `/oauth` and `/me` and does not come here; the new
    // cookie replaces it in the browser, and the old session runs out (15 minutes) unheld.
    if let Some(old) = super::session::cookie(&headers, super::session::web_cookie_name(s.secure_cookies)) {
        let _ = s.control.revoke_token_by_hash(hash_token(old)).await;
    }
    let now = s.clock.now();
    match s.control.create_session(&user, TokenKind::Web, now).await {
        Ok((token, expires)) => {
            with_cookies(Redirect::to(next).into_response(), session_cookies(s.secure_cookies, &token, expires, now))
        }
        Err(e) => error_page(&e),
    }
}

pub async fn logout(State(s): State<Arc<AppState>>, Posted { session, .. }: Posted<Empty>) -> Response {
    if let Err(e) = s.control.revoke_token_by_hash(session.caller.token_hash).await {
        return error_page(&e);
    }
    with_cookies(Redirect::to("/").into_response(), clear_cookies(s.secure_cookies))
}

fn recover_form(
    s: &AppState,
    headers: &HeaderMap,
    status: StatusCode,
    username: &str,
    problem: Option<&str>,
) -> Response {
    FormGuard::for_page(s, headers, "/recover").page(status, "Recover", |token| html! {
        h1 { "Recover your account" }
        p { "With the recovery code you saved at sign-up you can set a new password; your records stay readable." }
        @if let Some(p) = problem { p.error role="alert" { (p) } }
        form method="post" action="/recover" {
            (token)
            label { "Username" input type="text" name="username" value=(username) autocomplete="username" required; }
            label { "Recovery code" input type="text" name="recovery_code" autocomplete="off" spellcheck="false" required; }
            label { "New password" input type="password" name="new_password" autocomplete="new-password" required minlength="8"; }
            button type="submit" { "Set the new password" }
        }
    })
}

pub async fn recover_page(State(s): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    recover_form(&s, &headers, StatusCode::OK, "", None)
}

#[derive(Deserialize)]
pub struct RecoverForm {
    username: String,
    recovery_code: String,
    new_password: String,
    csrf: Option<String>,
}

pub async fn recover(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<RecoverForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let Ok(Form(f)) = form else {
        return recover_form(&s, &headers, StatusCode::BAD_REQUEST, "", Some("Fill in every field."));
    };
    match check_form(&s, &headers, f.csrf.as_deref()) {
        FormCheck::Holds => {}
        FormCheck::CrossSite => return cross_site(),
        FormCheck::Stale => return recover_form(&s, &headers, StatusCode::FORBIDDEN, &f.username, Some(STALE)),
    }
    if let Err(e) = s.rate.check_ip(peer.ip()) {
        return error_page(&e);
    }
    let recovered = match throttle::recover(&s, &f.username, &f.recovery_code, &f.new_password).await {
        Ok(r) => r,
        Err(e) if e.code == ErrorCode::Internal => return error_page(&e),
        Err(e) => {
            let form = recover_form(&s, &headers, e.status(), &f.username, Some(&e.message));
            return throttle::with_retry_after(form, &e);
        }
    };
    // The recovery answers an API session; the browser gets a web session instead.
    let Some(info) = s.control.authenticate(&recovered.token, s.clock.now()) else {
        return error_page(&Error::internal("the recovered account has no session"));
    };
    let _ = s.control.revoke_token_by_hash(hash_token(&recovered.token)).await;
    match start(&s, info.user_id).await {
        Ok((session, cookies)) => recovery_code_page(&session, &recovered.recovery_code, cookies),
        Err(e) => error_page(&e),
    }
}
