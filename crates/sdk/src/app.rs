//! SELF's developer shape over the protocol: an [`App`] makes connection URLs and turns the
//! callback into a [`Session`], which talks to the user's assistant (`session.ai()`) and keeps
//! the app's records (`session.storage()`), and knows what it was allowed.
//!
//! ```no_run
//! # async fn demo(callback_url: &str) -> selfcloud_sdk::Result<()> {
//! let app = selfcloud_sdk::App::new("app_…", "http://127.0.0.1:8420", "http://127.0.0.1:9000/callback")?;
//! let connect = app.create_connection_url(&["ai:chat", "storage:read", "storage:write"]);
//! // Send the user to `connect`; selfcloud sends them back to the redirect URL:
//! let session = app.handle_callback(callback_url).await?;
//! let answer = session.ai().chat("Hello").await?;
//! session.storage().set("greeting", &answer).await?;
//! # Ok(()) }
//! ```

use crate::{AppConfig, AuthorizationRequest, Client, Error, Result, TokenSet};
use eventsource_stream::Eventsource;
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// An app registered with a selfcloud server.
pub struct App {
    config: AppConfig,
    client_secret: Option<String>,
    /// Connection requests on their way, by `state`: the callback must match one.
    pending: Mutex<Pending>,
}

/// How long a started connection waits for its callback: a person reading a consent page.
const PENDING_FOR: Duration = Duration::from_secs(3600);
/// How many started connections are kept at once. Each visitor who opens the connection URL
/// and never comes back leaves one; past this, the oldest goes.
const PENDING_MAX: usize = 4096;

/// Connections started and not yet back, bounded in time and number.
#[derive(Default)]
struct Pending(HashMap<String, (Instant, AuthorizationRequest)>);

impl Pending {
    fn insert(&mut self, request: AuthorizationRequest, now: Instant) {
        self.0.retain(|_, (at, _)| now.duration_since(*at) < PENDING_FOR);
        if self.0.len() >= PENDING_MAX {
            let oldest = self.0.iter().min_by_key(|(_, (at, _))| *at).map(|(state, _)| state.clone());
            if let Some(oldest) = oldest {
                self.0.remove(&oldest);
            }
        }
        self.0.insert(request.state().to_owned(), (now, request));
    }

    fn take(&mut self, state: &str, now: Instant) -> Option<AuthorizationRequest> {
        self.0.remove(state).filter(|(at, _)| now.duration_since(*at) < PENDING_FOR).map(|(_, r)| r)
    }
}

/// The collections an app owns in each user's store, as the server derives them from its client
/// id (`app-` and its first 16 hex digits): where bare `storage:read`/`storage:write` reach.
pub fn app_namespace(client_id: &str) -> Option<String> {
    let hex = client_id.strip_prefix("app_").filter(|h| h.len() == 32)?;
    Some(format!("app-{}", &hex[..16]))
}

impl App {
    /// `app_id` is the client id the server gave at registration; `redirect_url` one of the
    /// app's registered redirect URIs, written exactly as registered.
    pub fn new(app_id: &str, server: &str, redirect_url: &str) -> Result<App> {
        let base_url = server.parse().map_err(|e| Error::InvalidInput(format!("server URL {server:?}: {e}")))?;
        let config = AppConfig { base_url, client_id: app_id.into(), redirect_uri: redirect_url.into() };
        Ok(App { config, client_secret: None, pending: Mutex::default() })
    }

    /// A confidential client (a server-side app): its secret goes with every token request.
    pub fn with_client_secret(mut self, secret: impl Into<String>) -> Self {
        self.client_secret = Some(secret.into());
        self
    }

    pub fn config(&self) -> &AppConfig {
        &self.config
    }

    /// Where to send the user to ask for `permissions` (SELF's words or ours: `ai:chat`,
    /// `storage:read`, `storage:write:notes`...). Each call is one attempt, remembered until its
    /// callback.
    pub fn create_connection_url(&self, permissions: &[&str]) -> String {
        self.create_connection_url_to(permissions, &self.config.redirect_uri)
    }

    /// [`App::create_connection_url`], coming back to `redirect_url`: another of the app's
    /// registered redirect URIs, for this connection only.
    pub fn create_connection_url_to(&self, permissions: &[&str], redirect_url: &str) -> String {
        let config = AppConfig { redirect_uri: redirect_url.into(), ..self.config.clone() };
        let request = AuthorizationRequest::new(&config, permissions);
        let url = request.url().to_string();
        self.pending.lock().unwrap().insert(request, Instant::now());
        url
    }

    /// The user came back: `callback` is the URL (or just its query) the server redirected to.
    /// Answers a session with the tokens, or [`Error::Denied`] when the user said no.
    pub async fn handle_callback(&self, callback: &str) -> Result<Session> {
        let query = callback.split_once('?').map_or(callback, |(_, q)| q);
        let state =
            url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "state").map(|(_, v)| v.into_owned());
        let request = state
            .and_then(|s| self.pending.lock().unwrap().take(&s, Instant::now()))
            .ok_or_else(|| Error::Protocol("the callback answers no connection this app started".into()))?;
        let code = request.finish(&format!("{}?{query}", request.config.redirect_uri))?;
        let mut client = Client::new(self.config.clone());
        if let Some(secret) = &self.client_secret {
            client = client.with_client_secret(secret.clone());
        }
        let tokens = client.exchange_code(&request, &code).await?;
        Ok(Session::new(client, tokens))
    }
}

/// A user made for an app's tests, who has already allowed it (see [`App::create_test_user`]).
pub struct TestUser {
    pub username: String,
    pub password: String,
    pub session: Session,
}

impl std::fmt::Debug for TestUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestUser").field("username", &self.username).finish_non_exhaustive()
    }
}

impl App {
    /// A new user who has allowed this app `permissions`, and their session: for an app's own
    /// tests, against a development server (`selfcloud up --dev-test-users`; the operator token
    /// is `<home>/operator.token`). Any other server answers 404.
    pub async fn create_test_user(&self, operator_token: &str, permissions: &[&str]) -> Result<TestUser> {
        let url = self.config.resolve("/v1/admin/test-users")?;
        let body = json!({"client_id": self.config.client_id, "scopes": permissions});
        let http = reqwest::Client::new();
        let response = http.post(url).bearer_auth(operator_token).json(&body).send().await?;
        let made: Value = crate::client::read_json(crate::client::check(response).await?).await?;
        let text = |k: &str| made[k].as_str().unwrap_or_default().to_owned();
        let tokens = TokenSet {
            access_token: text("access_token"),
            refresh_token: Some(text("refresh_token")),
            expires_in: made["expires_in"].as_u64().unwrap_or_default(),
            scope: text("scope"),
        };
        let mut client = Client::with_tokens(self.config.clone(), tokens.clone());
        if let Some(secret) = &self.client_secret {
            client = client.with_client_secret(secret.clone());
        }
        Ok(TestUser { username: text("username"), password: text("password"), session: Session::new(client, tokens) })
    }
}

/// One user's connection to the app: their tokens, refreshed as they expire.
#[derive(Debug)]
pub struct Session {
    client: Client,
    granted: Vec<String>,
}

impl Session {
    /// A session from tokens the app kept (a refresh token in its database).
    pub fn new(client: Client, tokens: TokenSet) -> Session {
        let granted = tokens.scope.split(' ').filter(|s| !s.is_empty()).map(str::to_owned).collect();
        Session { client, granted }
    }

    /// The protocol client under the session, for the full storage, LLM and grant APIs.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// What the user allowed, as the server wrote it.
    pub fn permissions(&self) -> &[String] {
        &self.granted
    }

    /// Whether the user allowed `permission` (SELF's words or ours). A collection scope is held
    /// when a granted pattern covers it.
    pub fn has_permission(&self, permission: &str) -> bool {
        let wanted = canonical(permission, &self.client.config().client_id);
        self.granted.iter().any(|held| covers(held, &wanted))
    }

    /// A URL asking for `more` permissions: the consent page shows only what the app lacks, and
    /// the user's grant gains what they allow (the callback gives a new session).
    pub fn request_permissions(&self, app: &App, more: &[&str]) -> String {
        let mut all: Vec<&str> = self.granted.iter().map(String::as_str).collect();
        all.extend(more.iter().copied().filter(|p| !self.has_permission(p)));
        app.create_connection_url(&all)
    }

    pub fn ai(&self) -> Ai<'_> {
        Ai { client: &self.client }
    }

    /// The app's own records in the user's store (its namespace collection), as SELF's
    /// key-value storage.
    pub fn storage(&self) -> AppStorage<'_> {
        let collection = app_namespace(&self.client.config().client_id).unwrap_or_default();
        AppStorage { client: &self.client, collection }
    }
}

/// SELF's words in ours: `ai:chat` is `llm:chat`, `blockchain:read` is `chain:read`, bare
/// storage scopes are the app's namespace.
fn canonical(permission: &str, client_id: &str) -> String {
    let ns = app_namespace(client_id).unwrap_or_default();
    match permission {
        "ai:chat" => "llm:chat".into(),
        "blockchain:read" => "chain:read".into(),
        "storage:read" => format!("storage:read:{ns}*"),
        "storage:write" => format!("storage:write:{ns}*"),
        other => other.into(),
    }
}

/// Whether a held scope reaches all a wanted one does, by the server's rule: a storage prefix
/// reaches what starts with it, but an app's namespace (`app-...`) only if the prefix is in one.
fn covers(held: &str, wanted: &str) -> bool {
    fn storage(scope: &str) -> Option<(&str, &str)> {
        scope.strip_prefix("storage:")?.split_once(':')
    }
    match (storage(held), storage(wanted)) {
        (Some((held_kind, held_pattern)), Some((wanted_kind, wanted_pattern))) if held_kind == wanted_kind => {
            match held_pattern.strip_suffix('*') {
                Some(prefix) => {
                    let name = wanted_pattern.trim_end_matches('*');
                    name.starts_with(prefix) && (prefix.starts_with("app-") || !name.starts_with("app-"))
                }
                None => held_pattern == wanted_pattern,
            }
        }
        _ => held == wanted,
    }
}

/// The user's private assistant, OpenAI-shaped underneath.
pub struct Ai<'a> {
    client: &'a Client,
}

impl Ai<'_> {
    /// One answer to `message`.
    pub async fn chat(&self, message: &str) -> Result<String> {
        let body = json!({"messages": [{"role": "user", "content": message}]});
        let answer = self.client.send_json(reqwest::Method::POST, "/v1/llm/chat/completions", Some(&body)).await?;
        Ok(answer["choices"][0]["message"]["content"].as_str().unwrap_or_default().to_owned())
    }

    /// The whole OpenAI-shaped chat completions call: `body` as OpenAI's API takes it (tools and
    /// `tool_choice`, `response_format` with a JSON schema, streaming off), the answer as it gives.
    pub async fn completions(&self, body: &Value) -> Result<Value> {
        self.client.send_json(reqwest::Method::POST, "/v1/llm/chat/completions", Some(body)).await
    }

    /// The answer to `message` as it is written: each item is more text.
    pub async fn chat_stream(
        &self,
        message: &str,
    ) -> Result<impl futures_util::Stream<Item = Result<String>> + Unpin + Send> {
        let body = json!({"messages": [{"role": "user", "content": message}], "stream": true});
        let url = self.client.config().resolve("/v1/llm/chat/completions")?;
        let response = self.client.send_authed(|http| http.post(url.clone()).json(&body)).await?;
        let response = crate::client::check(response).await?;
        // SSE framing (line ends, `data:` with or without its space, UTF-8 split across chunks)
        // is eventsource-stream's; each event is one OpenAI chunk or an error.
        let events = response.bytes_stream().eventsource();
        // Pinned here, so a caller can `while let Some(t) = stream.next().await` as is.
        Ok(Box::pin(events.filter_map(|event| async move {
            let data = match event {
                Ok(event) if event.data == "[DONE]" => return None,
                Ok(event) => event.data,
                Err(e) => return Some(Err(Error::Protocol(format!("the stream broke off: {e}")))),
            };
            let event: Value = match serde_json::from_str(&data) {
                Ok(v) => v,
                Err(e) => return Some(Err(Error::Protocol(format!("event: {e}")))),
            };
            if let Some(e) = event.get("error") {
                return Some(Err(Error::from_answer(500, None, &json!({"error": e}).to_string())));
            }
            let text = event["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty())?;
            Some(Ok(text.to_owned()))
        })))
    }
}

/// The app's key-value records in the user's instance.
pub struct AppStorage<'a> {
    client: &'a Client,
    collection: String,
}

impl AppStorage<'_> {
    /// Stores `value` under `key`; answers its revision.
    pub async fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<String> {
        self.client.storage().put(&self.collection, key, value).await
    }

    pub async fn get(&self, key: &str) -> Result<Option<Value>> {
        Ok(self.client.storage().get(&self.collection, key).await?.map(|r| r.value))
    }

    /// Up to `limit` records whose key starts with `prefix`, in key order.
    pub async fn list(&self, prefix: Option<&str>, limit: Option<usize>) -> Result<Vec<(String, Value)>> {
        let page = self.client.storage().list(&self.collection, prefix, limit, None).await?;
        Ok(page.records.into_iter().map(|r| (r.key, r.value)).collect())
    }

    pub async fn delete(&self, key: &str) -> Result<()> {
        self.client.storage().delete(&self.collection, key).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn started_connections_are_bounded_in_time_and_number() {
        let config = AppConfig {
            base_url: "http://127.0.0.1:8420".parse().unwrap(),
            client_id: "app_0123456789abcdef0123456789abcdef".into(),
            redirect_uri: "http://127.0.0.1:9/cb".into(),
        };
        let t0 = Instant::now();
        let mut pending = Pending::default();
        let first = AuthorizationRequest::new(&config, &["storage:read"]);
        let first_state = first.state().to_owned();
        pending.insert(first, t0);
        for i in 1..=PENDING_MAX {
            pending.insert(AuthorizationRequest::new(&config, &["storage:read"]), t0 + Duration::from_millis(i as u64));
        }
        assert_eq!(pending.0.len(), PENDING_MAX);
        assert!(pending.take(&first_state, t0).is_none(), "the oldest made room");
        let late = AuthorizationRequest::new(&config, &["storage:read"]);
        let late_state = late.state().to_owned();
        let hour_on = t0 + PENDING_FOR + Duration::from_secs(10);
        pending.insert(late, hour_on);
        assert_eq!(pending.0.len(), 1, "an hour on, only the new one waits");
        assert!(pending.take(&late_state, hour_on + PENDING_FOR).is_none(), "expired");
    }

    #[test]
    fn permissions_read_in_self_words_and_ours() {
        let id = "app_0123456789abcdef0123456789abcdef";
        assert_eq!(app_namespace(id).unwrap(), "app-0123456789abcdef");
        let held = ["storage:read:app-0123456789abcdef*", "llm:chat", "storage:write:notes"];
        let has = |p: &str| held.iter().any(|h| covers(h, &canonical(p, id)));
        assert!(has("ai:chat") && has("llm:chat") && has("storage:read") && has("storage:write:notes"));
        assert!(has("storage:read:app-0123456789abcdef-x"));
        assert!(!has("storage:write") && !has("storage:read:notes") && !has("blockchain:read") && !has("llm:embed"));
        // As on the server: a prefix outside the app namespaces never reaches into one.
        for wide in ["storage:read:*", "storage:read:ap*", "storage:read:app*"] {
            assert!(!covers(wide, &canonical("storage:read", id)), "{wide}");
            assert!(covers(wide, "storage:read:apples"), "{wide}");
        }
        assert!(covers("storage:read:app-*", &canonical("storage:read", id)));
        assert!(
            !covers("storage:write:*", "storage:read:notes") && !covers("storage:read:notes", "storage:read:notes*")
        );
    }
}
