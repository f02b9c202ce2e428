//! Thin axum handlers over the protocol in `oauth`: authorize (GET and POST), log-in for the
//! browser flow, token, revoke, and the RFC 8414 metadata.
//!
//! The token and revoke endpoints answer errors in RFC 6749's shape (`{"error","error_description"}`)
//! because that is what every OAuth client library parses; everything else uses the contract's.

use super::{
    check_authorize, csrf_token, pages, redirect_with, verify_pkce, AuthorizeError, AuthorizeParams, ValidAuthorize,
};
use crate::auth::{credential, resolve, Caller, Via};
use crate::error::ApiError;
use crate::routes::accounts::session_cookie;
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use selfcloud_control::{GrantRef, NewCode, TokenKind};
use selfcloud_core::{AppId, ScopeSet};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

fn found(location: &str) -> Response {
    // 302, as RFC 6749 shows; clients follow it with a GET.
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn params_as_pairs(p: &AuthorizeParams) -> Vec<(&'static str, String)> {
    let fields: [(&'static str, &Option<String>); 7] = [
        ("response_type", &p.response_type),
        ("client_id", &p.client_id),
        ("redirect_uri", &p.redirect_uri),
        ("scope", &p.scope),
        ("state", &p.state),
        ("code_challenge", &p.code_challenge),
        ("code_challenge_method", &p.code_challenge_method),
    ];
    fields.into_iter().filter_map(|(k, v)| v.clone().map(|v| (k, v))).collect()
}

fn borrowed<'a>(pairs: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    pairs.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// Validates the request against the registered app; refusals become a page or a redirect.
async fn validate(s: &AppState, p: &AuthorizeParams) -> Result<ValidAuthorize, Response> {
    let app = match p.client_id.as_deref().and_then(|c| c.parse::<AppId>().ok()) {
        Some(id) => s.control.app(id).await.map_err(|e| ApiError(e).into_response())?,
        None => None,
    };
    check_authorize(p, app).map_err(|e| match e {
        AuthorizeError::Show(e) => pages::error(&e.message),
        AuthorizeError::Redirect { redirect_uri, error, description, state } => {
            let mut q = vec![("error", error), ("error_description", description.as_str()), ("iss", s.issuer.as_str())];
            if let Some(state) = state.as_deref() {
                q.push(("state", state));
            }
            found(&redirect_with(&redirect_uri, &q))
        }
    })
}

/// The owner's session for the consent pages: cookie or bearer, never an app token.
fn session(s: &AppState, headers: &HeaderMap) -> Option<Caller> {
    credential(headers)?;
    resolve(s, headers).ok().filter(Caller::is_owner)
}

/// `GET /oauth/authorize`: the consent page (or the log-in page first).
pub async fn authorize_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    axum::extract::Query(p): axum::extract::Query<AuthorizeParams>,
) -> Response {
    let req = match validate(&s, &p).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let pairs = params_as_pairs(&p);
    let Some(caller) = session(&s, &headers) else {
        return pages::login(&borrowed(&pairs), false);
    };
    let username = match s.control.profile(caller.token.user_id).await {
        Ok(p) => p.username,
        Err(e) => return ApiError(e).into_response(),
    };
    pages::consent(&req, &username, &borrowed(&pairs), &csrf_token(&caller.token_hash))
}

/// `POST /oauth/authorize`: the user's decision. Repeated `grant_scope` fields (the ticked boxes)
/// narrow the grant; without them the whole request is granted.
pub async fn authorize_decision(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    Form(fields): Form<Vec<(String, String)>>,
) -> Response {
    let field = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let p = AuthorizeParams {
        response_type: field("response_type"),
        client_id: field("client_id"),
        redirect_uri: field("redirect_uri"),
        scope: field("scope"),
        state: field("state"),
        code_challenge: field("code_challenge"),
        code_challenge_method: field("code_challenge_method"),
    };
    let req = match validate(&s, &p).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let Some(caller) = session(&s, &headers) else {
        return ApiError(selfcloud_core::Error::unauthenticated("log in to decide on this request")).into_response();
    };
    if caller.via == Via::Cookie && field("csrf").as_deref() != Some(csrf_token(&caller.token_hash).as_str()) {
        return ApiError(selfcloud_core::Error::forbidden("the form's CSRF token is missing or wrong")).into_response();
    }
    let mut answer = vec![("iss", s.issuer.clone())];
    if let Some(state) = &req.state {
        answer.push(("state", state.clone()));
    }
    let now = s.clock.now();
    match field("decision").as_deref() {
        Some("allow") => {}
        Some("deny") => {
            answer.push(("error", "access_denied".into()));
            return found(&redirect_with(&req.redirect_uri, &borrowed(&answer)));
        }
        _ => return ApiError(selfcloud_core::Error::invalid("decision must be allow or deny")).into_response(),
    }
    let ticked: Vec<&str> = fields.iter().filter(|(k, _)| k == "grant_scope").map(|(_, v)| v.as_str()).collect();
    let scopes = if ticked.is_empty() {
        req.scopes.clone()
    } else {
        match ScopeSet::parse(&ticked.join(" ")) {
            Ok(allowed) => req.scopes.restricted_to(&allowed),
            Err(e) => return ApiError(e).into_response(),
        }
    };
    if scopes.is_empty() {
        answer.push(("error", "access_denied".into()));
        return found(&redirect_with(&req.redirect_uri, &borrowed(&answer)));
    }
    let user = caller.token.user_id;
    let result = async {
        let grant = s.control.create_grant(user, &req.app, scopes, now).await?;
        let code = NewCode {
            client_id: req.app.client_id,
            user_id: user,
            grant_id: grant.id,
            redirect_uri: req.redirect_uri.clone(),
            code_challenge: req.code_challenge.clone(),
        };
        s.control.issue_code(code, now).await
    }
    .await;
    match result {
        Ok(code) => {
            answer.push(("code", code));
            found(&redirect_with(&req.redirect_uri, &borrowed(&answer)))
        }
        Err(e) => ApiError(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    #[serde(flatten)]
    request: AuthorizeParams,
}

/// `POST /oauth/login`: the browser flow's log-in; on success, back to the same request.
pub async fn login(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Form(form): Form<LoginForm>,
) -> Response {
    if let Err(e) = s.rate.check_ip(peer.ip()) {
        return ApiError(e).into_response();
    }
    let pairs = params_as_pairs(&form.request);
    let user = match s.control.log_in(&form.username, &form.password).await {
        Ok(u) => u,
        Err(e) if e.code == selfcloud_core::ErrorCode::Unauthenticated => return pages::login(&borrowed(&pairs), true),
        Err(e) => return ApiError(e).into_response(),
    };
    let (token, expires) = match s.control.create_session(&user, s.clock.now()).await {
        Ok(t) => t,
        Err(e) => return ApiError(e).into_response(),
    };
    // Back to our own authorize endpoint only: the target is built here, never taken from input.
    let query = serde_urlencoded::to_string(&form.request).unwrap_or_default();
    let cookie = session_cookie(&s, &token, expires);
    ([(header::SET_COOKIE, cookie)], Redirect::to(&format!("/oauth/authorize?{query}"))).into_response()
}

/// An error of the token and revoke endpoints, in RFC 6749's shape.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> Self {
        OAuthError { status: StatusCode::BAD_REQUEST, error, description: description.into() }
    }
    fn grant(description: impl Into<String>) -> Self {
        Self::new("invalid_grant", description)
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "error_description": self.description});
        (self.status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
    }
}

impl From<selfcloud_core::Error> for OAuthError {
    fn from(e: selfcloud_core::Error) -> Self {
        if let Some(d) = &e.detail {
            tracing::error!(detail = %d, "token endpoint failed");
        }
        let status = e.status();
        let error = if status.is_server_error() { "server_error" } else { "invalid_request" };
        OAuthError { status, error, description: e.message }
    }
}

#[derive(Deserialize)]
pub struct TokenForm {
    grant_type: Option<String>,
    code: Option<String>,
    redirect_uri: Option<String>,
    client_id: Option<String>,
    code_verifier: Option<String>,
    refresh_token: Option<String>,
    scope: Option<String>,
}

/// `POST /oauth/token`.
pub async fn token(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    form: Result<Form<TokenForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let result = async {
        s.rate.check_ip(peer.ip())?;
        let Form(f) = form.map_err(|e| OAuthError::new("invalid_request", e.body_text()))?;
        let client_id: AppId = f
            .client_id
            .as_deref()
            .ok_or_else(|| OAuthError::new("invalid_request", "client_id is required"))?
            .parse()
            .map_err(|_| OAuthError::new("invalid_client", "unknown client_id"))?;
        match f.grant_type.as_deref() {
            Some("authorization_code") => exchange_code(&s, client_id, &f).await,
            Some("refresh_token") => refresh(&s, client_id, &f).await,
            Some(_) => Err(OAuthError::new("unsupported_grant_type", "use authorization_code or refresh_token")),
            None => Err(OAuthError::new("invalid_request", "grant_type is required")),
        }
    }
    .await;
    match result {
        Ok(body) => ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn exchange_code(s: &AppState, client_id: AppId, f: &TokenForm) -> Result<serde_json::Value, OAuthError> {
    let now = s.clock.now();
    let code = f.code.as_deref().ok_or_else(|| OAuthError::new("invalid_request", "code is required"))?;
    let grant = s.control.redeem_code(code).await?.ok_or_else(|| OAuthError::grant("unknown code"))?;
    if grant.replayed {
        // A code used twice may have been stolen: everything issued from it is revoked (RFC 6749 4.1.2).
        s.control.revoke_grant_for_replay(grant.user_id, grant.grant_id, now).await?;
        return Err(OAuthError::grant("code already used; the grant is revoked"));
    }
    if grant.expires_at <= now {
        return Err(OAuthError::grant("code expired"));
    }
    if grant.client_id != client_id {
        return Err(OAuthError::grant("code was issued to another client"));
    }
    if f.redirect_uri.as_deref() != Some(grant.redirect_uri.as_str()) {
        return Err(OAuthError::grant("redirect_uri does not match the authorization request"));
    }
    // No verifier is never accepted: a code issued with a challenge cannot be downgraded.
    let verifier =
        f.code_verifier.as_deref().ok_or_else(|| OAuthError::new("invalid_request", "code_verifier is required"))?;
    if !verify_pkce(verifier, &grant.code_challenge) {
        return Err(OAuthError::grant("code_verifier does not match code_challenge"));
    }
    let app = s.control.app(client_id).await?.ok_or_else(|| OAuthError::new("invalid_client", "unknown client_id"))?;
    if !s.control.grant_is_active(grant.grant_id).await? {
        return Err(OAuthError::grant("the grant was revoked"));
    }
    let scopes = s
        .control
        .grants(grant.user_id)
        .await?
        .into_iter()
        .find(|g| g.id == grant.grant_id)
        .map(|g| g.scopes)
        .ok_or_else(|| OAuthError::grant("the grant was revoked"))?;
    let grant_ref = GrantRef { grant_id: grant.grant_id, client_id, app_name: app.name };
    issue(s, grant.user_id, grant_ref, scopes).await
}

async fn refresh(s: &AppState, client_id: AppId, f: &TokenForm) -> Result<serde_json::Value, OAuthError> {
    let now = s.clock.now();
    let presented =
        f.refresh_token.as_deref().ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is required"))?;
    let info = s
        .control
        .refresh_token(presented, now)
        .ok_or_else(|| OAuthError::grant("unknown, expired or revoked refresh token"))?;
    let grant = info.grant.clone().ok_or_else(|| OAuthError::grant("not an app token"))?;
    if grant.client_id != client_id {
        return Err(OAuthError::grant("refresh token was issued to another client"));
    }
    // Rotation: each refresh token works once. A second use means two parties hold it, so the
    // whole grant is revoked (OAuth 2.1 section 4.3.1).
    if info.is_spent() || !s.control.spend_refresh(presented).await? {
        s.control.revoke_grant_for_replay(info.user_id, grant.grant_id, now).await?;
        return Err(OAuthError::grant("refresh token already used; the grant is revoked"));
    }
    let scopes = match f.scope.as_deref() {
        None => info.scopes.clone(),
        Some(asked) => {
            let asked = ScopeSet::parse(asked).map_err(|e| OAuthError::new("invalid_scope", e.message))?;
            if !info.scopes.covers_all(&asked) {
                return Err(OAuthError::new("invalid_scope", "a refresh cannot widen the grant"));
            }
            asked
        }
    };
    issue(s, info.user_id, grant, scopes).await
}

async fn issue(
    s: &AppState,
    user: selfcloud_core::UserId,
    grant: GrantRef,
    scopes: ScopeSet,
) -> Result<serde_json::Value, OAuthError> {
    let now = s.clock.now();
    let scope = scopes.to_string();
    let control = s.control.clone();
    let (access, refresh, expires_at) = control.issue_app_tokens(user, grant, scopes, now).await?;
    Ok(serde_json::json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": expires_at.saturating_sub(now),
        "refresh_token": refresh,
        "scope": scope,
    }))
}

#[derive(Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
}

/// `POST /oauth/revoke` (RFC 7009): always 200 for a well-formed request, whether or not the
/// token was known, so the endpoint cannot be used to probe tokens. Revoking a refresh token
/// revokes its whole grant; revoking an access token ends that token only.
pub async fn revoke(
    State(s): State<Arc<AppState>>,
    form: Result<Form<RevokeForm>, axum::extract::rejection::FormRejection>,
) -> Response {
    let result: Result<(), OAuthError> = async {
        let Form(f) = form.map_err(|e| OAuthError::new("invalid_request", e.body_text()))?;
        let token = f.token.ok_or_else(|| OAuthError::new("invalid_request", "token is required"))?;
        let client: Option<AppId> = f.client_id.as_deref().and_then(|c| c.parse().ok());
        let now = s.clock.now();
        let info = s.control.refresh_token(&token, now).or_else(|| s.control.authenticate(&token, now));
        let Some(info) = info else { return Ok(()) };
        let Some(grant) = info.grant.clone() else {
            return Ok(()); // owner sessions end through DELETE /v1/sessions
        };
        if client.is_some_and(|c| c != grant.client_id) {
            return Ok(()); // not this client's token: nothing to do, nothing to tell
        }
        if info.kind == TokenKind::Refresh {
            s.control.revoke_grant_for_replay(info.user_id, grant.grant_id, now).await?;
        } else {
            s.control.revoke_token(&token).await?;
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => (StatusCode::OK, [(header::CACHE_CONTROL, "no-store")]).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /.well-known/oauth-authorization-server` (RFC 8414).
pub async fn metadata(State(s): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let base = &s.issuer;
    Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
        "revocation_endpoint_auth_methods_supported": ["none"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": ["storage:read:*", "storage:write:*", "llm:chat", "llm:embed", "chain:read", "profile:read"],
    }))
}
