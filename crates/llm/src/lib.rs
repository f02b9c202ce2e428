//! The private LLM, one part of a user's instance.
//!
//! The protocol half is pure and tested: the OpenAI-shaped request read into what an engine runs
//! ([`openai::ChatRequest::validate`]), the answers and stream chunks written back, the SSE
//! framing, stop strings ([`stop`]), the token-budget rule ([`budget`]), the assistant's
//! retrieval and prompt ([`retrieve`]), the embeddings request ([`embeddings`]) and the models
//! `model pull` knows ([`catalog`]), a BERT checkpoint among them converted to GGUF at pull
//! ([`convert`]). The chat engines sit behind one trait ([`engine::Engine`]): llama.cpp embedded
//! in the instance's process ([`llama`]) is the default; embeddings run on the same llama.cpp
//! ([`embed`]). HTTP routing stays in the instance service and the gateway.

pub mod batched;
pub mod budget;
pub mod catalog;
pub mod channel;
pub mod constraint;
pub mod convert;
pub mod embed;
pub mod embeddings;
pub mod engine;
pub mod gguf;
pub mod llama;
pub mod messages;
pub mod openai;
pub mod retrieve;
pub mod sse;
pub mod stop;
mod tokens;
pub mod tools;

pub use engine::{Engine, Event, Events, ModelInfo, Timings};
