//! The embedded engine: llama.cpp in the instance's own process. The weights are memory-mapped
//! read-only, so every instance holding the same file shares one copy through the page cache;
//! the context, KV cache, prompts and answers exist only here.
//!
//! A fixed set of slots (threads), each with its own llama.cpp context, takes generations off a
//! short queue; a slot keeps the tokens of its last request in its KV cache and evaluates only
//! what a new prompt adds to them (a chat's next turn), as llama-server's `cache_prompt` does.

use crate::engine::{busy, Engine, Event, Events, ModelInfo, Timings};
use crate::openai::{FinishReason, Generation, Usage};
use crate::tokens::{chat_template, prompt_tokens, reusable, sampler, TextOut};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatTemplate, LlamaModel};
use llama_cpp_2::token::LlamaToken;
use selfcloud_core::Error;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Instant;

/// How the embedded engine runs; every field is a setting (`selfcloud up --help`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct LlamaOptions {
    pub path: PathBuf,
    /// The name clients see (`GET /v1/llm/models`).
    pub name: String,
    /// Tokens of prompt and answer together, per slot (capped by what the model was trained on).
    pub context_tokens: u32,
    /// Generations under way at once.
    pub slots: usize,
    /// Generations waiting for a slot before the next is refused with 429 (at least 1: a request
    /// arriving while a slot turns from one job to the next waits rather than being refused).
    pub queue: usize,
    /// Threads each slot computes with.
    pub threads: usize,
    /// Milliseconds a generation waits for a reader that stopped reading (its answer's channel
    /// full) before it is ended and its slot freed: a stalled reader must not hold a slot, and
    /// the queue behind it.
    #[serde(default = "default_stalled_reader_ms")]
    pub stalled_reader_ms: u64,
}

impl LlamaOptions {
    pub const DEFAULT_STALLED_READER_MS: u64 = 5_000;

    pub(crate) fn stalled_reader(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.stalled_reader_ms.max(1))
    }
}

fn default_stalled_reader_ms() -> u64 {
    LlamaOptions::DEFAULT_STALLED_READER_MS
}

/// Threads a context computes with: the setting, or every core the process may use (0).
pub(crate) fn threads(setting: usize) -> i32 {
    let threads = match setting {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    threads as i32
}

/// Starts a thread that makes a context of `model` (one context at a time: llama.cpp may adjust
/// the model while it makes one) and hands it to `serve`. Answers once the context is made, so a
/// model that cannot run fails at load, not on the first request.
pub(crate) fn start_worker(
    name: String,
    model: Arc<LlamaModel>,
    params: impl FnOnce() -> LlamaContextParams + Send + 'static,
    serve: impl for<'m> FnOnce(&'m LlamaModel, LlamaContext<'m>) + Send + 'static,
) -> Result<(), Error> {
    let (ready_tx, ready) = mpsc::channel();
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            let ctx = {
                let _one = CONTEXT_MADE.lock().unwrap_or_else(|e| e.into_inner());
                backend().and_then(|b| {
                    model.new_context(b, params()).map_err(|e| Error::internal(format!("a llama.cpp context: {e}")))
                })
            };
            match ctx {
                Ok(ctx) => {
                    let _ = ready_tx.send(Ok(()));
                    serve(&model, ctx);
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(Error::internal)?;
    ready.recv().map_err(Error::internal)?
}

/// Sends `event`, waiting up to `patience` for room; false when the client is gone or stalled.
fn send_within(events: &tokio::sync::mpsc::Sender<Event>, mut event: Event, patience: std::time::Duration) -> bool {
    let since = Instant::now();
    loop {
        match events.try_send(event) {
            Ok(()) => return true,
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return false,
            Err(tokio::sync::mpsc::error::TrySendError::Full(back)) if since.elapsed() < patience => {
                event = back;
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => return false,
        }
    }
}

/// Prompt tokens evaluated per llama.cpp batch.
const BATCH: usize = 512;

/// llama.cpp's process-wide state: initialised once, never torn down.
pub(crate) fn backend() -> Result<&'static LlamaBackend, Error> {
    static BACKEND: OnceLock<Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            LlamaBackend::init()
                .map(|mut b| {
                    // llama.cpp's own logging goes to stderr line by line, outside our log format.
                    b.void_logs();
                    b
                })
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::internal(format!("llama.cpp did not start: {e}")))
}

/// Contexts are made one at a time: llama.cpp may adjust the model while it makes one.
static CONTEXT_MADE: Mutex<()> = Mutex::new(());

pub(crate) struct Job {
    pub generation: Generation,
    pub prompt: Vec<LlamaToken>,
    /// Made with the request, so that a constraint that cannot be compiled is its 400.
    pub sampler: llama_cpp_2::sampling::LlamaSampler,
    pub events: tokio::sync::mpsc::Sender<Event>,
}

/// Events a generation may have waiting for its reader.
pub(crate) const EVENTS: usize = 64;

/// What both chat engines on llama.cpp share: the model and its template, and the queue a
/// generation joins once its prompt is tokenized and checked against the context and budget.
pub(crate) struct Front {
    pub info: ModelInfo,
    pub model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    guide: crate::constraint::Guide,
    queue: mpsc::SyncSender<Job>,
    pub generated: Arc<AtomicU64>,
}

impl Front {
    /// Loads the model (its contexts hold `context_tokens` each, at most what it was trained
    /// on); its engine takes the jobs from the receiver.
    pub fn open(options: &LlamaOptions) -> Result<(Front, mpsc::Receiver<Job>), Error> {
        let model = load_model(backend()?, &options.path)?;
        let template = chat_template(&model)?;
        let context_tokens = options.context_tokens.min(model.n_ctx_train()).max(64);
        let info = ModelInfo { id: options.name.clone(), context_tokens, size_bytes: model.size() };
        let (queue, jobs) = mpsc::sync_channel::<Job>(options.queue.max(1));
        let front = Front {
            info,
            model: Arc::new(model),
            template,
            guide: Default::default(),
            queue,
            generated: Arc::new(AtomicU64::new(0)),
        };
        Ok((front, jobs))
    }

    pub fn generate(&self, mut generation: Generation) -> Result<Events, Error> {
        let prompt = prompt_tokens(&self.model, &self.template, &generation)?;
        if prompt.is_empty() {
            return Err(Error::invalid("the prompt is empty"));
        }
        let limit = self.info.context_tokens as usize;
        if prompt.len() + 1 > limit {
            return Err(Error::invalid(format!(
                "the prompt is {} tokens; this model's context holds {limit}",
                prompt.len()
            )));
        }
        generation.max_tokens = crate::budget::cap(generation.max_tokens, prompt.len() as u64, generation.allowance)?;
        let sampler = sampler(&self.model, &self.guide, &generation)?;
        let (events, rx) = tokio::sync::mpsc::channel(EVENTS);
        self.queue.try_send(Job { generation, prompt, sampler, events }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => busy(),
            mpsc::TrySendError::Disconnected(_) => Error::internal("the engine has stopped"),
        })?;
        Ok(rx)
    }
}

pub struct LlamaEngine {
    front: Front,
}

impl LlamaEngine {
    /// Loads the model and starts its slots; each slot's context is made before this returns, so
    /// a model that cannot run fails here, not on the first request.
    pub fn load(options: &LlamaOptions) -> Result<Self, Error> {
        let (front, jobs) = Front::open(options)?;
        let jobs = Arc::new(Mutex::new(jobs));
        let (threads, context_tokens) = (threads(options.threads), front.info.context_tokens);
        let stalled = options.stalled_reader();
        for n in 0..options.slots.max(1) {
            let (jobs, generated) = (jobs.clone(), front.generated.clone());
            let params = move || {
                LlamaContextParams::default()
                    .with_n_ctx(NonZeroU32::new(context_tokens))
                    .with_n_batch(BATCH as u32)
                    .with_n_threads(threads)
                    .with_n_threads_batch(threads)
            };
            start_worker(format!("llm-slot-{n}"), front.model.clone(), params, move |model, ctx| {
                Slot { model, ctx, cached: Vec::new(), cached_for: String::new(), generated, stalled }.serve(&jobs)
            })?;
        }
        Ok(LlamaEngine { front })
    }

    /// Tokens generated by every slot since the engine loaded (answers cut short included).
    pub fn generated_tokens(&self) -> u64 {
        self.front.generated.load(Ordering::Relaxed)
    }
}

pub(crate) fn load_model(backend: &LlamaBackend, path: &Path) -> Result<LlamaModel, Error> {
    if !path.is_file() {
        return Err(Error::not_found(format!("no model file at {}", path.display())));
    }
    let params = LlamaModelParams::default().with_use_mmap(true);
    LlamaModel::load_from_file(backend, path, &params)
        .map_err(|e| Error::invalid(format!("{} is not a model llama.cpp can load: {e}", path.display())))
}

impl Engine for LlamaEngine {
    fn model(&self) -> &ModelInfo {
        &self.front.info
    }

    fn generate(&self, generation: Generation) -> Result<Events, Error> {
        self.front.generate(generation)
    }
}

/// One slot: a context and the tokens its KV cache holds (positions 0..).
struct Slot<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    cached: Vec<LlamaToken>,
    /// Whose prompt `cached` is ([`Generation::caller`]); another caller's request starts afresh.
    cached_for: String,
    generated: Arc<AtomicU64>,
    /// How long a reader may leave its answer's channel full before the generation ends.
    stalled: std::time::Duration,
}

impl Slot<'_> {
    fn serve(mut self, jobs: &Mutex<mpsc::Receiver<Job>>) {
        loop {
            let job = match jobs.lock().unwrap_or_else(|e| e.into_inner()).recv() {
                Ok(job) => job,
                Err(_) => return, // the engine is gone
            };
            if job.events.is_closed() {
                continue; // the caller went away while it waited
            }
            let events = job.events.clone();
            // A fault in one generation fails that one alone: the slot forgets its cache and
            // takes the next job (a panic here would otherwise leave the engine a slot short).
            let failed = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(job))) {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some(Error::internal("the generation failed")),
            };
            if let Some(e) = failed {
                self.cached.clear();
                send_within(&events, Event::Failed(e), self.stalled);
            }
        }
    }

    /// Evaluates `tokens` from position `from`, asking for logits of the last only.
    fn eval(&mut self, tokens: &[LlamaToken], from: usize) -> Result<(), Error> {
        let mut batch = LlamaBatch::new(BATCH, 1);
        for (chunk_at, chunk) in tokens.chunks(BATCH).enumerate() {
            batch.clear();
            let base = from + chunk_at * BATCH;
            let last_chunk = (chunk_at + 1) * BATCH >= tokens.len();
            for (i, &t) in chunk.iter().enumerate() {
                let logits = last_chunk && i + 1 == chunk.len();
                batch.add(t, (base + i) as i32, &[0], logits).map_err(Error::internal)?;
            }
            self.ctx.decode(&mut batch).map_err(|e| Error::internal(format!("llama.cpp decode: {e}")))?;
        }
        Ok(())
    }

    fn run(&mut self, job: Job) -> Result<(), Error> {
        let Job { generation: g, prompt, mut sampler, events } = job;
        let stalled = self.stalled;
        let send = |e: Event| send_within(&events, e, stalled);
        let started = Instant::now();

        // Reuse what the cache holds of this caller's last prompt; at least the last token is
        // evaluated anew, for its logits.
        if self.cached_for != g.caller {
            self.cached.clear();
            self.cached_for.clone_from(&g.caller);
        }
        let mut reused = reusable(&self.cached, &prompt);
        if !self.ctx.clear_kv_cache_seq(Some(0), Some(reused as u32), None).map_err(Error::internal)? {
            // Some models' caches cannot drop a tail; start from nothing rather than keep it.
            self.ctx.clear_kv_cache();
            reused = 0;
        }
        self.cached.truncate(reused);
        self.eval(&prompt[reused..], reused)?;
        self.cached.extend_from_slice(&prompt[reused..]);
        // A prompt is paid for whole, as OpenAI bills it, even what the cache held.
        g.meter.add(prompt.len() as u64);
        let prompt_ms = started.elapsed().as_secs_f64() * 1000.0;

        let decoding = Instant::now();
        let vocab = self.model.vocab();
        let limit = self.ctx.n_ctx() as usize;
        let (mut text, mut generated) = (TextOut::default(), 0u64);
        let finish = loop {
            let token = sampler.sample(&self.ctx, -1);
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            generated += 1;
            self.generated.fetch_add(1, Ordering::Relaxed);
            g.meter.add(1);
            let said = text.push(self.model, token, &g.stop);
            if !said.send.is_empty() && !send(Event::Delta(said.send)) {
                return Ok(()); // the client went away: stop computing for it
            }
            if said.stopped {
                break FinishReason::Stop;
            }
            if generated >= u64::from(g.max_tokens) || self.cached.len() + 1 >= limit {
                break FinishReason::Length;
            }
            let at = self.cached.len();
            self.eval(&[token], at)?;
            self.cached.push(token);
        };
        let rest = text.rest();
        if !rest.is_empty() && !send(Event::Delta(rest)) {
            return Ok(());
        }
        let predicted_ms = decoding.elapsed().as_secs_f64() * 1000.0;
        let timings = Timings::new((prompt.len() - reused) as u64, prompt_ms, generated, predicted_ms, reused as u64);
        send(Event::Done { finish, usage: Usage::new(prompt.len() as u64, generated), timings });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_message_without_the_stall_setting_gets_the_default() {
        let json = r#"{"path":"m.gguf","name":"m","context_tokens":64,"slots":1,"queue":1,"threads":1}"#;
        let options: LlamaOptions = serde_json::from_str(json).unwrap();
        assert_eq!(options.stalled_reader(), std::time::Duration::from_millis(LlamaOptions::DEFAULT_STALLED_READER_MS));
        let never = LlamaOptions { stalled_reader_ms: 0, ..options };
        assert_eq!(never.stalled_reader(), std::time::Duration::from_millis(1), "0 would mean no patience at all");
    }
}
