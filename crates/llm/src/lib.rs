//! The private LLM, one part of a user's instance.
//!
//! What is here so far is the protocol half, pure and tested: the OpenAI-shaped request read into
//! what an engine runs ([`openai::ChatRequest::validate`]), the answers and stream chunks written
//! back, the SSE framing, and the token-budget rule ([`budget`]). The engines (llama.cpp embedded,
//! shared batching, upstream) come next behind one trait; HTTP routing stays in the instance
//! service and the gateway.

pub mod budget;
pub mod openai;
pub mod sse;
