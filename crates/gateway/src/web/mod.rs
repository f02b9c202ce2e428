//! The Super-App: the pages a person uses, served by the gateway. Sign-up, log-in and recovery,
//! then the dashboard under `/me`: the instance, the apps with access, the access log, the
//! assistant, the account. Pages are rendered here (maud escapes every value); a little plain JS
//! (`static/selfcloud.js`) streams the assistant's answer and uploads an import, and every other
//! form works without it.
//!
//! Safe by default, on every page: a strict Content-Security-Policy (scripts and styles from this
//! origin only, nothing inline), no framing, no referrer, no caching. Every form posts a CSRF
//! token derived from the session and must come from this origin's own pages (`Sec-Fetch-Site`).
//! The web session opens these pages only: it is never an API credential, and the pages reach
//! the instance through the same checked, audited forwarding as the API.

mod account;
mod assistant;
mod dashboard;
pub mod form_guard;
pub mod layout;
pub mod session;
mod sign_in;

pub use session::{clear_cookies, safe_next, session_cookies, web_cookie_name, WebSession};

use crate::auth::{Caller, ScopeUsed};
use crate::error::ApiError;
use crate::routes::forward;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::BodyExt;
use selfcloud_core::Error;
use selfcloud_instance::AuditEntry;
use std::sync::Arc;

/// The Super-App's routes.
pub fn router() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(sign_in::landing))
        .route("/static/selfcloud.css", get(stylesheet))
        .route("/static/selfcloud.js", get(script))
        .route("/signup", get(sign_in::signup_page).post(sign_in::signup))
        .route("/login", get(sign_in::login_page).post(sign_in::login))
        .route("/recover", get(sign_in::recover_page).post(sign_in::recover))
        .route("/me", get(dashboard::overview))
        .route("/me/saved", post(sign_in::saved))
        .route("/me/logout", post(sign_in::logout))
        .route("/me/apps/{grant}/revoke", post(dashboard::revoke))
        .route("/me/apps/{grant}/budget", post(dashboard::budget))
        .route("/me/log", get(dashboard::log))
        .route("/me/assistant", get(assistant::page).post(assistant::ask))
        .route("/me/assistant/stream", post(assistant::ask_streaming))
        .route("/me/assistant/memories", post(assistant::remember))
        .route("/me/assistant/memories/{id}/forget", post(assistant::forget))
        .route("/me/assistant/settings", post(assistant::settings))
        .route("/me/account", get(account::page))
        .route("/me/account/password", post(account::change_password))
        .route("/me/account/export", post(account::export))
        .route("/me/account/import", post(account::import))
        .route("/me/account/delete", post(account::delete))
}

/// The security headers of every page. `form_action` names where forms may go: this origin, and
/// on the consent page the app's redirect origin too (browsers check a form's redirects).
pub fn secure(mut resp: Response, form_action: &str) -> Response {
    let csp = format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
         form-action 'self'{form_action}; frame-ancestors 'none'; base-uri 'none'"
    );
    let h = resp.headers_mut();
    if let Ok(csp) = HeaderValue::from_str(&csp) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Same-origin: our own forms then carry their true Origin (with no-referrer a browser sends
    // `Origin: null`), and no other site learns a page's address.
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut resp = ([(header::CONTENT_TYPE, content_type)], body).into_response();
    resp.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    resp
}

async fn stylesheet() -> Response {
    asset("text/css; charset=utf-8", include_str!("static/selfcloud.css"))
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", include_str!("static/selfcloud.js"))
}

/// Calls the owner's instance for a page: the same check and forwarding as the API, and, for a
/// change, an entry in the access log as the API's audit middleware writes.
pub(crate) async fn call(
    s: &AppState,
    caller: &Caller,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<Response, Error> {
    let mut req = Request::builder().method(method.clone()).uri(uri);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    let req = req.body(body).map_err(Error::internal)?;
    call_with(s, caller, method, uri, req).await
}

pub(crate) async fn call_with(
    s: &AppState,
    caller: &Caller,
    method: Method,
    uri: &str,
    req: Request,
) -> Result<Response, Error> {
    let resp = forward::call(s, caller, req).await.map_err(|ApiError(e)| e)?;
    Ok(logged(s, caller, &method, uri, resp).await)
}

/// A change made from a page joins the access log, as the API's audit middleware writes it. (The
/// reads a page makes to show itself do not: the log would fill with its own views.)
pub(crate) async fn logged(s: &AppState, caller: &Caller, method: &Method, uri: &str, resp: Response) -> Response {
    if method == Method::GET {
        return resp;
    }
    recorded(s, caller, method, uri, resp).await
}

/// The call joins the access log whatever it is: a change, or a read worth knowing of (the
/// export of everything).
pub(crate) async fn recorded(s: &AppState, caller: &Caller, method: &Method, uri: &str, resp: Response) -> Response {
    let path = uri.split('?').next().unwrap_or(uri);
    let entry = AuditEntry {
        at_ms: s.clock.now_ms(),
        actor: caller.actor(),
        method: method.as_str().to_owned(),
        path: crate::audit::capped(path, s.limits.audit_field_max),
        scope: resp.extensions().get::<ScopeUsed>().map(|s| s.0.clone()),
        status: resp.status().as_u16(),
        request_id: None,
    };
    s.audit.record(caller.token.instance_id, entry).await;
    resp
}

/// [`call`], reading a JSON answer (an error answer becomes the error it carries).
pub(crate) async fn call_json(
    s: &AppState,
    caller: &Caller,
    method: Method,
    uri: &str,
    body: Option<serde_json::Value>,
) -> Result<serde_json::Value, Error> {
    let resp = call(s, caller, method, uri, body).await?;
    json_of(resp).await
}

pub(crate) async fn json_of(resp: Response) -> Result<serde_json::Value, Error> {
    let status = resp.status();
    let bytes = resp.into_body().collect().await.map_err(Error::internal)?.to_bytes();
    if bytes.is_empty() && status.is_success() {
        return Ok(serde_json::Value::Null);
    }
    if status.is_success() {
        return serde_json::from_slice(&bytes).map_err(Error::internal);
    }
    Err(Error::from_body(&bytes, None).unwrap_or_else(|| Error::internal(format!("the instance answered {status}"))))
}
