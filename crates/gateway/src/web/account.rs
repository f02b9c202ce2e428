//! The account: change the password, take the data out (export), bring it back (import), and
//! delete everything.

use super::layout::{self, csrf_field, error_page};
use super::session::{clear_cookies, session_cookies, with_cookies, Empty, Posted};
use super::{logged, WebSession};
use crate::error::ApiError;
use crate::routes::forward;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use selfcloud_control::tokens::hash_token;
use selfcloud_control::TokenKind;
use selfcloud_core::Error;
use serde::Deserialize;
use std::sync::Arc;

#[derive(Deserialize, Default)]
pub struct Notice {
    changed: Option<String>,
}

pub async fn page(
    session: WebSession,
    notice: Result<Query<Notice>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let changed = notice.is_ok_and(|Query(n)| n.changed.is_some());
    let body = html! {
        h1 { "Your account" }
        @if changed { p.ok role="status" { "Your password is changed. Every other session of yours has ended." } }
        section aria-labelledby="password" {
            h2 #password { "Change your password" }
            p { "Your records stay as they are; their key is wrapped again for the new password." }
            form method="post" action="/me/account/password" {
                (csrf_field(&session))
                label { "Current password" input type="password" name="password" autocomplete="current-password" required; }
                label { "New password" input type="password" name="new_password" autocomplete="new-password" required minlength="8"; }
                button type="submit" { "Change password" }
            }
        }
        section aria-labelledby="export" {
            h2 #export { "Export" }
            p { "Every record of your instance as one archive, with a manifest of checksums." }
            form method="post" action="/me/account/export" {
                (csrf_field(&session))
                button type="submit" { "Download an export" }
            }
        }
        section aria-labelledby="import" {
            h2 #import { "Import" }
            p { "Restore an export into this instance while it holds no record. It is checked whole first; then every record is written, or none is." }
            form #import-form method="post" action="/me/account/import" enctype="application/x-tar" {
                label { "Export archive" input type="file" name="archive" accept=".tar,application/x-tar" required; }
                button type="submit" { "Import" }
                output #import-result {}
            }
            noscript { p { "Importing from this page needs JavaScript; the API's " code { "POST /v1/import" } " needs none." } }
        }
        section aria-labelledby="delete" {
            h2 #delete { "Delete your account" }
            p { "Your instance's key is destroyed first, then its files. This cannot be undone." }
            form method="post" action="/me/account/delete" {
                (csrf_field(&session))
                label { "Password" input type="password" name="password" autocomplete="current-password" required; }
                label.check { input type="checkbox" name="confirm" value="yes" required; " Delete my instance and everything in it" }
                button.danger type="submit" { "Delete my account" }
            }
        }
    };
    layout::page(StatusCode::OK, "Account", Some(&session), body)
}

#[derive(Deserialize)]
pub struct PasswordForm {
    password: String,
    new_password: String,
}

pub async fn change_password(
    State(s): State<Arc<AppState>>,
    Posted { session, form: f }: Posted<PasswordForm>,
) -> Response {
    let user = session.caller.token.user_id;
    let (token, _) = match s.control.change_password(user, &f.password, &f.new_password, s.clock.now()).await {
        Ok(t) => t,
        Err(e) => return error_page(&e),
    };
    // Every owner session ended, this one too; the API session the change starts is not the
    // browser's: a web session replaces it.
    let _ = s.control.revoke_token_by_hash(hash_token(&token)).await;
    let now = s.clock.now();
    match s.control.start_session_for(user, TokenKind::Web, now).await {
        Ok((web, expires)) => with_cookies(
            Redirect::to("/me/account?changed=1").into_response(),
            session_cookies(s.secure_cookies, &web, expires, now),
        ),
        Err(e) => error_page(&e),
    }
}

/// The export as a download (a POST, so another site cannot start one).
pub async fn export(State(s): State<Arc<AppState>>, Posted { session, .. }: Posted<Empty>) -> Response {
    let Ok(req) = Request::builder().method(Method::GET).uri("/v1/export").body(Body::empty()) else {
        return error_page(&Error::internal("building the export request"));
    };
    let caller = session.caller.clone();
    match forward::call(&s, &session.caller, req).await {
        // Everything left the instance, or was asked for: the access log says so either way, as
        // it does for the API's export.
        Ok(resp) if resp.status().is_success() => super::recorded(&s, &caller, &Method::GET, "/v1/export", resp).await,
        // The instance's error (already the gateway's own JSON error) as a page of ours.
        Ok(resp) => {
            let resp = super::recorded(&s, &caller, &Method::GET, "/v1/export", resp).await;
            match super::json_of(resp).await {
                Err(e) => error_page(&e),
                Ok(_) => error_page(&Error::internal("the export failed")),
            }
        }
        Err(ApiError(e)) => {
            let refused = ApiError(e.clone()).into_response();
            super::recorded(&s, &caller, &Method::GET, "/v1/export", refused).await;
            error_page(&e)
        }
    }
}

/// An import from the page's script: the archive as the body, the token in `x-csrf-token`;
/// answered in JSON like the API.
pub async fn import(State(s): State<Arc<AppState>>, session: WebSession, req: Request) -> Response {
    let sent = req.headers().get("x-csrf-token").and_then(|v| v.to_str().ok());
    if let Err(e) = session.check_csrf(sent) {
        return ApiError(e).into_response();
    }
    let (mut parts, body) = req.into_parts();
    parts.uri = axum::http::Uri::from_static("/v1/import");
    parts.headers.insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/x-tar"));
    let req = Request::from_parts(parts, body);
    let caller = session.caller.clone();
    match forward::call(&s, &caller, req).await {
        Ok(resp) => logged(&s, &caller, &Method::POST, "/v1/import", resp).await,
        Err(ApiError(e)) => ApiError(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct DeleteForm {
    password: String,
    confirm: Option<String>,
}

pub async fn delete(State(s): State<Arc<AppState>>, Posted { session, form: f }: Posted<DeleteForm>) -> Response {
    if f.confirm.as_deref() != Some("yes") {
        return error_page(&Error::invalid("tick the box to confirm the deletion"));
    }
    match s.control.delete_account(session.caller.token.user_id, &f.password, s.clock.now()).await {
        Ok(()) => {
            let body = html! { h1 { "Your account is deleted" } p { "Its key is destroyed and its files are gone." } p { a href="/" { "Back to the start" } } };
            with_cookies(layout::page(StatusCode::OK, "Deleted", None, body), clear_cookies(s.secure_cookies))
        }
        Err(e) => error_page(&e),
    }
}
