//! The OAuth 2.1 authorization-code flow with PKCE (S256 only), up to the authorization code.
//!
//! PKCE binds the code to this client: only the holder of the verifier can redeem it, so a
//! code intercepted on the redirect is useless. `state` ties the redirect to this request,
//! so a forged redirect is refused.

use crate::{Error, Result};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use std::fmt;
use url::{Position, Url};

/// Where the server is and how the app is registered there.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppConfig {
    /// The server's root, an `http(s)` URL; a path prefix (`http://host/selfcloud/`) is kept.
    pub base_url: Url,
    pub client_id: String,
    /// Exactly as registered: the server compares it verbatim.
    pub redirect_uri: String,
}

impl AppConfig {
    /// `base_url` with `segments` appended, each percent-encoded as one path segment.
    pub(crate) fn endpoint(&self, segments: &[&str]) -> Result<Url> {
        let mut url = self.base_url.clone();
        url.set_query(None);
        url.set_fragment(None);
        url.path_segments_mut()
            .map_err(|()| Error::InvalidInput(format!("base URL {} is not an http(s) URL", self.base_url)))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// `path` (which may carry a query) resolved under `base_url`, keeping any path prefix.
    pub(crate) fn resolve(&self, path: &str) -> Result<Url> {
        let base = self.endpoint(&[""])?;
        base.join(path.trim_start_matches('/')).map_err(|e| Error::InvalidInput(format!("path {path:?}: {e}")))
    }
}

/// The PKCE challenge for `verifier`: base64url-no-pad(SHA-256(verifier)), RFC 7636 §4.2.
pub fn code_challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

/// 32 random bytes as 43 unreserved characters: a valid PKCE verifier, and an unguessable state.
fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// One authorization attempt: send the user to [`url`](Self::url), then hand the redirect the
/// server answers with to [`finish`](Self::finish), and the code to
/// [`Client::exchange_code`](crate::Client::exchange_code) with this same request.
#[derive(Clone)]
pub struct AuthorizationRequest {
    pub(crate) config: AppConfig,
    scope: String,
    state: String,
    verifier: String,
    challenge: String,
}

impl AuthorizationRequest {
    /// A fresh request for `scopes` (e.g. `storage:read:notes`), with a new verifier and state.
    pub fn new(config: &AppConfig, scopes: &[&str]) -> Self {
        let verifier = random_token();
        AuthorizationRequest {
            config: config.clone(),
            scope: scopes.join(" "),
            state: random_token(),
            challenge: code_challenge(&verifier),
            verifier,
        }
    }

    pub fn state(&self) -> &str {
        &self.state
    }

    /// The secret redeemed with the code; never put it in a URL.
    pub fn code_verifier(&self) -> &str {
        &self.verifier
    }

    pub fn code_challenge(&self) -> &str {
        &self.challenge
    }

    /// The requested scopes, space-separated.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// The authorization endpoint's query parameters, in order; also what a consent form posts.
    pub fn params(&self) -> Vec<(String, String)> {
        [
            ("response_type", "code"),
            ("client_id", &self.config.client_id),
            ("redirect_uri", &self.config.redirect_uri),
            ("scope", &self.scope),
            ("state", &self.state),
            ("code_challenge", &self.challenge),
            ("code_challenge_method", "S256"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }

    /// `{base}/oauth/authorize?...`, where the user's browser goes to consent.
    ///
    /// # Panics
    /// When `base_url` cannot have a path (not an `http(s)` URL).
    pub fn url(&self) -> Url {
        let mut url = self.config.endpoint(&["oauth", "authorize"]).expect("base_url must be an http(s) URL");
        url.query_pairs_mut().extend_pairs(self.params());
        url
    }

    /// Reads the authorization code from the URL the server redirected to.
    ///
    /// Refuses (with [`Error::Protocol`]) a redirect to anywhere but the redirect URI and one
    /// whose `state` is missing or not ours, before looking at anything else: an unchecked
    /// redirect could carry an attacker's code. An OAuth `error` becomes [`Error::Denied`].
    pub fn finish(&self, redirect_location: &str) -> Result<String> {
        let got = Url::parse(redirect_location)
            .map_err(|e| Error::Protocol(format!("redirect {redirect_location:?} is not a URL: {e}")))?;
        let want = Url::parse(&self.config.redirect_uri)
            .map_err(|e| Error::InvalidInput(format!("redirect_uri is not a URL: {e}")))?;
        if got[..Position::AfterPath] != want[..Position::AfterPath] {
            return Err(Error::Protocol(format!("redirected to {got}, not to the redirect URI")));
        }
        let param = |name: &str| got.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
        if param("state").as_deref() != Some(self.state.as_str()) {
            return Err(Error::Protocol("redirect state does not match the request".into()));
        }
        if let Some(error) = param("error") {
            return Err(Error::Denied(error));
        }
        match param("code") {
            Some(code) if !code.is_empty() => Ok(code),
            _ => Err(Error::Protocol("redirect carries neither code nor error".into())),
        }
    }
}

/// Leaves the verifier and state out, so logging a request leaks nothing.
impl fmt::Debug for AuthorizationRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationRequest")
            .field("config", &self.config)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AppConfig {
        AppConfig {
            base_url: "http://127.0.0.1:8080/prefix".parse().unwrap(),
            client_id: "notes-app".into(),
            redirect_uri: "http://127.0.0.1:9000/cb".into(),
        }
    }

    fn request() -> AuthorizationRequest {
        AuthorizationRequest::new(&config(), &["storage:read:notes", "profile:read"])
    }

    #[test]
    fn challenge_matches_rfc7636_appendix_b() {
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn verifier_is_valid_and_fresh() {
        let (a, b) = (request(), request());
        assert_eq!(a.code_verifier().len(), 43);
        assert!(a.code_verifier().bytes().all(|c| c.is_ascii_alphanumeric() || b"-._~".contains(&c)));
        assert_eq!(a.code_challenge(), code_challenge(a.code_verifier()));
        assert_ne!(a.code_verifier(), b.code_verifier());
        assert_ne!(a.state(), b.state());
        assert_ne!(a.state(), a.code_verifier());
    }

    #[test]
    fn url_carries_every_param() {
        let req = request();
        let url = req.url();
        assert_eq!(url.path(), "/prefix/oauth/authorize");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs, req.params());
        let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("response_type"), Some("code"));
        assert_eq!(get("client_id"), Some("notes-app"));
        assert_eq!(get("redirect_uri"), Some("http://127.0.0.1:9000/cb"));
        assert_eq!(get("scope"), Some("storage:read:notes profile:read"));
        assert_eq!(get("state"), Some(req.state()));
        assert_eq!(get("code_challenge"), Some(req.code_challenge()));
        assert_eq!(get("code_challenge_method"), Some("S256"));
        assert!(!url.as_str().contains(req.code_verifier()));
    }

    #[test]
    fn finish_returns_the_code() {
        let req = request();
        let location = format!("http://127.0.0.1:9000/cb?code=abc&state={}", req.state());
        assert_eq!(req.finish(&location).unwrap(), "abc");
    }

    #[test]
    fn finish_refuses_a_wrong_or_missing_state() {
        let req = request();
        for location in ["http://127.0.0.1:9000/cb?code=abc&state=forged", "http://127.0.0.1:9000/cb?code=abc"] {
            assert!(matches!(req.finish(location), Err(Error::Protocol(_))), "{location}");
        }
    }

    #[test]
    fn finish_refuses_a_foreign_redirect() {
        let req = request();
        for target in [
            "http://evil.example/cb",
            "http://127.0.0.1:9001/cb",
            "http://127.0.0.1:9000/cbx",
            "https://127.0.0.1:9000/cb",
        ] {
            let location = format!("{target}?code=abc&state={}", req.state());
            assert!(matches!(req.finish(&location), Err(Error::Protocol(_))), "{location}");
        }
        assert!(matches!(req.finish("/cb?code=abc"), Err(Error::Protocol(_))));
    }

    #[test]
    fn finish_maps_an_oauth_error_to_denied() {
        let req = request();
        let location = format!("http://127.0.0.1:9000/cb?error=access_denied&state={}", req.state());
        assert!(matches!(req.finish(&location), Err(Error::Denied(e)) if e == "access_denied"));
        let forged = "http://127.0.0.1:9000/cb?error=access_denied&state=forged";
        assert!(matches!(req.finish(forged), Err(Error::Protocol(_))));
    }

    #[test]
    fn finish_refuses_a_redirect_without_code() {
        let req = request();
        let location = format!("http://127.0.0.1:9000/cb?state={}", req.state());
        assert!(matches!(req.finish(&location), Err(Error::Protocol(_))));
    }

    #[test]
    fn resolve_keeps_the_prefix_and_query() {
        let url = config().resolve("/v1/me?x=1").unwrap();
        assert_eq!(url.as_str(), "http://127.0.0.1:8080/prefix/v1/me?x=1");
        let url = config().endpoint(&["v1", "storage", "a b", "k/1"]).unwrap();
        assert_eq!(url.path(), "/prefix/v1/storage/a%20b/k%2F1");
    }
}
