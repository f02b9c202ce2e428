//! Authentication: the bearer token names the one instance a request may reach. The middleware resolves it, applies the token's rate limit, and audits requests that
//! reach an instance after the handler answers.

use crate::audit::capped;
use crate::error::ApiError;
use crate::state::AppState;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use selfcloud_control::tokens::hash_token;
use selfcloud_control::{GrantRef, TokenInfo, TokenKind};
use selfcloud_core::{Error, Scope};
use selfcloud_instance::protocol::Need;
use selfcloud_instance::{Actor, AuditEntry};
use std::sync::Arc;

/// The authenticated caller of a request.
#[derive(Clone)]
pub struct Caller {
    pub token: Arc<TokenInfo>,
    pub token_hash: [u8; 32],
}

/// Set by handlers on their response: the scope that allowed the request, for the audit log.
#[derive(Clone, Debug)]
pub struct ScopeUsed(pub String);

/// The bearer token a request carries, if any. Only the `Authorization` header is an API
/// credential: a browser sends cookies on its own, to every port of a host, so the cookie of the
/// consent pages must never open the API (an app on `127.0.0.1:9000` receives it too).
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// Resolves a bearer token to a live API caller: an owner session or an app's access token.
/// Refresh tokens and the browser's web session are not API credentials.
pub fn resolve(state: &AppState, headers: &HeaderMap) -> Result<Caller, Error> {
    let token = bearer(headers).ok_or_else(|| Error::unauthenticated("missing bearer token"))?;
    let info = state
        .control
        .authenticate(token, state.clock.now())
        .filter(|t| matches!(t.kind, TokenKind::Session | TokenKind::Access))
        .ok_or_else(|| Error::unauthenticated("invalid, expired or revoked token"))?;
    Ok(Caller { token: info, token_hash: hash_token(token) })
}

impl Caller {
    /// The owner: their API session, or (on the Super-App's pages only, which alone accept it)
    /// their web session.
    pub fn is_owner(&self) -> bool {
        matches!(self.token.kind, TokenKind::Session | TokenKind::Web)
    }

    /// Owner-only APIs (grants, audit, apps, account): never reachable with an app token.
    pub fn require_owner(&self) -> Result<(), Error> {
        if self.is_owner() {
            Ok(())
        } else {
            Err(Error::forbidden("only the instance's owner may do this"))
        }
    }

    /// Checks a scope. The owner holds every scope of their own instance.
    pub fn require(&self, needed: &Scope) -> Result<ScopeUsed, Error> {
        let used = self.check(&Need::Scope(needed.clone()))?;
        Ok(ScopeUsed(used.unwrap_or_else(|| needed.to_string())))
    }

    /// Checks what an instance call needs, by the protocol's one rule (the instance checks the
    /// same again). Answers the scope that allowed it.
    pub fn check(&self, need: &Need) -> Result<Option<String>, Error> {
        selfcloud_instance::protocol::check(&self.actor(), &self.token.scopes, need)
    }

    pub fn actor(&self) -> Actor {
        actor_of(&self.token)
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

/// Middleware for every authenticated route: authenticate, rate-limit (one budget per grant for
/// an app, one per user for the owner's sessions, however many tokens they hold).
pub async fn authenticate(State(state): State<Arc<AppState>>, mut req: Request, next: Next) -> Response {
    let caller = match resolve(&state, req.headers()) {
        Ok(c) => c,
        Err(e) => return ApiError(e).into_response(),
    };
    if let Err(e) = state.rate.check_token(&caller.token.rate_key, state.control.tier_of(caller.token.instance_id)) {
        return ApiError(e).into_response();
    }
    req.extensions_mut().insert(caller);
    next.run(req).await
}

/// What the access log keeps of a request, read before it is answered: its method, path and
/// request id, capped and printable. The middleware below takes one from every call with a
/// bearer token; a change made without one (a recovery, a token exchange) by its handler.
pub struct Logged {
    method: String,
    path: String,
    request_id: Option<String>,
}

impl Logged {
    pub fn new(state: &AppState, method: &str, path: &str, headers: &HeaderMap) -> Logged {
        let max = state.limits.audit_field_max;
        let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok()).map(|id| capped(id, max));
        Logged { method: capped(method, 16), path: capped(path, max), request_id }
    }

    /// The entry, once the request is answered.
    pub fn entry(self, state: &AppState, actor: Actor, scope: Option<String>, status: u16) -> AuditEntry {
        let Logged { method, path, request_id } = self;
        AuditEntry { at_ms: state.clock.now_ms(), actor, method, path, scope, status, request_id }
    }
}

/// Whom a token speaks for: the owner (their sessions) or an app, through its grant.
fn actor_of(token: &TokenInfo) -> Actor {
    match &token.grant {
        _ if matches!(token.kind, TokenKind::Session | TokenKind::Web) => Actor::Owner,
        Some(g) => app_actor(g),
        // An app token always has its grant; were one ever without, it is an app with no name.
        None => Actor::App { client_id: String::new(), name: String::new(), grant_id: String::new() },
    }
}

/// An app, as the access log names it: through the grant it acts under.
pub fn app_actor(g: &GrantRef) -> Actor {
    Actor::App { client_id: g.client_id.to_string(), name: g.app_name.clone(), grant_id: g.grant_id.to_string() }
}

/// Middleware for routes that reach an instance or change its account: after the handler
/// answers, the request joins that instance's access log (queued; written off the request's
/// path).
pub async fn audited(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(caller) = req.extensions().get::<Caller>().cloned() else {
        return next.run(req).await;
    };
    let logged = Logged::new(&state, req.method().as_str(), req.uri().path(), req.headers());
    let resp = next.run(req).await;
    let scope = resp.extensions().get::<ScopeUsed>().map(|s| s.0.clone());
    let entry = logged.entry(&state, caller.actor(), scope, resp.status().as_u16());
    state.audit.record(caller.token.instance_id, entry).await;
    resp
}
