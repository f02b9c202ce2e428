//! OpenAI's chat-completions shape: the request read and checked once into a [`Generation`] an
//! engine runs, and the answers written back (a whole completion, or stream chunks).
//!
//! What we cannot honour is refused with a clear 400 naming the field, never silently ignored:
//! an app that asks for `n: 3` or audio must not get one plain answer and think it got more.

use crate::constraint::{Constraint, MAX_SCHEMA_BYTES};
use crate::messages::conversation;
pub use crate::messages::{Message, RequestMessage};
use crate::tools::{Offer, ToolCall};
use selfcloud_core::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// The most messages and bytes of message text one request may carry; keeps a prompt bounded
/// before it is tokenized (the context length bounds it again, in tokens).
pub const MAX_MESSAGES: usize = 256;
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;

/// `stop`: one string or a list of them.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize, Debug, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `POST /v1/llm/chat/completions`, as OpenAI's clients send it. Fields we refuse are read too,
/// so that naming one is an error rather than a silent no-op.
#[derive(Deserialize, Debug, Default)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<RequestMessage>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i32>,
    pub min_p: Option<f32>,
    pub seed: Option<u32>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    pub repeat_penalty: Option<f32>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub response_format: Option<Value>,
    pub n: Option<u32>,
    pub tools: Option<Value>,
    pub tool_choice: Option<Value>,
    pub parallel_tool_calls: Option<bool>,
    pub functions: Option<Value>,
    pub logprobs: Option<bool>,
    pub audio: Option<Value>,
}

/// How tokens are drawn.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sampling {
    /// 0 means greedy: always the most likely token.
    pub temperature: f32,
    pub top_p: f32,
    pub top_k: i32,
    pub min_p: f32,
    pub seed: u32,
    pub repeat_penalty: f32,
}

/// What an engine runs: the checked request, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub max_tokens: u32,
    /// What the answer is held to: a JSON object or schema (`response_format`), or tool calls
    /// (a `tool_choice` that demands one).
    pub constraint: Option<Constraint>,
    /// The functions the answer may call, read from its text ([`crate::tools::CallScan`]);
    /// empty when the request offers none (or `tool_choice` is `none`).
    pub tools: Vec<String>,
    pub stream: bool,
    pub include_usage: bool,
    /// Whose request this is (the owner, or one grant): a slot reuses the KV cache of an earlier
    /// prompt only for the same caller, so neither what another caller asked nor how fast a
    /// guess of it is answered crosses between apps, or from the owner to an app.
    pub caller: String,
    /// Whose instance the request comes from: an engine that serves many instances (shared
    /// mode) shares its places fairly between them.
    pub tenant: String,
    /// What the caller's token budget leaves for this generation; `None` when it has none.
    pub allowance: Option<crate::budget::Allowance>,
    /// Counts the tokens this generation spends, for the caller's bill.
    pub meter: crate::budget::Meter,
}

/// Limits a request is checked against: settings of the instance, with safe defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RequestLimits {
    pub max_tokens: u32,
    pub default_max_tokens: u32,
    /// Texts one embeddings request may carry.
    pub max_embedding_inputs: usize,
    /// Records the owner's assistant reads for one question (a bigger store is read in part).
    pub assistant_max_records: usize,
    /// Memories the assistant keeps; past it a new one is refused.
    pub assistant_max_memories: usize,
    /// New or changed records one pass of the assistant's index embeds (a question waits for
    /// them; the rest are found by their words until a later pass).
    pub assistant_embeds_per_pass: usize,
}

impl Default for RequestLimits {
    fn default() -> Self {
        RequestLimits {
            max_tokens: 4096,
            default_max_tokens: 512,
            max_embedding_inputs: 64,
            assistant_max_records: 10_000,
            assistant_max_memories: 1000,
            assistant_embeds_per_pass: 512,
        }
    }
}

const MAX_STOPS: usize = 4;
/// The seed that asks llama.cpp for a fresh random one (its `LLAMA_DEFAULT_SEED`): without a
/// `seed`, two samples of the same prompt differ, as OpenAI's do.
pub const RANDOM_SEED: u32 = u32::MAX;
const ROLES: [&str; 5] = ["system", "developer", "user", "assistant", "tool"];

impl ChatRequest {
    pub fn validate(self, limits: RequestLimits) -> Result<Generation, Error> {
        let unsupported = |field: &str| Err(Error::invalid(format!("`{field}` is not supported here")));
        if self.n.is_some_and(|n| n != 1) {
            return unsupported("n");
        }
        if self.functions.is_some() {
            return Err(Error::invalid("`functions` is not supported here; offer them as `tools`"));
        }
        if self.logprobs == Some(true) {
            return unsupported("logprobs");
        }
        if self.audio.is_some() {
            return unsupported("audio");
        }
        if self.messages.is_empty() || self.messages.len() > MAX_MESSAGES {
            return Err(Error::invalid(format!("`messages` must hold 1 to {MAX_MESSAGES} messages")));
        }
        if let Some(m) = self.messages.iter().find(|m| !ROLES.contains(&m.role.as_str())) {
            return Err(Error::invalid(format!("unsupported message role {:?}", truncate(&m.role))));
        }
        let offer = Offer::read(self.tools, self.tool_choice, self.parallel_tool_calls)?;
        let messages = conversation(self.messages, offer.as_ref())?;
        if messages.iter().any(|m| m.content.contains('\0')) {
            return Err(Error::invalid("a message holds a NUL character"));
        }
        if messages.iter().map(|m| m.content.len()).sum::<usize>() > MAX_PROMPT_BYTES {
            return Err(Error::invalid(format!("the messages exceed {MAX_PROMPT_BYTES} bytes")));
        }
        let constraint = match (response_constraint(self.response_format)?, offer.as_ref().and_then(Offer::constraint))
        {
            (Some(_), Some(_)) => {
                return Err(Error::invalid(
                    "`response_format` and a `tool_choice` that demands a call cannot both hold",
                ))
            }
            (format, calls) => format.or(calls),
        };
        let stop = match self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s],
            Some(Stop::Many(v)) => v,
        };
        if stop.len() > MAX_STOPS || stop.iter().any(|s| s.is_empty() || s.len() > 64) {
            return Err(Error::invalid(format!("`stop` takes up to {MAX_STOPS} non-empty strings of up to 64 bytes")));
        }
        let max_tokens = self.max_completion_tokens.or(self.max_tokens).unwrap_or(limits.default_max_tokens);
        if max_tokens == 0 || max_tokens > limits.max_tokens {
            return Err(Error::invalid(format!("`max_tokens` must be 1 to {}", limits.max_tokens)));
        }
        let in_range = |name: &str, v: f32, lo: f32, hi: f32| {
            if (lo..=hi).contains(&v) {
                Ok(v)
            } else {
                Err(Error::invalid(format!("`{name}` must be between {lo} and {hi}")))
            }
        };
        let sampling = Sampling {
            temperature: in_range("temperature", self.temperature.unwrap_or(1.0), 0.0, 2.0)?,
            top_p: in_range("top_p", self.top_p.unwrap_or(1.0), 0.0, 1.0)?,
            top_k: match self.top_k.unwrap_or(0) {
                k if k >= 0 => k,
                _ => return Err(Error::invalid("`top_k` must not be negative")),
            },
            min_p: in_range("min_p", self.min_p.unwrap_or(0.0), 0.0, 1.0)?,
            seed: self.seed.unwrap_or(RANDOM_SEED),
            repeat_penalty: in_range("repeat_penalty", self.repeat_penalty.unwrap_or(1.0), 0.5, 2.0)?,
        };
        Ok(Generation {
            messages,
            sampling,
            stop,
            max_tokens,
            constraint,
            tools: offer.map(|o| o.callable()).unwrap_or_default(),
            stream: self.stream,
            include_usage: self.stream_options.is_some_and(|o| o.include_usage),
            caller: String::new(),
            tenant: String::new(),
            allowance: None,
            meter: Default::default(),
        })
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(40).collect()
}

/// `response_format` as a constraint: none for text, one JSON object, or a named JSON schema.
fn response_constraint(format: Option<Value>) -> Result<Option<Constraint>, Error> {
    let Some(format) = format.filter(|f| !f.is_null()) else { return Ok(None) };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(Constraint::JsonObject)),
        Some("json_schema") => {
            let spec = &format["json_schema"];
            let named = spec["name"].as_str().is_some_and(|n| {
                (1..=64).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            });
            if !named {
                return Err(Error::invalid(
                    "`response_format.json_schema.name` must be 1 to 64 of a-z, A-Z, 0-9, _ and -",
                ));
            }
            let schema = match spec.get("schema") {
                None => json!({}),
                Some(s @ (Value::Object(_) | Value::Bool(true))) => s.clone(),
                Some(_) => {
                    return Err(Error::invalid("`response_format.json_schema.schema` must be a JSON schema object"))
                }
            };
            if schema.to_string().len() > MAX_SCHEMA_BYTES {
                return Err(Error::invalid(format!("the schema exceeds {MAX_SCHEMA_BYTES} bytes")));
            }
            Ok(Some(Constraint::JsonSchema(schema)))
        }
        other => Err(Error::invalid(format!("unsupported response_format {:?}", truncate(other.unwrap_or("?"))))),
    }
}

/// Why a generation ended, in OpenAI's words.
#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    Stop,
    Length,
    /// The answer is tool calls (set where the answer is read, not by an engine).
    ToolCalls,
}

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
}

impl Usage {
    pub fn new(prompt_tokens: u64, completion_tokens: u64) -> Self {
        Usage { prompt_tokens, completion_tokens, total_tokens: prompt_tokens + completion_tokens }
    }
}

/// What every answer names: its id, when it was made (seconds) and the model that made it.
#[derive(Debug, Clone)]
pub struct Header {
    pub id: String,
    pub created_s: u64,
    pub model: String,
}

/// A whole `chat.completion`; with tool calls its content is null when the model said nothing
/// else, as OpenAI answers.
pub fn completion(h: &Header, text: &str, calls: &[ToolCall], finish: FinishReason, usage: Usage) -> Value {
    let mut message = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        if text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = calls.iter().map(ToolCall::to_openai).collect();
    }
    json!({
        "id": h.id, "object": "chat.completion", "created": h.created_s, "model": h.model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": usage,
    })
}

/// One `chat.completion.chunk`: the first carries the role, the middle ones text, the last the
/// finish reason. `usage` is `null` on each, as OpenAI sends it when usage was asked for.
pub fn chunk(h: &Header, delta: Value, finish: Option<FinishReason>, include_usage: bool) -> Value {
    let mut c = json!({
        "id": h.id, "object": "chat.completion.chunk", "created": h.created_s, "model": h.model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    if include_usage {
        c["usage"] = Value::Null;
    }
    c
}

/// The chunk after the last when `stream_options.include_usage` is set: no choices, the usage.
pub fn usage_chunk(h: &Header, usage: Usage) -> Value {
    json!({
        "id": h.id, "object": "chat.completion.chunk", "created": h.created_s, "model": h.model,
        "choices": [], "usage": usage,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use selfcloud_core::ErrorCode;

    /// A request body, read and checked under the default limits.
    pub(crate) fn parse(body: Value) -> Result<Generation, Error> {
        serde_json::from_value::<ChatRequest>(body).unwrap().validate(RequestLimits::default())
    }

    #[test]
    fn a_plain_request_gets_every_default() {
        let g = parse(json!({"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})).unwrap();
        assert_eq!(g.max_tokens, 512);
        assert_eq!(g.sampling.temperature, 1.0);
        assert!(!g.stream && g.constraint.is_none() && g.tools.is_empty() && !g.include_usage && g.stop.is_empty());
    }

    #[test]
    fn content_is_a_string_or_text_parts() {
        let parts = json!([{"type": "text", "text": "What is "}, {"type": "text", "text": "Paris?"}]);
        let g = parse(json!({"messages": [{"role": "user", "content": parts}]})).unwrap();
        assert_eq!(g.messages[0].content, "What is Paris?");
        let image = json!([{"type": "image_url", "image_url": {"url": "data:,"}}]);
        let err = serde_json::from_value::<ChatRequest>(json!({"messages": [{"role": "user", "content": image}]}));
        assert!(err.unwrap_err().to_string().contains("`image_url` content part is not supported"));
    }

    #[test]
    fn sampling_stop_and_streaming_are_read() {
        let g = parse(json!({
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
            "temperature": 0, "top_p": 0.9, "top_k": 40, "min_p": 0.05, "seed": 7, "stop": "\n",
            "max_completion_tokens": 20, "max_tokens": 99, "stream": true,
            "stream_options": {"include_usage": true}, "response_format": {"type": "json_object"}, "n": 1
        }))
        .unwrap();
        assert_eq!(
            g.sampling,
            Sampling { temperature: 0.0, top_p: 0.9, top_k: 40, min_p: 0.05, seed: 7, repeat_penalty: 1.0 }
        );
        assert_eq!(
            (g.stop, g.max_tokens, g.stream, g.include_usage, g.constraint),
            (vec!["\n".to_owned()], 20, true, true, Some(Constraint::JsonObject))
        );
        let g = parse(json!({"messages": [{"role": "user", "content": "x"}], "stop": ["a", "b"]})).unwrap();
        assert_eq!(g.stop, ["a", "b"]);
    }

    #[test]
    fn what_cannot_be_honoured_is_a_400_naming_it() {
        let user = json!([{"role": "user", "content": "x"}]);
        for (extra, names) in [
            (json!({"n": 2}), "`n`"),
            (json!({"tools": {}}), "`tools`"),
            (json!({"tool_choice": "required"}), "`tool_choice`"),
            (json!({"functions": []}), "`functions`"),
            (json!({"logprobs": true}), "`logprobs`"),
            (json!({"response_format": {"type": "json_schema"}}), "json_schema.name"),
            (json!({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": 3}}}), "schema"),
            (json!({"response_format": {"type": "xml"}}), "response_format"),
            (json!({"max_tokens": 0}), "`max_tokens`"),
            (json!({"max_tokens": 100_000}), "`max_tokens`"),
            (json!({"temperature": 3}), "`temperature`"),
            (json!({"top_k": -1}), "`top_k`"),
            (json!({"stop": ["a", "b", "c", "d", "e"]}), "`stop`"),
            (json!({"stop": ""}), "`stop`"),
            (json!({"messages": [{"role": "user", "content": "a\u{0}b"}]}), "NUL"),
        ] {
            let mut body = json!({"messages": user});
            body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{body}");
            assert!(e.message.contains(names), "{body}: {}", e.message);
        }
        assert!(parse(json!({"messages": []})).is_err());
        assert!(parse(json!({"messages": [{"role": "function", "content": "x"}]}))
            .unwrap_err()
            .message
            .contains("role"));
        assert!(parse(json!({"messages": [{"role": "user", "content": null}]}))
            .unwrap_err()
            .message
            .contains("content"));
        let huge = "x".repeat(MAX_PROMPT_BYTES + 1);
        assert!(parse(json!({"messages": [{"role": "user", "content": huge}]})).is_err());
    }

    #[test]
    fn a_json_schema_is_read_into_its_constraint() {
        let schema = json!({"type": "object", "properties": {"city": {"type": "string"}}});
        let g = parse(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "place", "schema": schema, "strict": true}}}))
        .unwrap();
        assert_eq!(g.constraint, Some(Constraint::JsonSchema(schema)));
        let huge = json!({"type": "object", "description": "x".repeat(MAX_SCHEMA_BYTES)});
        let e = parse(json!({"messages": [{"role": "user", "content": "x"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": huge}}}));
        assert!(e.unwrap_err().message.contains("exceeds"));
    }

    #[test]
    fn answers_have_openais_shape() {
        let h = Header { id: "chatcmpl-1".into(), created_s: 1_700_000_000, model: "smollm2".into() };
        let c = completion(&h, "Paris", &[], FinishReason::Stop, Usage::new(12, 2));
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["choices"][0]["message"]["content"], "Paris");
        assert_eq!(c["choices"][0]["finish_reason"], "stop");
        assert_eq!(c["usage"]["total_tokens"], 14);
        let first = chunk(&h, json!({"role": "assistant", "content": ""}), None, true);
        assert_eq!(
            (first["object"].as_str(), first["choices"][0]["finish_reason"].is_null()),
            (Some("chat.completion.chunk"), true)
        );
        assert!(first["usage"].is_null() && first.get("usage").is_some());
        let last = chunk(&h, json!({}), Some(FinishReason::Length), false);
        assert_eq!(last["choices"][0]["finish_reason"], "length");
        assert!(last.get("usage").is_none());
        let call = ToolCall { id: "call_1".into(), name: "f".into(), arguments: "{}".into() };
        let c = completion(&h, "", std::slice::from_ref(&call), FinishReason::ToolCalls, Usage::new(1, 1));
        assert!(c["choices"][0]["message"]["content"].is_null());
        assert_eq!(c["choices"][0]["message"]["tool_calls"][0]["function"]["name"], "f");
        assert_eq!(c["choices"][0]["finish_reason"], "tool_calls");
        let u = usage_chunk(&h, Usage::new(3, 4));
        assert_eq!((u["choices"].as_array().unwrap().len(), &u["usage"]["completion_tokens"]), (0, &json!(4)));
    }
}
