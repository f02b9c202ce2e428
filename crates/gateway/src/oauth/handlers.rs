//! Thin axum handlers over the protocol in `oauth`: authorize (GET and POST), log-in for the
//! browser flow, token, revoke, and the RFC 8414 metadata.
//!
//! The token and revoke endpoints answer errors in RFC 6749's shape (`{"error","error_description"}`)
//! because that is what every OAuth client library parses; everything else uses the contract's.

use super::token::{self, TokenError, TokenErrorKind, TokenForm, TokenRequest};
use super::{
    check_authorize, csrf_matches, csrf_token, grant_expiry, granted_scopes, pages, redirect_with, AuthorizeError,
    AuthorizeParams, ValidAuthorize,
};
use crate::auth::{bearer, Caller};
use crate::error::ApiError;
use crate::state::AppState;
use crate::web::form_guard::{check_form, FormCheck, FormGuard, STALE};
use crate::web::session::{cookie, session_cookies, web_cookie_name, with_cookies};
use axum::extract::rejection::{FormRejection, QueryRejection};
use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Form, Json};
use selfcloud_control::tokens::hash_token;
use selfcloud_control::{Consent, TokenKind, TokenOutcome};
use selfcloud_core::{AppId, Error, ErrorCode, Scope, ScopeSet};
use serde::Deserialize;
use std::net::SocketAddr;
use std::sync::Arc;

/// Who is deciding on the consent page: the web session cookie, or an owner session as a bearer
/// (an API client driving the flow; a header is never sent on its own). `true` with the cookie,
/// which is ambient, so its forms need the CSRF token.
fn page_session(s: &AppState, headers: &HeaderMap) -> Option<(Caller, bool)> {
    let now = s.clock.now();
    let (token, kind, ambient) = match bearer(headers) {
        Some(t) => (t, TokenKind::Session, false),
        None => (cookie(headers, web_cookie_name(s.secure_cookies))?, TokenKind::Web, true),
    };
    let info = s.control.authenticate(token, now).filter(|t| t.kind == kind)?;
    Some((Caller { token: info, token_hash: hash_token(token) }, ambient))
}

fn found(location: &str) -> Response {
    // 302, as RFC 6749 shows; clients follow it with a GET.
    (StatusCode::FOUND, [(header::LOCATION, location)]).into_response()
}

fn redirect_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    match redirect_with(redirect_uri, params) {
        Ok(location) => found(&location),
        Err(e) => ApiError(e).into_response(),
    }
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

fn refused_form(s: &AppState, headers: &HeaderMap) -> Option<Response> {
    if crate::web::session::from_our_pages(s, headers) {
        return None;
    }
    let message = format!("this form must be sent from this server's own pages ({})", s.issuer);
    Some(ApiError(Error::forbidden(message)).into_response())
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
            redirect_to(&redirect_uri, &q)
        }
    })
}

/// `GET /oauth/authorize`: the consent page (or the log-in page first).
pub async fn authorize_page(
    State(s): State<Arc<AppState>>,
    headers: HeaderMap,
    query: Result<Query<AuthorizeParams>, QueryRejection>,
) -> Response {
    let Ok(Query(p)) = query else {
        return pages::error("the authorization request's parameters are malformed");
    };
    let req = match validate(&s, &p).await {
        Ok(r) => r,
        Err(resp) => return resp,
    };
    let pairs = params_as_pairs(&p);
    let Some((caller, _)) = page_session(&s, &headers) else {
        return pages::login(&borrowed(&pairs), StatusCode::OK, None, FormGuard::for_page(&s, &headers, "/oauth"));
    };
    let username = match s.control.profile(caller.token.user_id).await {
        Ok(p) => p.username,
        Err(e) => return ApiError(e).into_response(),
    };
    let tier = s.control.tier_of(caller.token.instance_id);
    let token_ceiling = req
        .scopes
        .iter()
        .any(|s| matches!(s, Scope::LlmChat | Scope::LlmEmbed))
        .then(|| s.control.config().limits.tier(tier).llm_app_tokens_per_day);
    // Incremental authorization: what the app already holds is shown, not asked again.
    let (held, held_end) = match s.control.grants(caller.token.user_id, s.clock.now()).await {
        Ok(grants) => grants
            .into_iter()
            .find(|g| g.client_id == req.app.client_id)
            .map(|g| (g.scopes.iter().cloned().collect(), g.expires_at))
            .unwrap_or_default(),
        Err(e) => return ApiError(e).into_response(),
    };
    let request = borrowed(&pairs);
    let csrf = csrf_token(&caller.token_hash);
    pages::consent(&pages::ConsentView {
        req: &req,
        username: &username,
        request: &request,
        csrf: &csrf,
        token_ceiling,
        held,
        held_end,
    })
}

/// `POST /oauth/authorize`: the user's decision. Repeated `grant_scope` fields (the ticked boxes)
/// narrow what is granted; without them the whole request is granted. The app's one grant for
/// this user gains what is allowed; the code carries exactly that.
pub async fn authorize_decision(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<Vec<(String, String)>>, FormRejection>,
) -> Response {
    if let Some(refused) = refused_form(&s, &headers) {
        return refused;
    }
    let Ok(Form(fields)) = form else {
        return ApiError(Error::invalid("the decision form is malformed")).into_response();
    };
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
    let Some((caller, ambient)) = page_session(&s, &headers) else {
        return ApiError(Error::unauthenticated("log in to decide on this request")).into_response();
    };
    if ambient && !csrf_matches(field("csrf").as_deref(), &caller.token_hash) {
        return ApiError(Error::forbidden("the form's CSRF token is missing or wrong")).into_response();
    }
    // Every decision writes a code (fsynced): one user, or one address, cannot write them at will.
    let tier = s.control.tier_of(caller.token.instance_id);
    if let Err(e) = s.rate.check_ip(peer.ip()).and_then(|_| s.rate.check_token(&caller.token.rate_key, tier)) {
        return ApiError(e).into_response();
    }
    let mut answer = vec![("iss", s.issuer.clone())];
    if let Some(state) = &req.state {
        answer.push(("state", state.clone()));
    }
    match field("decision").as_deref() {
        Some("allow") => {}
        Some("deny") => {
            answer.push(("error", "access_denied".into()));
            return redirect_to(&req.redirect_uri, &borrowed(&answer));
        }
        _ => return ApiError(Error::invalid("decision must be allow or deny")).into_response(),
    }
    let ticked: Vec<&str> = fields.iter().filter(|(k, _)| k == "grant_scope").map(|(_, v)| v.as_str()).collect();
    let ticked = match (field("consent_boxes").is_some() || !ticked.is_empty(), ScopeSet::parse(&ticked.join(" "))) {
        (false, _) => None,
        (true, Ok(ticked)) => Some(ticked),
        (true, Err(e)) => return ApiError(e).into_response(),
    };
    let (held, held_end) = match s.control.grants(caller.token.user_id, s.clock.now()).await {
        Ok(grants) => grants
            .into_iter()
            .find(|g| g.client_id == req.app.client_id)
            .map(|g| (g.scopes, g.expires_at))
            .unwrap_or_default(),
        Err(e) => return ApiError(e).into_response(),
    };
    let scopes = granted_scopes(&req.scopes, ticked.as_ref(), &held);
    if scopes.is_empty() {
        answer.push(("error", "access_denied".into()));
        return redirect_to(&req.redirect_uri, &borrowed(&answer));
    }
    let token_budget = match field("token_budget").as_deref().map(str::trim) {
        None | Some("") => None,
        Some(n) => match n.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => {
                return ApiError(Error::invalid("token_budget must be a whole number of tokens a day")).into_response()
            }
        },
    };
    if let Err(e) = crate::routes::apps::check_token_budget(&s, caller.token.instance_id, token_budget) {
        return ApiError(e).into_response();
    }
    let expires_at = match grant_expiry(field("expires_in_days").as_deref(), held_end, s.clock.now()) {
        Ok(at) => at,
        Err(e) => return ApiError(e).into_response(),
    };
    let consent = Consent {
        scopes,
        redirect_uri: req.redirect_uri.clone(),
        code_challenge: req.code_challenge.clone(),
        token_budget,
        expires_at,
    };
    match s.control.consent(caller.token.user_id, &req.app, consent, s.clock.now()).await {
        Ok((_, code)) => {
            answer.push(("code", code));
            redirect_to(&req.redirect_uri, &borrowed(&answer))
        }
        Err(e) => ApiError(e).into_response(),
    }
}

#[derive(Deserialize)]
pub struct LoginForm {
    username: String,
    password: String,
    /// The form's token (`web::form_guard`).
    csrf: Option<String>,
    #[serde(flatten)]
    request: AuthorizeParams,
}

/// `POST /oauth/login`: the browser flow's log-in; on success, a web session cookie and back to
/// the same request. A form posted from another site is refused (login CSRF: it would log the
/// victim's browser into the attacker's account).
pub async fn login(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<LoginForm>, FormRejection>,
) -> Response {
    if let Some(refused) = refused_form(&s, &headers) {
        return refused;
    }
    let Ok(Form(form)) = form else {
        return ApiError(Error::invalid("the log-in form needs a username and a password")).into_response();
    };
    let pairs = params_as_pairs(&form.request);
    let guard = || FormGuard::for_page(&s, &headers, "/oauth");
    match check_form(&s, &headers, form.csrf.as_deref()) {
        FormCheck::Holds => {}
        // From our origin (`refused_form` let it through), without this browser's token.
        FormCheck::CrossSite | FormCheck::Stale => {
            return pages::login(&borrowed(&pairs), StatusCode::FORBIDDEN, Some(STALE), guard())
        }
    }
    if let Err(e) = s.rate.check_ip(peer.ip()) {
        return ApiError(e).into_response();
    }
    let user = match crate::throttle::log_in(&s, &form.username, &form.password).await {
        Ok(u) => u,
        Err(e) if e.code == ErrorCode::Unauthenticated => {
            return pages::login(
                &borrowed(&pairs),
                StatusCode::UNAUTHORIZED,
                Some("Wrong username or password."),
                guard(),
            )
        }
        Err(e) if e.code == ErrorCode::RateLimited => {
            let page = pages::login(&borrowed(&pairs), e.status(), Some(&e.message), guard());
            return crate::throttle::with_retry_after(page, &e);
        }
        Err(e) => return ApiError(e).into_response(),
    };
    let now = s.clock.now();
    let (token, expires) = match s.control.create_session(&user, TokenKind::Web, now).await {
        Ok(t) => t,
        Err(e) => return ApiError(e).into_response(),
    };
    // Back to our own authorize endpoint only: the target is built here, never taken from input.
    let query = serde_urlencoded::to_string(&form.request).unwrap_or_default();
    let cookies = session_cookies(s.secure_cookies, &token, expires, now);
    with_cookies(Redirect::to(&format!("/oauth/authorize?{query}")).into_response(), cookies)
}

/// An error of the token and revoke endpoints, in RFC 6749's shape.
struct OAuthError {
    status: StatusCode,
    error: &'static str,
    description: String,
    /// Answer with `WWW-Authenticate: Basic` (a failed client authentication by header).
    challenge: bool,
}

impl From<TokenError> for OAuthError {
    fn from(e: TokenError) -> Self {
        OAuthError {
            status: StatusCode::BAD_REQUEST,
            error: e.kind.as_str(),
            description: e.description,
            challenge: false,
        }
    }
}

impl From<Error> for OAuthError {
    fn from(e: Error) -> Self {
        if let Some(d) = &e.detail {
            tracing::error!(detail = %d, "token endpoint failed");
        }
        let status = e.status();
        let error = match e.code {
            ErrorCode::RateLimited | ErrorCode::Unavailable => "temporarily_unavailable",
            _ if status.is_server_error() => "server_error",
            _ => "invalid_request",
        };
        OAuthError { status, error, description: e.message, challenge: false }
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": self.error, "error_description": self.description});
        let mut resp = (self.status, [(header::CACHE_CONTROL, "no-store")], Json(body)).into_response();
        if self.challenge {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"selfcloud\""));
        }
        resp
    }
}

/// Authenticates the client of a token or revocation request: the secret of a confidential
/// client in `Authorization: Basic`, nothing for a public one. Answers the client id (the Basic
/// header's, which a form may then leave out) and whether a secret proved it.
async fn client_authenticated(
    s: &AppState,
    headers: &HeaderMap,
    form_client: Option<&str>,
) -> Result<(Option<String>, bool), OAuthError> {
    let header = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    let basic = token::basic_credentials(header).map_err(|e| unauthorized_client(e, header.is_some()))?;
    let client = match (&basic, form_client) {
        (Some((id, _)), Some(form)) if id != form => {
            return Err(
                TokenError::new(TokenErrorKind::InvalidRequest, "client_id differs from the Basic credentials").into()
            )
        }
        (Some((id, _)), _) => Some(id.clone()),
        (None, form) => form.map(str::to_owned),
    };
    let Some(id) = client.as_deref().and_then(|c| c.parse::<AppId>().ok()) else { return Ok((client, false)) };
    let Some(app) = s.control.app(id).await? else {
        // Credentials for no client are refused; without any, the request goes on to meet the
        // code or token, which answers for a client that is gone (its grants went with it).
        return match basic {
            Some(_) => {
                Err(unauthorized_client(TokenError::new(TokenErrorKind::InvalidClient, "unknown client_id"), true))
            }
            None => Ok((client, false)),
        };
    };
    token::authenticate_client(app.secret_hash.as_ref(), basic.as_ref().map(|(_, secret)| secret.as_str()))
        .map_err(|e| unauthorized_client(e, header.is_some()))?;
    Ok((client, app.secret_hash.is_some()))
}

/// RFC 6749 5.2: a client that tried the Authorization header and failed hears 401 with a challenge.
fn unauthorized_client(e: TokenError, tried_header: bool) -> OAuthError {
    let mut e = OAuthError::from(e);
    if tried_header && e.error == "invalid_client" {
        e.status = StatusCode::UNAUTHORIZED;
        e.challenge = true;
    }
    e
}

/// `POST /oauth/token`: parse, let the protocol decide inside control's transaction, answer.
pub async fn token(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<TokenForm>, FormRejection>,
) -> Response {
    let result: Result<serde_json::Value, OAuthError> = async {
        s.rate.check_ip(peer.ip())?;
        let Form(mut f) = form.map_err(|e| TokenError::new(TokenErrorKind::InvalidRequest, e.body_text()))?;
        f.client_id = client_authenticated(&s, &headers, f.client_id.as_deref()).await?.0;
        let now = s.clock.now();
        let (outcome, unknown) = match token::parse(f)? {
            TokenRequest::Code(req) => {
                let code = req.code.clone();
                let outcome = s.control.redeem_code(&code, now, move |c| token::decide_code(&req, c, now)).await?;
                (outcome, "unknown code")
            }
            TokenRequest::Refresh(req) => {
                let presented = req.token.clone();
                let decide = move |t: &_| token::decide_refresh(&req, t, now);
                (s.control.rotate_refresh(&presented, now, decide).await?, "unknown, expired or revoked refresh token")
            }
        };
        match outcome {
            TokenOutcome::Issued(t) => {
                // Each exchange is in the user's access log, as the app it was for.
                let logged = crate::auth::Logged::new(&s, "POST", "/oauth/token", &headers);
                let entry = logged.entry(&s, crate::auth::app_actor(&t.grant), None, 200);
                s.audit.record(t.instance, entry).await;
                Ok(serde_json::json!({
                "access_token": t.access,
                "token_type": "Bearer",
                "expires_in": t.expires_at.saturating_sub(now),
                "refresh_token": t.refresh,
                "scope": t.scopes.to_string(),
                }))
            }
            TokenOutcome::Refused(e) | TokenOutcome::Revoked(e) => Err(e.into()),
            TokenOutcome::GrantEnded => {
                Err(TokenError::new(TokenErrorKind::InvalidGrant, "the grant was revoked").into())
            }
            TokenOutcome::Unknown => Err(TokenError::new(TokenErrorKind::InvalidGrant, unknown).into()),
        }
    }
    .await;
    match result {
        Ok(body) => ([(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize)]
pub struct RevokeForm {
    token: Option<String>,
    client_id: Option<String>,
}

/// `POST /oauth/revoke` (RFC 7009): always 200 for a well-formed request, whether or not the
/// token was known, so the endpoint cannot be used to probe tokens. A refresh token ends its
/// sign-in (its token family); an access token ends itself. The user's grant stays: the user
/// revokes the app itself through `/v1/grants`.
pub async fn revoke(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    form: Result<Form<RevokeForm>, FormRejection>,
) -> Response {
    let result: Result<(), OAuthError> = async {
        s.rate.check_ip(peer.ip())?;
        let Form(f) = form.map_err(|e| TokenError::new(TokenErrorKind::InvalidRequest, e.body_text()))?;
        let token = f.token.ok_or_else(|| TokenError::new(TokenErrorKind::InvalidRequest, "token is required"))?;
        let (client, proven) = client_authenticated(&s, &headers, f.client_id.as_deref()).await?;
        // A confidential client's token is revoked by that client, authenticated (RFC 7009 2.1),
        // whether or not the form names it.
        if !proven {
            if let Some(app) = s.control.app_of_token(&token, s.clock.now()).await? {
                if s.control.app(app).await?.is_some_and(|a| a.secret_hash.is_some()) {
                    let e = TokenError::new(
                        TokenErrorKind::InvalidClient,
                        "this client is confidential: authenticate with client_secret_basic",
                    );
                    return Err(e.into());
                }
            }
        }
        let client: Option<AppId> = client.as_deref().and_then(|c| c.parse().ok());
        s.control.revoke_app_token(&token, client, s.clock.now()).await?;
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
    let scopes: Vec<String> = Scope::broadest().iter().map(Scope::to_string).collect();
    Json(serde_json::json!({
        "issuer": base,
        "authorization_endpoint": format!("{base}/oauth/authorize"),
        "token_endpoint": format!("{base}/oauth/token"),
        "revocation_endpoint": format!("{base}/oauth/revoke"),
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "revocation_endpoint_auth_methods_supported": ["none", "client_secret_basic"],
        "authorization_response_iss_parameter_supported": true,
        "scopes_supported": scopes,
    }))
}
