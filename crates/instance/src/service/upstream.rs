//! An upstream OpenAI-compatible provider the owner names for their assistant (OpenAI, a vLLM
//! or Ollama of their own, llama.cpp's `llama-server`): its URL, its model and the owner's API
//! key, kept in the instance's encrypted store and never shown again. A chat that names the
//! provider's model goes to it, with the key, over the egress channel control's broker hands in
//! (`protocol::egress`): control sends it on only to an origin its operator allow-listed. The
//! instance still pays the call from the caller's budget, with the tokens the provider reports.

use super::llm::{payment, Payment};
use super::{Ctx, Shared, S};
use crate::api::{json_body, ApiBytes, ApiResult};
use crate::part::{Access, Answer, Part, Route};
use crate::protocol::egress::Origin;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use selfcloud_core::{Collection, Error, ErrorCode, RecordKey, Result};
use selfcloud_store::Precondition;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

pub static PART: Part = Part {
    name: "upstream",
    about: "An upstream OpenAI-compatible provider for the assistant, with the owner's own key, reached through control's egress channel.",
    routes: &[
        Route::new(Method::GET, "/v1/llm/upstream", Access::Owner, "The upstream provider chats may name by its model (its key is never shown; owner only).", || get(show))
            .errors(&[403, 404]),
        Route::new(
            Method::PUT,
            "/v1/llm/upstream",
            Access::Owner,
            "Names the upstream provider: `{base_url, model, api_key}`. A chat whose `model` is this one goes to `base_url`/chat/completions with the key, if the server's operator allow-lists its origin (owner only).",
            || put(set),
        )
        .body(crate::part::Body::Json)
        .errors(&[400, 403]),
        Route::new(Method::DELETE, "/v1/llm/upstream", Access::Owner, "Forgets the upstream provider and its key (owner only).", || delete(clear))
            .answer(Answer::Empty)
            .errors(&[403]),
    ],
    collections: &[],
    sealed: &[COLLECTION],
    channels: &[crate::protocol::broker::Channel::Egress],
};

/// Where the provider is kept (one record), sealed with the rest of the store.
pub(crate) const COLLECTION: &str = "llm-upstream";
const KEY: &str = "provider";
/// The longest key and model name a provider may have.
const MAX_KEY_BYTES: usize = 4096;
const MAX_MODEL_CHARS: usize = 200;
/// The most of a provider's error answer read for its message.
const ERROR_BYTES: usize = 16 * 1024;

/// An upstream provider, as the owner names it.
#[derive(Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Provider {
    /// The provider's OpenAI base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// The model chats name to reach it, sent to it as it is.
    pub model: String,
    /// The owner's key, sent as `Authorization: Bearer`; empty for a provider that takes none.
    #[serde(default)]
    pub api_key: String,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Provider({} {:?}, key withheld)", self.base_url, self.model)
    }
}

impl Provider {
    /// The provider as it may be kept: an `http(s)` base URL with no user name, query or
    /// trailing slash; a model name of printable characters; a key that fits a header.
    pub fn checked(mut self) -> Result<Provider> {
        self.base_url = self.base_url.trim().trim_end_matches('/').to_owned();
        let uri: http::Uri =
            self.base_url.parse().map_err(|e| Error::invalid(format!("base_url is not a URL: {e}")))?;
        Origin::of(&uri).map_err(|e| Error::invalid(format!("base_url: {e}")))?;
        if uri.query().is_some() {
            return Err(Error::invalid("base_url: no query; name the API's base, e.g. https://host/v1"));
        }
        let model_ok =
            |m: &str| !m.is_empty() && m.chars().count() <= MAX_MODEL_CHARS && !m.chars().any(char::is_control);
        if !model_ok(&self.model) {
            return Err(Error::invalid(format!("model: 1 to {MAX_MODEL_CHARS} printable characters")));
        }
        if self.api_key.len() > MAX_KEY_BYTES || !self.api_key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(Error::invalid(format!("api_key: at most {MAX_KEY_BYTES} visible ASCII characters")));
        }
        Ok(self)
    }

    pub fn chat_url(&self) -> String {
        format!("{}/chat/completions", self.base_url)
    }

    /// What the owner is shown: never the key.
    fn shown(&self) -> Value {
        json!({"base_url": self.base_url, "model": self.model, "api_key_set": !self.api_key.is_empty()})
    }
}

fn collection() -> Collection {
    Collection::internal(COLLECTION)
}

fn key() -> RecordKey {
    RecordKey::parse(KEY).expect("a valid key")
}

/// The provider the owner named, if any.
pub(crate) async fn provider(s: &Shared) -> Result<Option<Provider>> {
    let Some(record) = s.local.get_record(&collection(), &key()).await? else { return Ok(None) };
    serde_json::from_slice(&record.value).map(Some).map_err(Error::internal)
}

async fn show(s: S) -> ApiResult<Response> {
    let provider = provider(&s).await?.ok_or_else(|| Error::not_found("no upstream provider is named"))?;
    Ok(Json(provider.shown()).into_response())
}

async fn set(s: S, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    let provider = json_body::<Provider>(&headers, &body)?.checked()?;
    let value = serde_json::to_vec(&provider).map_err(Error::internal)?;
    s.local.put_record(&collection(), &key(), value, Precondition::None).await?;
    Ok(Json(provider.shown()).into_response())
}

async fn clear(s: S) -> ApiResult<Response> {
    match s.local.delete_record(&collection(), &key(), Precondition::None).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) if e.code == ErrorCode::NotFound => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

/// The provider a chat's body names by its `model`, if any.
pub(crate) async fn chosen(s: &Shared, headers: &HeaderMap, body: &[u8]) -> Result<Option<Provider>> {
    #[derive(Deserialize)]
    struct Named {
        model: Option<String>,
    }
    let Some(provider) = provider(s).await? else { return Ok(None) };
    let named: Named = json_body(headers, body)?;
    Ok((named.model.as_deref() == Some(provider.model.as_str())).then_some(provider))
}

/// A chat sent to `provider` as the caller wrote it, its answer (JSON or events) passed back as
/// the provider gave it. The caller pays what the provider says the call used.
pub(crate) async fn chat(s: &Arc<Shared>, ctx: &Ctx, provider: Provider, body: Bytes) -> ApiResult<Response> {
    let Some(egress) = &s.egress else {
        return Err(Error::unavailable(
            "this instance has no way out to an upstream provider",
            Duration::from_secs(60),
        )
        .into());
    };
    let Payment { meter, settled, .. } = payment(s, ctx).await?;
    let mut request = http::Request::post(provider.chat_url())
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::ACCEPT, "application/json, text/event-stream");
    if !provider.api_key.is_empty() {
        request = request.header(header::AUTHORIZATION, format!("Bearer {}", provider.api_key));
    }
    let request = request.body(Full::new(body)).map_err(|e| Error::invalid(format!("the upstream request: {e}")))?;
    let answer = egress.send(request).await?;
    let (head, incoming) = answer.into_parts();
    if !head.status.is_success() {
        let bytes = Limited::new(incoming, ERROR_BYTES).collect().await.map(|b| b.to_bytes()).unwrap_or_default();
        drop(meter);
        settled.wait().await?;
        return Err(failed(head.status, &head.headers, &bytes).into());
    }
    let content_type =
        head.headers.get(header::CONTENT_TYPE).cloned().unwrap_or_else(|| HeaderValue::from_static("application/json"));
    let events = content_type.to_str().unwrap_or("").starts_with("text/event-stream");
    // The answer passes as it comes; what it says it used is billed when it ends.
    let mut scan = UsageScan::default();
    let mut meter = Some(meter);
    let mut settled = Some(settled);
    let stream = incoming.into_data_stream().map(Some).chain(futures_util::stream::once(async { None }));
    let body = stream.then(move |chunk| {
        let done = match &chunk {
            Some(Ok(data)) => {
                scan.feed(data, events);
                None
            }
            // The end, or a break: bill what was reported, then let the answer end.
            _ => Some((meter.take(), settled.take(), scan.tokens)),
        };
        async move {
            if let Some((meter, settled, tokens)) = done {
                if let Some(meter) = meter {
                    meter.add(tokens);
                }
                if let Some(settled) = settled {
                    settled.wait().await.map_err(|e| std::io::Error::other(e.message))?;
                }
            }
            match chunk {
                Some(Ok(data)) => Ok(data),
                Some(Err(e)) => Err(std::io::Error::other(format!("the upstream answer broke: {e}"))),
                None => Ok(Bytes::new()),
            }
        }
    });
    Ok(([(header::CONTENT_TYPE, content_type)], Body::from_stream(body)).into_response())
}

/// The caller's error for a provider's failure: its rate limit stays a rate limit (with its
/// `Retry-After`); anything else is 502 `upstream_failed`, with what it said, cut short.
fn failed(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Error {
    let said = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().or(v["error"].as_str()).map(str::to_owned))
        .unwrap_or_default();
    let said: String = said.chars().filter(|c| !c.is_control()).take(300).collect();
    // Control's own refusal (an origin not allow-listed) is marked, and crosses as the
    // contract's error; a provider cannot send the mark (control drops it from its answers).
    if headers.contains_key(crate::protocol::egress::REFUSED_HEADER) {
        if let Some(e) = Error::from_body(body, None).filter(|e| e.code == ErrorCode::Forbidden) {
            return e;
        }
    }
    if status == StatusCode::TOO_MANY_REQUESTS {
        let wait = headers.get(header::RETRY_AFTER).and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(10);
        return Error::rate_limited(Duration::from_secs(wait.clamp(1, 3600)));
    }
    Error::new(ErrorCode::UpstreamFailed, format!("the upstream provider answered {}: {said}", status.as_u16()))
}

/// The tokens a provider's answer says it used: `usage.total_tokens` of its JSON, or of the
/// last event that carries one. Lines are looked at as they complete, at most [`LINE_BYTES`]
/// of each.
#[derive(Default)]
struct UsageScan {
    line: Vec<u8>,
    whole: Vec<u8>,
    tokens: u64,
}

const LINE_BYTES: usize = 64 * 1024;

impl UsageScan {
    fn feed(&mut self, data: &[u8], events: bool) {
        if !events {
            if self.whole.len() + data.len() <= LINE_BYTES * 16 {
                self.whole.extend_from_slice(data);
                if let Some(t) = total_tokens(&self.whole) {
                    self.tokens = t;
                }
            }
            return;
        }
        for &b in data {
            if b == b'\n' {
                if let Some(t) = self.line.strip_prefix(b"data:").and_then(|rest| total_tokens(rest.trim_ascii())) {
                    self.tokens = t;
                }
                self.line.clear();
            } else if self.line.len() < LINE_BYTES {
                self.line.push(b);
            }
        }
    }
}

fn total_tokens(json: &[u8]) -> Option<u64> {
    serde_json::from_slice::<Value>(json).ok()?["usage"]["total_tokens"].as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn named(base_url: &str, model: &str, key: &str) -> Result<Provider> {
        Provider { base_url: base_url.into(), model: model.into(), api_key: key.into() }.checked()
    }

    #[test]
    fn a_provider_is_kept_only_in_a_shape_that_cannot_smuggle_anything() {
        let p = named(" https://api.example.com/v1/ ", "gpt-x", "sk-abc").unwrap();
        assert_eq!(p.chat_url(), "https://api.example.com/v1/chat/completions");
        assert_eq!(p.shown(), json!({"base_url": "https://api.example.com/v1", "model": "gpt-x", "api_key_set": true}));
        assert!(!format!("{p:?}").contains("sk-abc"));
        assert!(named("http://127.0.0.1:8080/v1", "m", "").is_ok());
        for (url, model, key) in [
            ("ftp://host/v1", "m", ""),
            ("https://user:pw@host/v1", "m", ""),
            ("https://host/v1?x=1", "m", ""),
            ("/v1", "m", ""),
            ("https://host/v1", "", ""),
            ("https://host/v1", "a\nb", ""),
            ("https://host/v1", "m", "sk abc"),
            ("https://host/v1", "m", "sk\r\nX-Other: 1"),
        ] {
            assert!(named(url, model, key).is_err(), "{url} {model:?} {key:?}");
        }
    }

    #[test]
    fn usage_is_read_from_a_json_answer_or_the_events_that_carry_it() {
        let mut scan = UsageScan::default();
        scan.feed(br#"{"choices":[],"usage":{"prompt_tokens":3,"#, false);
        scan.feed(br#""completion_tokens":4,"total_tokens":7}}"#, false);
        assert_eq!(scan.tokens, 7);
        let mut scan = UsageScan::default();
        for part in ["data: {\"choices\":[]}\n\nda", "ta: {\"usage\":{\"total_tokens\":12}}\n\n", "data: [DONE]\n\n"] {
            scan.feed(part.as_bytes(), true);
        }
        assert_eq!(scan.tokens, 12);
    }

    #[test]
    fn a_providers_failure_is_a_bad_gateway_but_its_rate_limit_stays_one() {
        let mut headers = HeaderMap::new();
        let e = failed(StatusCode::UNAUTHORIZED, &headers, br#"{"error":{"message":"bad key"}}"#);
        assert_eq!((e.code, e.status().as_u16()), (ErrorCode::UpstreamFailed, 502));
        assert!(e.message.contains("401") && e.message.contains("bad key"));
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let e = failed(StatusCode::TOO_MANY_REQUESTS, &headers, b"");
        assert_eq!((e.code, e.retry_after), (ErrorCode::RateLimited, Some(Duration::from_secs(7))));
        let refused = Error::forbidden("http://x:80 is not on this server's egress allow-list").body().to_string();
        let mut marked = HeaderMap::new();
        marked.insert(crate::protocol::egress::REFUSED_HEADER, HeaderValue::from_static("1"));
        assert_eq!(failed(StatusCode::FORBIDDEN, &marked, refused.as_bytes()).code, ErrorCode::Forbidden);
        // A provider's own 403, even in the contract's shape, is its failure, not a refusal of ours.
        assert_eq!(
            failed(StatusCode::FORBIDDEN, &HeaderMap::new(), refused.as_bytes()).code,
            ErrorCode::UpstreamFailed
        );
    }
}
