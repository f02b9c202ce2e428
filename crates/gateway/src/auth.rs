//! Authentication: the bearer token (or the session cookie) names the one instance a request may
//! reach. The middleware resolves it, applies the token's rate limit, and audits requests that
//! reach an instance after the handler answers.

use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use selfcloud_control::tokens::hash_token;
use selfcloud_control::{TokenInfo, TokenKind};
use selfcloud_core::{Error, Scope};
use selfcloud_instance::{Actor, AuditEntry};
use std::sync::Arc;

pub const SESSION_COOKIE: &str = "selfcloud_session";

/// How the token arrived: a cookie is ambient (the browser sends it on its own), so forms posted
/// with it need a CSRF check; a bearer header is not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Bearer,
    Cookie,
}

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub token: Arc<TokenInfo>,
    pub token_hash: [u8; 32],
    pub via: Via,
}

/// Set by handlers on their response: the scope that allowed the request, for the audit log.
#[derive(Clone, Debug)]
pub struct ScopeUsed(pub String);

/// The credential a request carries, if any: `Authorization: Bearer` first, then the cookie.
pub fn credential(headers: &HeaderMap) -> Option<(String, Via)> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let (scheme, token) = value.split_once(' ')?;
        return scheme.eq_ignore_ascii_case("bearer").then(|| (token.trim().to_owned(), Via::Bearer));
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, v)| (v.to_owned(), Via::Cookie))
}

/// Resolves a credential to a live caller. Refresh tokens are not API credentials.
pub fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, Error> {
    let (token, via) = credential(headers).ok_or_else(|| Error::unauthenticated("missing bearer token"))?;
    let info = state
        .control
        .authenticate(&token, state.clock.now())
        .filter(|t| t.kind != TokenKind::Refresh)
        .ok_or_else(|| Error::unauthenticated("invalid, expired or revoked token"))?;
    // Cookies carry owner sessions only; an app token in a cookie is not accepted.
    if via == Via::Cookie && info.kind != TokenKind::Session {
        return Err(Error::unauthenticated("invalid session cookie"));
    }
    Ok(Caller { token: info, token_hash: hash_token(&token), via })
}

impl Caller {
    pub fn is_owner(&self) -> bool {
        self.token.kind == TokenKind::Session
    }

    /// Owner-only APIs (grants, audit, apps, account): never reachable with an app token.
    pub fn require_owner(&self) -> Result<(), Error> {
        if self.is_owner() {
            Ok(())
        } else {
            Err(Error::forbidden("only the instance's owner may do this"))
        }
    }

    /// Checks an instance API's scope. The owner holds every scope of their own instance.
    pub fn require(&self, needed: &Scope) -> Result<ScopeUsed, Error> {
        if self.is_owner() {
            return Ok(ScopeUsed(needed.to_string()));
        }
        match self.token.scopes.permits(needed) {
            Some(held) => Ok(ScopeUsed(held.to_string())),
            None => Err(Error::forbidden(format!("this token does not carry the scope {needed}"))),
        }
    }

    fn actor(&self) -> Actor {
        match &self.token.grant {
            Some(g) => Actor::App {
                client_id: g.client_id.to_string(),
                name: g.app_name.clone(),
                grant_id: g.grant_id.to_string(),
            },
            None => Actor::Owner,
        }
    }
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &Arc<AppState>) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .cloned()
            .ok_or_else(|| ApiError(Error::unauthenticated("missing bearer token")))
    }
}

/// Middleware for every authenticated route: authenticate, rate-limit per token.
pub async fn authenticate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let caller = match resolve(&state, req.headers()) {
        Ok(c) => c,
        Err(e) => return ApiError(e).into_response(),
    };
    if let Err(e) = state.rate.check_token(&caller.token_hash, state.control.tier_of(caller.token.instance_id)) {
        return ApiError(e).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// Middleware for routes that reach an instance: after the handler answers, the request joins
/// that instance's access log (queued; written off the request's path).
pub async fn audited(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let request_id = req.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let resp = next.run(req).await;
    let entry = AuditEntry {
        at_ms: state.clock.now_ms(),
        actor: caller.actor(),
        method,
        path,
        scope: resp.extensions().get::<ScopeUsed>().map(|s| s.0.clone()),
        status: resp.status().as_u16(),
        request_id,
    };
    state.audit.record(caller.token.instance_id, entry).await;
    resp
}
