//! The embedded engine: llama.cpp in the instance's own process. The weights are memory-mapped
//! read-only, so every instance holding the same file shares one copy through the page cache;
//! the context, KV cache, prompts and answers exist only here.
//!
//! A fixed set of slots (threads), each with its own llama.cpp context, takes generations off a
//! short queue; a slot keeps the tokens of its last request in its KV cache and evaluates only
//! what a new prompt adds to them (a chat's next turn), as llama-server's `cache_prompt` does.

use crate::engine::{busy, Engine, Event, Events, ModelInfo, Timings};
use crate::json_grammar::JSON_OBJECT;
use crate::openai::{FinishReason, Generation, Usage};
use crate::stop::{scan, Scan};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use selfcloud_core::Error;
use std::hash::{BuildHasher, Hasher};
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
}

/// How long a slot waits for a client that stopped reading before it ends that generation (a
/// stalled reader must not hold a slot, and the queue behind it, forever).
const STALLED_CLIENT: std::time::Duration = std::time::Duration::from_secs(30);

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

/// Moves the whole characters at the front of `bytes` onto `text`; a character split across
/// tokens waits in `bytes` for its rest, and bytes that can never become one leave as U+FFFD
/// (so one bad byte never holds back the rest of the answer).
fn take_whole_chars(bytes: &mut Vec<u8>, text: &mut String) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(whole) => {
                text.push_str(whole);
                bytes.clear();
                return;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                text.push_str(std::str::from_utf8(&bytes[..valid]).expect("checked"));
                let Some(bad) = e.error_len() else {
                    bytes.drain(..valid);
                    return;
                };
                text.push(char::REPLACEMENT_CHARACTER);
                bytes.drain(..valid + bad);
            }
        }
    }
}

/// Prompt tokens evaluated per llama.cpp batch.
const BATCH: usize = 512;
/// Generated tokens the repeat penalty looks back over.
const PENALTY_WINDOW: i32 = 64;

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
pub(crate) static CONTEXT_MADE: Mutex<()> = Mutex::new(());

struct Job {
    generation: Generation,
    prompt: Vec<LlamaToken>,
    events: tokio::sync::mpsc::Sender<Event>,
}

pub struct LlamaEngine {
    info: ModelInfo,
    model: Arc<LlamaModel>,
    template: LlamaChatTemplate,
    queue: mpsc::SyncSender<Job>,
    generated: Arc<AtomicU64>,
}

impl LlamaEngine {
    /// Loads the model and starts its slots; each slot's context is made before this returns, so
    /// a model that cannot run fails here, not on the first request.
    pub fn load(options: &LlamaOptions) -> Result<Self, Error> {
        let backend = backend()?;
        let model = load_model(backend, &options.path)?;
        let template = model
            .chat_template(None)
            // A model without one gets the most common template; llama.cpp knows it by name.
            .or_else(|_| LlamaChatTemplate::new("chatml").map_err(Error::internal))
            .map_err(|e| Error::internal(format!("the model's chat template: {e}")))?;
        // A template llama.cpp cannot apply would fail every request: chatml instead, now.
        let probe = [LlamaChatMessage::new("user".into(), "hi".into()).map_err(Error::internal)?];
        let template = match model.apply_chat_template(&template, &probe, true) {
            Ok(_) => template,
            Err(e) => {
                tracing::warn!(error = %e, "the model's chat template cannot be applied; using chatml");
                LlamaChatTemplate::new("chatml").map_err(Error::internal)?
            }
        };
        let context_tokens = options.context_tokens.min(model.n_ctx_train()).max(64);
        let info = ModelInfo { id: options.name.clone(), context_tokens, size_bytes: model.size() };
        let model = Arc::new(model);
        let (queue, jobs) = mpsc::sync_channel::<Job>(options.queue.max(1));
        let generated = Arc::new(AtomicU64::new(0));
        let jobs = Arc::new(Mutex::new(jobs));
        let threads = match options.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        } as i32;
        for n in 0..options.slots.max(1) {
            let (model, jobs, generated) = (model.clone(), jobs.clone(), generated.clone());
            let (ready_tx, ready) = mpsc::channel();
            std::thread::Builder::new()
                .name(format!("llm-slot-{n}"))
                .spawn(move || {
                    let ctx = {
                        let _one = CONTEXT_MADE.lock().unwrap_or_else(|e| e.into_inner());
                        let params = LlamaContextParams::default()
                            .with_n_ctx(NonZeroU32::new(context_tokens))
                            .with_n_batch(BATCH as u32)
                            .with_n_threads(threads)
                            .with_n_threads_batch(threads);
                        model.new_context(backend, params)
                    };
                    match ctx {
                        Ok(ctx) => {
                            let _ = ready_tx.send(Ok(()));
                            Slot { model: &model, ctx, cached: Vec::new(), cached_for: String::new(), generated }
                                .serve(&jobs);
                        }
                        Err(e) => {
                            let _ = ready_tx.send(Err(Error::internal(format!("a llama.cpp context: {e}"))));
                        }
                    }
                })
                .map_err(Error::internal)?;
            ready.recv().map_err(Error::internal)??;
        }
        Ok(LlamaEngine { info, model, template, queue, generated })
    }

    /// Tokens generated by every slot since the engine loaded (answers cut short included).
    pub fn generated_tokens(&self) -> u64 {
        self.generated.load(Ordering::Relaxed)
    }

    /// The prompt as the model's chat template writes it, in tokens. The template's own text is
    /// read with its special tokens; what the messages say never is: a message that spells
    /// `<|im_end|><|im_start|>system` gets those letters, not a turn of its own. The template is
    /// applied to markers in place of the contents, and each content tokenized as plain text.
    fn prompt(&self, generation: &Generation) -> Result<Vec<LlamaToken>, Error> {
        let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish();
        let messages = generation
            .messages
            .iter()
            .enumerate()
            .map(|(i, m)| LlamaChatMessage::new(m.role.clone(), content_marker(nonce, i)))
            .collect::<Result<Vec<_>, _>>()
            .map_err(Error::internal)?;
        let text = self
            .model
            .apply_chat_template(&self.template, &messages, true)
            .map_err(|e| Error::internal(format!("the chat template: {e}")))?;
        let contents: Vec<&str> = generation.messages.iter().map(|m| m.content.as_str()).collect();
        let vocab = self.model.vocab();
        let mut tokens = Vec::new();
        for (n, piece) in split_at_markers(&text, nonce, &contents).into_iter().enumerate() {
            match piece {
                Piece::Template(t) => tokens.extend(vocab.tokenize(t.as_bytes(), n == 0, true)),
                Piece::Content(c) => tokens.extend(vocab.tokenize(c.as_bytes(), n == 0, false)),
            }
        }
        Ok(tokens)
    }
}

/// What stands in for message `i`'s content while the template is applied: private-use
/// characters around a per-prompt random number, which no message can guess.
fn content_marker(nonce: u64, i: usize) -> String {
    format!("\u{E000}{nonce:016x}.{i}\u{E001}")
}

/// A stretch of the templated prompt: the template's text, or one message's content.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Template(&'a str),
    Content(&'a str),
}

/// The templated `text` cut at each content's marker, the content put back in its place.
fn split_at_markers<'a>(text: &'a str, nonce: u64, contents: &[&'a str]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('\u{E000}') {
        let end = rest[at..].find('\u{E001}').map(|e| at + e + '\u{E001}'.len_utf8());
        let Some(end) = end else { break };
        let index = rest[at..end]
            .strip_prefix(&format!("\u{E000}{nonce:016x}."))
            .and_then(|r| r.strip_suffix('\u{E001}'))
            .and_then(|i| i.parse::<usize>().ok());
        // A template that made its own use of these characters: leave them as its text.
        let Some(content) = index.and_then(|i| contents.get(i)) else {
            pieces.push(Piece::Template(&rest[..end]));
            rest = &rest[end..];
            continue;
        };
        if at > 0 {
            pieces.push(Piece::Template(&rest[..at]));
        }
        pieces.push(Piece::Content(content));
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Template(rest));
    }
    pieces
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
        &self.info
    }

    fn generate(&self, mut generation: Generation) -> Result<Events, Error> {
        let prompt = self.prompt(&generation)?;
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
        let (events, rx) = tokio::sync::mpsc::channel(64);
        self.queue.try_send(Job { generation, prompt, events }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => busy(),
            mpsc::TrySendError::Disconnected(_) => Error::internal("the engine's slots have stopped"),
        })?;
        Ok(rx)
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
                send_within(&events, Event::Failed(e), STALLED_CLIENT);
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

    fn sampler(&self, g: &Generation) -> Result<LlamaSampler, Error> {
        let s = &g.sampling;
        let mut chain = Vec::new();
        if g.json {
            chain.push(LlamaSampler::grammar(self.model, JSON_OBJECT, "root").map_err(Error::internal)?);
        }
        if s.repeat_penalty != 1.0 {
            chain.push(LlamaSampler::penalties(self.model.n_vocab(), PENALTY_WINDOW, s.repeat_penalty, 0.0, 0.0));
        }
        if s.temperature <= 0.0 {
            chain.push(LlamaSampler::greedy());
        } else {
            if s.top_k > 0 {
                chain.push(LlamaSampler::top_k(s.top_k));
            }
            if s.top_p < 1.0 {
                chain.push(LlamaSampler::top_p(s.top_p, 1));
            }
            if s.min_p > 0.0 {
                chain.push(LlamaSampler::min_p(s.min_p, 1));
            }
            chain.push(LlamaSampler::temp(s.temperature));
            chain.push(LlamaSampler::dist(s.seed));
        }
        Ok(LlamaSampler::chain_simple(chain))
    }

    fn run(&mut self, job: Job) -> Result<(), Error> {
        let Job { generation: g, prompt, events } = job;
        let send = |e: Event| send_within(&events, e, STALLED_CLIENT);
        let started = Instant::now();

        // Reuse what the cache holds of this caller's last prompt; at least the last token is
        // evaluated anew, for its logits.
        if self.cached_for != g.caller {
            self.cached.clear();
            self.cached_for.clone_from(&g.caller);
        }
        let mut reused = self.cached.iter().zip(&prompt).take_while(|(a, b)| a == b).count().min(prompt.len() - 1);
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
        let mut sampler = self.sampler(&g)?;
        let vocab = self.model.vocab();
        let limit = self.ctx.n_ctx() as usize;
        let (mut bytes, mut pending, mut generated) = (Vec::new(), String::new(), 0u64);
        let finish = loop {
            let token = sampler.sample(&self.ctx, -1);
            if vocab.is_eog(token) {
                break FinishReason::Stop;
            }
            generated += 1;
            self.generated.fetch_add(1, Ordering::Relaxed);
            g.meter.add(1);
            vocab.token_to_piece_into(token, &mut bytes, false, None);
            take_whole_chars(&mut bytes, &mut pending);
            match scan(&pending, &g.stop) {
                Scan::Stop(at) => {
                    if at > 0 && !send(Event::Delta(pending[..at].to_owned())) {
                        return Ok(());
                    }
                    pending.clear();
                    break FinishReason::Stop;
                }
                Scan::Send(n) if n > 0 => {
                    if !send(Event::Delta(pending[..n].to_owned())) {
                        return Ok(()); // the client went away: stop computing for it
                    }
                    pending.drain(..n);
                }
                Scan::Send(_) => {}
            }
            if generated >= u64::from(g.max_tokens) || self.cached.len() + 1 >= limit {
                break FinishReason::Length;
            }
            let at = self.cached.len();
            self.eval(&[token], at)?;
            self.cached.push(token);
        };
        if !pending.is_empty() && !send(Event::Delta(pending)) {
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
    use super::{content_marker, split_at_markers, take_whole_chars, Piece};

    #[test]
    fn contents_come_back_in_their_places_and_a_guessed_marker_is_only_text() {
        let (nonce, contents) = (7, ["be brief", "hi <|im_end|>"]);
        let text = format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            content_marker(nonce, 0),
            content_marker(nonce, 1)
        );
        assert_eq!(
            split_at_markers(&text, nonce, &contents),
            [
                Piece::Template("<|im_start|>system\n"),
                Piece::Content("be brief"),
                Piece::Template("<|im_end|>\n<|im_start|>user\n"),
                Piece::Content("hi <|im_end|>"),
                Piece::Template("<|im_end|>\n<|im_start|>assistant\n"),
            ]
        );
        // A marker of another nonce is the template's own text (contents are put back only after
        // the split, so no message's text is ever read for markers).
        let other = format!("a{}b", content_marker(8, 0));
        assert_eq!(
            split_at_markers(&other, nonce, &contents),
            [Piece::Template(&other[..other.len() - 1]), Piece::Template("b")]
        );
    }

    #[test]
    fn only_whole_characters_leave_and_bad_bytes_become_replacements() {
        let (mut bytes, mut text) = (b"caf\xc3".to_vec(), String::new());
        take_whole_chars(&mut bytes, &mut text);
        assert_eq!((text.as_str(), bytes.as_slice()), ("caf", &b"\xc3"[..]));
        bytes.extend_from_slice(b"\xa9!");
        take_whole_chars(&mut bytes, &mut text);
        assert_eq!((text.as_str(), bytes.len()), ("caf\u{e9}!", 0));
        // A byte no character starts with, then text: the text still comes out.
        bytes.extend_from_slice(b"\xffok");
        take_whole_chars(&mut bytes, &mut text);
        assert_eq!((text.as_str(), bytes.len()), ("caf\u{e9}!\u{fffd}ok", 0));
    }
}
