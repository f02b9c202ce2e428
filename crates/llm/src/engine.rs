//! What every engine is to the instance: a model that answers a [`Generation`] with a stream of
//! [`Event`]s. The embedded llama.cpp engine is one (`crate::llama`); a shared batching process
//! and an upstream OpenAI server are others behind the same trait.

use crate::openai::{FinishReason, Generation, Usage};
use selfcloud_core::Error;
use serde::{Deserialize, Serialize};

/// How long each phase of a generation took, as llama-server reports it in every answer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    /// Prompt tokens evaluated (those reused from the same caller's previous turn are not).
    pub prompt_n: u64,
    pub prompt_ms: f64,
    pub prompt_per_second: f64,
    pub predicted_n: u64,
    pub predicted_ms: f64,
    pub predicted_per_second: f64,
    /// Prompt tokens taken from the KV cache of the same caller's previous request.
    pub cache_n: u64,
}

impl Timings {
    pub fn new(prompt_n: u64, prompt_ms: f64, predicted_n: u64, predicted_ms: f64, cache_n: u64) -> Self {
        let rate = |n: u64, ms: f64| if ms > 0.0 { n as f64 * 1000.0 / ms } else { 0.0 };
        Timings {
            prompt_n,
            prompt_ms,
            prompt_per_second: rate(prompt_n, prompt_ms),
            predicted_n,
            predicted_ms,
            predicted_per_second: rate(predicted_n, predicted_ms),
            cache_n,
        }
    }
}

/// One step of an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// More text (never half a character, never part of a stop string).
    Delta(String),
    /// The answer is complete.
    Done { finish: FinishReason, usage: Usage, timings: Timings },
    /// The answer broke off (what was sent stands).
    Failed(Error),
}

/// The model an engine serves, as `GET /v1/llm/models` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The name clients pass as `model`.
    pub id: String,
    /// Tokens a prompt and its answer may take together.
    pub context_tokens: u32,
    /// Bytes of weights (memory-mapped, shared through the page cache).
    pub size_bytes: u64,
}

/// Events of one answer; dropping the receiver cancels the generation.
pub type Events = tokio::sync::mpsc::Receiver<Event>;

pub trait Engine: Send + Sync + 'static {
    fn model(&self) -> &ModelInfo;

    /// Starts `generation`. Refuses at once (429) when every slot is taken and the queue is full,
    /// and (400) when the prompt does not fit the context; later faults arrive as
    /// [`Event::Failed`].
    fn generate(&self, generation: Generation) -> Result<Events, Error>;
}

/// The answer when every slot is busy and the queue is full.
pub fn busy() -> Error {
    Error {
        message: "the assistant is answering other requests; try again shortly".into(),
        ..Error::rate_limited(std::time::Duration::from_secs(1))
    }
}

/// Reads a whole answer (for a request without `stream`).
pub async fn collect(mut events: Events) -> Result<(String, FinishReason, Usage, Timings), Error> {
    let mut text = String::new();
    while let Some(event) = events.recv().await {
        match event {
            Event::Delta(d) => text.push_str(&d),
            Event::Done { finish, usage, timings } => return Ok((text, finish, usage, timings)),
            Event::Failed(e) => return Err(e),
        }
    }
    Err(Error::internal("the engine stopped without finishing the answer"))
}
