//! The client: holds the app's tokens, redeems and rotates them, and sends authenticated calls.

use crate::{AppConfig, AuthorizationRequest, Error, Result};
use reqwest::header::RETRY_AFTER;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// The tokens of one grant, as the token endpoint issued them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenSet {
    pub access_token: String,
    /// Single-use: each refresh answers a new one, which replaces this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Lifetime of the access token in seconds, counted from when it was issued.
    pub expires_in: u64,
    /// The granted scopes, space-separated; may be fewer than requested.
    pub scope: String,
}

/// Leaves the tokens out, so logging them leaks nothing.
impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("expires_in", &self.expires_in)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The token endpoint's answer (RFC 6749 §5.1); `refresh_token` and `scope` may be left out.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    token_type: String,
    expires_in: u64,
    refresh_token: Option<String>,
    scope: Option<String>,
}

/// A client of one selfcloud server for one app, holding at most one user's tokens.
///
/// Calls take `&self`; share it (e.g. in an `Arc`) rather than cloning tokens around, since a
/// refresh invalidates the old refresh token.
pub struct Client {
    config: AppConfig,
    http: reqwest::Client,
    tokens: Mutex<Option<TokenSet>>,
    /// A confidential client's secret, sent as `client_secret_basic` to the token endpoint.
    client_secret: Option<String>,
    /// Held while refreshing or revoking, so two refreshes never race with one refresh token.
    refresh_gate: tokio::sync::Mutex<()>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Client {
    /// A client with no tokens yet: run the authorization flow, then [`exchange_code`](Self::exchange_code).
    pub fn new(config: AppConfig) -> Self {
        let http = reqwest::Client::builder()
            // The API never redirects; following one could carry the request somewhere unintended.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("reqwest client without TLS always builds");
        Client {
            config,
            http,
            tokens: Mutex::new(None),
            client_secret: None,
            refresh_gate: tokio::sync::Mutex::new(()),
        }
    }

    /// For a confidential client (a server-side app registered with `"confidential": true`):
    /// its secret authenticates every token and revocation request (`client_secret_basic`).
    pub fn with_client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    /// A POST to an OAuth endpoint, with the client's secret when it has one.
    fn oauth_post(&self, url: url::Url) -> RequestBuilder {
        let request = self.http.post(url);
        match &self.client_secret {
            // Client ids and secrets are URL-safe, so their form-encoding (RFC 6749 2.3.1) is themselves.
            Some(secret) => request.basic_auth(&self.config.client_id, Some(secret)),
            None => request,
        }
    }

    /// A client resuming a grant whose tokens were saved earlier.
    pub fn with_tokens(config: AppConfig, tokens: TokenSet) -> Self {
        let client = Self::new(config);
        client.set_tokens(Some(tokens));
        client
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// The tokens held now; save them after calls, since a refresh replaces them.
    pub fn tokens(&self) -> Option<TokenSet> {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    fn set_tokens(&self, tokens: Option<TokenSet>) {
        *self.tokens.lock().unwrap_or_else(PoisonError::into_inner) = tokens;
    }

    /// Redeems the code from [`AuthorizationRequest::finish`] with that request's verifier,
    /// and holds the tokens it answers.
    pub async fn exchange_code(&self, request: &AuthorizationRequest, code: &str) -> Result<TokenSet> {
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &request.config.redirect_uri),
            ("client_id", &request.config.client_id),
            ("code_verifier", request.code_verifier()),
        ];
        let tokens = self.token_request(&form, None, request.scope()).await?;
        self.set_tokens(Some(tokens.clone()));
        Ok(tokens)
    }

    /// Trades the refresh token for new tokens, which replace the held ones.
    pub async fn refresh(&self) -> Result<TokenSet> {
        let _gate = self.refresh_gate.lock().await;
        self.refresh_locked().await
    }

    /// The refresh itself; the caller holds `refresh_gate`.
    async fn refresh_locked(&self) -> Result<TokenSet> {
        let current = self.tokens().ok_or(Error::NoToken("refresh"))?;
        let refresh_token = current.refresh_token.as_deref().ok_or(Error::NoToken("refresh"))?;
        let form =
            [("grant_type", "refresh_token"), ("refresh_token", refresh_token), ("client_id", &self.config.client_id)];
        let tokens = self.token_request(&form, current.refresh_token.as_deref(), &current.scope).await?;
        self.set_tokens(Some(tokens.clone()));
        Ok(tokens)
    }

    /// POSTs `form` to the token endpoint; what the answer leaves out is kept from before (RFC 6749 §5.1, §6).
    async fn token_request(&self, form: &[(&str, &str)], refresh_token: Option<&str>, scope: &str) -> Result<TokenSet> {
        let url = self.config.endpoint(&["oauth", "token"])?;
        let answer: TokenAnswer = read_json(check(self.oauth_post(url).form(form).send().await?).await?).await?;
        if !answer.token_type.eq_ignore_ascii_case("bearer") {
            return Err(Error::Protocol(format!("token type {:?}, not Bearer", answer.token_type)));
        }
        Ok(TokenSet {
            access_token: answer.access_token,
            refresh_token: answer.refresh_token.or_else(|| refresh_token.map(str::to_owned)),
            expires_in: answer.expires_in,
            scope: answer.scope.unwrap_or_else(|| scope.to_owned()),
        })
    }

    /// Revokes the access token, then the refresh token (RFC 7009), and forgets both.
    /// Holding no tokens, there is nothing to do.
    pub async fn revoke(&self) -> Result<()> {
        let _gate = self.refresh_gate.lock().await;
        let Some(tokens) = self.tokens() else {
            return Ok(());
        };
        self.revoke_one(&tokens.access_token, "access_token").await?;
        if let Some(refresh_token) = &tokens.refresh_token {
            self.revoke_one(refresh_token, "refresh_token").await?;
        }
        self.set_tokens(None);
        Ok(())
    }

    async fn revoke_one(&self, token: &str, hint: &str) -> Result<()> {
        let url = self.config.endpoint(&["oauth", "revoke"])?;
        let form = [("token", token), ("token_type_hint", hint), ("client_id", &self.config.client_id)];
        check(self.oauth_post(url).form(&form).send().await?).await?;
        Ok(())
    }

    /// Access to the user's records.
    pub fn storage(&self) -> crate::Storage<'_> {
        crate::Storage::new(self)
    }

    /// GETs `path` (e.g. `/v1/me`, may carry a query) under the base URL and answers its JSON.
    pub async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        self.send_json(Method::GET, path, None).await
    }

    /// Sends `body` as JSON to `path` under the base URL; an empty answer (204) is `Null`.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let url = self.config.resolve(path)?;
        let response = self
            .send_authed(|http| {
                let request = http.request(method.clone(), url.clone());
                match body {
                    Some(body) => request.json(body),
                    None => request,
                }
            })
            .await?;
        let bytes = check(response).await?.bytes().await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("answer is not JSON: {e}")))
    }

    /// Sends the request `build` makes with the access token, and answers the response as is.
    ///
    /// On a 401 while a refresh token is held, refreshes once and sends again: access tokens
    /// are short-lived, so an expired one is routine. If another call refreshed meanwhile, its
    /// token is used instead of refreshing twice. If the server refuses the refresh, the
    /// original 401 is answered, so a dead grant reads the same with or without a refresh token.
    pub(crate) async fn send_authed(&self, build: impl Fn(&reqwest::Client) -> RequestBuilder) -> Result<Response> {
        let token = self.tokens().ok_or(Error::NoToken("access"))?.access_token;
        let response = build(&self.http).bearer_auth(&token).send().await?;
        if response.status() != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        match self.token_after_rejection(&token).await {
            Ok(Some(fresh)) => Ok(build(&self.http).bearer_auth(fresh).send().await?),
            Ok(None) | Err(Error::Api { .. }) => Ok(response),
            Err(e) => Err(e),
        }
    }

    /// An access token newer than `rejected`, refreshing unless another call already did;
    /// `None` when there is no way to get one.
    async fn token_after_rejection(&self, rejected: &str) -> Result<Option<String>> {
        let _gate = self.refresh_gate.lock().await;
        match self.tokens() {
            Some(current) if current.access_token != rejected => Ok(Some(current.access_token)),
            Some(TokenSet { refresh_token: Some(_), .. }) => Ok(Some(self.refresh_locked().await?.access_token)),
            _ => Ok(None),
        }
    }
}

/// Passes a success through; turns an error status into [`Error::Api`].
pub(crate) async fn check(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let retry_after =
        response.headers().get(RETRY_AFTER).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse().ok());
    let body = response.text().await.unwrap_or_default();
    Err(Error::from_answer(status.as_u16(), retry_after, &body))
}

/// The body as `T`; a body of another shape is the server breaking the contract.
pub(crate) async fn read_json<T: DeserializeOwned>(response: Response) -> Result<T> {
    let url = response.url().clone();
    let bytes = response.bytes().await?;
    serde_json::from_slice(&bytes).map_err(|e| Error::Protocol(format!("unexpected answer from {url}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testserver::{response, serve, Seen};
    use serde_json::json;

    fn config(base: url::Url) -> AppConfig {
        AppConfig { base_url: base, client_id: "notes-app".into(), redirect_uri: "http://127.0.0.1:9000/cb".into() }
    }

    fn tokens(access: &str, refresh: &str) -> TokenSet {
        TokenSet {
            access_token: access.into(),
            refresh_token: Some(refresh.into()),
            expires_in: 900,
            scope: "profile:read".into(),
        }
    }

    fn form(seen: &Seen) -> Vec<(String, String)> {
        url::form_urlencoded::parse(seen.body.as_bytes()).into_owned().collect()
    }

    fn token_answer(access: &str, refresh: &str) -> String {
        let body = json!({"access_token": access, "token_type": "Bearer", "expires_in": 900, "refresh_token": refresh, "scope": "profile:read"});
        response(200, &[("content-type", "application/json")], &body.to_string())
    }

    #[tokio::test]
    async fn exchange_code_posts_the_verifier_and_holds_the_tokens() {
        let (base, seen) = serve(vec![token_answer("a1", "r1")]);
        let client = Client::new(config(base));
        let request = AuthorizationRequest::new(client.config(), &["profile:read"]);
        let got = client.exchange_code(&request, "the-code").await.unwrap();
        assert_eq!(got, tokens("a1", "r1"));
        assert_eq!(client.tokens(), Some(got));

        let seen = seen.recv().unwrap();
        assert_eq!((seen.method.as_str(), seen.target.as_str()), ("POST", "/oauth/token"));
        assert_eq!(seen.header("content-type"), Some("application/x-www-form-urlencoded"));
        let pairs = |k, v: &str| (String::from(k), v.to_owned());
        assert_eq!(
            form(&seen),
            [
                pairs("grant_type", "authorization_code"),
                pairs("code", "the-code"),
                pairs("redirect_uri", "http://127.0.0.1:9000/cb"),
                pairs("client_id", "notes-app"),
                pairs("code_verifier", request.code_verifier()),
            ]
        );
    }

    #[tokio::test]
    async fn refresh_rotates_the_tokens() {
        let (base, seen) = serve(vec![token_answer("a2", "r2")]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        assert_eq!(client.refresh().await.unwrap(), tokens("a2", "r2"));
        assert_eq!(client.tokens(), Some(tokens("a2", "r2")));
        let form = form(&seen.recv().unwrap());
        assert!(form.contains(&("grant_type".into(), "refresh_token".into())));
        assert!(form.contains(&("refresh_token".into(), "r1".into())));
        assert!(form.contains(&("client_id".into(), "notes-app".into())));
    }

    #[tokio::test]
    async fn refresh_keeps_what_the_answer_leaves_out() {
        let body = json!({"access_token": "a2", "token_type": "bearer", "expires_in": 60});
        let (base, _seen) = serve(vec![response(200, &[], &body.to_string())]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        let got = client.refresh().await.unwrap();
        assert_eq!(got, TokenSet { access_token: "a2".into(), expires_in: 60, ..tokens("", "r1") });
    }

    #[tokio::test]
    async fn refuses_a_token_type_other_than_bearer() {
        let body = json!({"access_token": "a2", "token_type": "mac", "expires_in": 60});
        let (base, _seen) = serve(vec![response(200, &[], &body.to_string())]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        assert!(matches!(client.refresh().await, Err(Error::Protocol(_))));
        assert_eq!(client.tokens(), Some(tokens("a1", "r1")));
    }

    #[tokio::test]
    async fn revoke_revokes_both_tokens_and_forgets_them() {
        let (base, seen) = serve(vec![response(200, &[], ""), response(200, &[], "")]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        client.revoke().await.unwrap();
        assert_eq!(client.tokens(), None);
        let seen: Vec<_> = seen.try_iter().collect();
        assert_eq!(seen.len(), 2);
        for (seen, (token, hint)) in seen.iter().zip([("a1", "access_token"), ("r1", "refresh_token")]) {
            assert_eq!(seen.target, "/oauth/revoke");
            let form = form(seen);
            assert!(form.contains(&("token".into(), token.into())));
            assert!(form.contains(&("token_type_hint".into(), hint.into())));
        }
        assert!(matches!(client.get_json("/v1/me").await, Err(Error::NoToken("access"))));
    }

    #[tokio::test]
    async fn a_401_refreshes_once_and_retries() {
        let unauthenticated = r#"{"error":{"code":"unauthenticated","message":"token expired"}}"#;
        let (base, seen) = serve(vec![
            response(401, &[], unauthenticated),
            token_answer("a2", "r2"),
            response(200, &[], r#"{"user":"ann"}"#),
        ]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        assert_eq!(client.get_json("/v1/me").await.unwrap(), json!({"user": "ann"}));
        assert_eq!(client.tokens(), Some(tokens("a2", "r2")));
        let seen: Vec<_> = seen.try_iter().collect();
        assert_eq!(seen[0].header("authorization"), Some("Bearer a1"));
        assert_eq!(seen[1].target, "/oauth/token");
        assert_eq!((seen[2].target.as_str(), seen[2].header("authorization")), ("/v1/me", Some("Bearer a2")));
    }

    #[tokio::test]
    async fn a_refused_refresh_answers_the_original_401() {
        let (base, _seen) = serve(vec![
            response(401, &[], r#"{"error":{"code":"unauthenticated","message":"revoked"}}"#),
            response(400, &[], r#"{"error":"invalid_grant"}"#),
        ]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        let err = client.get_json("/v1/me").await.unwrap_err();
        assert_eq!((err.status(), err.code()), (Some(401), Some("unauthenticated")));
    }

    #[tokio::test]
    async fn send_json_posts_json_and_reads_an_empty_answer_as_null() {
        let (base, seen) = serve(vec![response(204, &[], "")]);
        let client = Client::with_tokens(config(base), tokens("a1", "r1"));
        let got = client.send_json(Method::POST, "v1/things?x=1", Some(&json!({"a": 1}))).await.unwrap();
        assert_eq!(got, serde_json::Value::Null);
        let seen = seen.recv().unwrap();
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str(), seen.body.as_str()),
            ("POST", "/v1/things?x=1", r#"{"a":1}"#)
        );
    }
}
