//! The OAuth 2.1 authorization server's protocol: authorization code with PKCE (S256 only),
//! refresh-token rotation, revocation. This module decides; `handlers` only moves HTTP in and out.
//! Functions here take every input (time included) as arguments, so the tests beside them
//! control everything.

pub mod handlers;
mod pages;
pub mod token;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use selfcloud_control::App;
use selfcloud_core::{AppId, Error, ScopeSet};
use serde::Deserialize;
use sha2::{Digest, Sha256};

/// The parameters of an authorization request, as the client sent them (query or form).
#[derive(Clone, Debug, Default, Deserialize, serde::Serialize)]
pub struct AuthorizeParams {
    pub response_type: Option<String>,
    pub client_id: Option<String>,
    pub redirect_uri: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub code_challenge: Option<String>,
    pub code_challenge_method: Option<String>,
}

/// A request that passed every check.
#[derive(Clone, Debug)]
pub struct ValidAuthorize {
    pub app: App,
    pub redirect_uri: String,
    pub scopes: ScopeSet,
    pub state: Option<String>,
    pub code_challenge: String,
}

/// Why a request was refused, and how the refusal must be delivered.
#[derive(Debug)]
pub enum AuthorizeError {
    /// The client or redirect URI cannot be trusted: show the user an error, never redirect
    /// (redirecting would make us an open redirector).
    Show(Error),
    /// The client is known and the redirect URI registered: report to the client (RFC 6749 4.1.2.1).
    Redirect { redirect_uri: String, error: &'static str, description: String, state: Option<String> },
}

pub const MAX_STATE: usize = 512;

/// Redirect URIs are absolute `https` URLs, or `http` on a loopback host (RFC 8252 native apps),
/// without fragment or credentials, and written exactly as the URL parser would write them: the
/// string registered is the string matched and the string redirected to, so nothing the parser
/// would strip or rewrite (a line break, a tab, a bare host without its `/`) can smuggle a
/// second address in.
pub fn validate_redirect_uri(uri: &str) -> Result<(), Error> {
    let shown: String = uri.chars().take(80).collect();
    let bad = |why: &str| Error::invalid(format!("redirect_uri {shown:?}: {why}"));
    if uri.len() > 2048 {
        return Err(bad("longer than 2048 bytes"));
    }
    if uri.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(bad("must not contain control characters or whitespace"));
    }
    let parsed = url::Url::parse(uri).map_err(|_| bad("not an absolute URL"))?;
    if parsed.as_str() != uri {
        return Err(bad(&format!("write it exactly as {:?}", parsed.as_str())));
    }
    if parsed.fragment().is_some() {
        return Err(bad("must not have a fragment"));
    }
    if parsed.username() != "" || parsed.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    match parsed.scheme() {
        "https" if parsed.host().is_some() => Ok(()),
        "http" => match parsed.host_str() {
            Some("127.0.0.1") | Some("[::1]") | Some("localhost") => Ok(()),
            _ => Err(bad("http is allowed only on a loopback host")),
        },
        _ => Err(bad("use https, or http on a loopback host")),
    }
}

/// Checks an authorization request against the registered app (`None`: no such client).
pub fn check_authorize(p: &AuthorizeParams, app: Option<App>) -> Result<ValidAuthorize, AuthorizeError> {
    let show = |m: &str| AuthorizeError::Show(Error::invalid(m.to_owned()));
    p.client_id
        .as_deref()
        .ok_or_else(|| show("client_id is missing"))?
        .parse::<AppId>()
        .map_err(|_| show("unknown client_id"))?;
    let app = app.ok_or_else(|| show("unknown client_id"))?;
    let redirect_uri = p.redirect_uri.clone().ok_or_else(|| show("redirect_uri is missing"))?;
    // Exact string match against the registration: no prefix, no normalisation. Checked again
    // here, so a registration stored before the rules were strict cannot be redirected to.
    if !app.redirect_uris.contains(&redirect_uri) || validate_redirect_uri(&redirect_uri).is_err() {
        return Err(show("redirect_uri is not registered for this app"));
    }
    if p.state.as_ref().is_some_and(|s| s.len() > MAX_STATE || s.chars().any(char::is_control)) {
        return Err(show("state is too long or not printable"));
    }
    let fail = |error: &'static str, description: &str| AuthorizeError::Redirect {
        redirect_uri: redirect_uri.clone(),
        error,
        description: description.to_owned(),
        state: p.state.clone(),
    };
    if p.response_type.as_deref() != Some("code") {
        return Err(fail("unsupported_response_type", "only response_type=code is supported"));
    }
    if p.code_challenge_method.as_deref() != Some("S256") {
        return Err(fail("invalid_request", "PKCE with code_challenge_method=S256 is required"));
    }
    let code_challenge = p.code_challenge.clone().unwrap_or_default();
    if code_challenge.len() != 43 || URL_SAFE_NO_PAD.decode(&code_challenge).map_or(true, |d| d.len() != 32) {
        return Err(fail("invalid_request", "code_challenge must be base64url(SHA-256(code_verifier))"));
    }
    let scopes = ScopeSet::parse_for(p.scope.as_deref().unwrap_or(""), &app.client_id)
        .map_err(|e| fail("invalid_scope", &e.message))?;
    if scopes.is_empty() {
        return Err(fail("invalid_scope", "ask for at least one scope"));
    }
    if !app.scopes.covers_all(&scopes) {
        return Err(fail("invalid_scope", "a scope asked for is outside the app's registration"));
    }
    Ok(ValidAuthorize { app, redirect_uri, scopes, state: p.state.clone(), code_challenge })
}

/// What a consent grants: the request narrowed to the boxes the user left ticked, plus whatever
/// of it the app already holds (incremental authorization: those are not asked again). `None`
/// for the boxes is an API client driving the flow without a page: it takes the whole request.
/// Unticking every box grants nothing new, never everything.
pub fn granted_scopes(requested: &ScopeSet, ticked: Option<&ScopeSet>, held: &ScopeSet) -> ScopeSet {
    match ticked {
        None => requested.clone(),
        Some(ticked) => requested.restricted_to(&ticked.union(held)),
    }
}

/// The longest a grant may be set to last, in days (about ten years); past it, "until revoked".
pub const MAX_GRANT_DAYS: u64 = 3650;

/// When a grant ends, from the consent's choice: `days` from now; empty for "until I revoke it";
/// no choice at all for the end the app's grant already has (`held_end`, `None` for a new
/// grant), so asking for one more scope changes nothing the user did not touch; `keep` (the
/// page's first option when the grant it showed has an end) for that end, which must still be
/// there: a grant that ended or was revoked while the page was open must not turn "keep" into
/// "forever".
pub fn grant_expiry(days: Option<&str>, held_end: Option<u64>, now: u64) -> Result<Option<u64>, Error> {
    match days.map(str::trim) {
        None => Ok(held_end),
        Some("keep") => held_end.map(Some).ok_or_else(|| {
            Error::invalid("this app's access ended while you were deciding; choose how long it lasts again")
        }),
        Some("") => Ok(None),
        Some(d) => match d.parse::<u64>() {
            Ok(n) if (1..=MAX_GRANT_DAYS).contains(&n) => Ok(Some(now + n * 86_400)),
            _ => Err(Error::invalid(format!(
                "expires_in_days must be a whole number of days from 1 to {MAX_GRANT_DAYS}"
            ))),
        },
    }
}

/// RFC 7636: the verifier is 43 to 128 unreserved characters and hashes to the challenge.
pub fn verify_pkce(verifier: &str, challenge: &str) -> bool {
    let well_formed = (43..=128).contains(&verifier.len())
        && verifier.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    well_formed && URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes())) == challenge
}

/// `redirect_uri` (a checked, registered one) with the given parameters added to its query.
pub fn redirect_with(redirect_uri: &str, params: &[(&str, &str)]) -> Result<String, Error> {
    let mut url = url::Url::parse(redirect_uri).map_err(|e| Error::internal(format!("redirect_uri: {e}")))?;
    url.query_pairs_mut().extend_pairs(params);
    Ok(url.into())
}

/// The CSRF token of a browser session: derived from the session, so a page on another origin,
/// which cannot read the session cookie, cannot forge it.
pub fn csrf_token(session_hash: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"selfcloud csrf v1\0");
    h.update(session_hash);
    hex_encode(&h.finalize())
}

/// Compares a form's CSRF token with the session's in constant time.
pub fn csrf_matches(sent: Option<&str>, session_hash: &[u8; 32]) -> bool {
    use subtle::ConstantTimeEq;
    let expected = csrf_token(session_hash);
    sent.is_some_and(|sent| bool::from(sent.as_bytes().ct_eq(expected.as_bytes())))
}

/// Whether a browser sent this form from one of our own pages. Browsers say so in
/// `Sec-Fetch-Site`; a page on another port of the same host is "same-site", not "same-origin",
/// and is refused like any other site. A browser's `Origin` must also be this server's own, the
/// issuer's: a page of another name that resolves here (DNS rebinding) is same-origin to the
/// browser, but not to us. Clients that send neither (curl, SDKs) are not browsers and carry no
/// ambient credential to abuse.
pub fn sent_from_our_pages(sec_fetch_site: Option<&str>, origin: Option<&str>, issuer: &str) -> bool {
    let site_ok = sec_fetch_site.is_none_or(|site| matches!(site, "same-origin" | "none"));
    let origin_ok = origin.is_none_or(|origin| origin == issuer);
    site_ok && origin_ok
}

fn hex_encode(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
