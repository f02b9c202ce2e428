//! The batching engine: one llama.cpp context whose KV cache holds one sequence per request
//! under way, and one loop that advances every sequence by a token per decode (continuous
//! batching, as llama-server does): a new request joins between two steps, with its prompt fed
//! in chunks beside the others' tokens, and a finished one leaves. Many callers' generations
//! share the weights' reads and the matrix work of each step, for throughput.
//!
//! What it promises callers: a sequence sees only its own tokens (each attends to its own
//! sequence of the cache), and what a request leaves in its place's cache is reused only by the
//! next request of the same caller of the same instance (a conversation's next turn evaluates
//! only what it adds, as in per-instance mode), so no prompt prefix is ever shared between
//! callers or instances, nor its timing. A kept cache lasts until its place is wanted by another
//! request. What it does not promise: that a caller's prompt and answer stay in the caller's own
//! process (they pass through this engine's), which is what per-instance mode (`crate::llama`)
//! promises.

use crate::engine::{Engine, Event, Events, ModelInfo, Timings};
use crate::llama::{start_worker, threads, Front, Job, LlamaOptions, EVENTS};
use crate::openai::{FinishReason, Generation, Usage};
use crate::tokens::{reusable, TextOut};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use selfcloud_core::Error;
use std::collections::VecDeque;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// Tokens in one decode, all sequences together (prompts are fed in chunks within it).
const BATCH: usize = 512;
/// Events a sequence holds for a client that is slow to read before it stops computing for it
/// (beside the [`EVENTS`] its channel holds); one that does not read at all it waits for up to
/// [`LlamaOptions::stalled_reader_ms`].
const OUTBOX: usize = EVENTS;

pub struct BatchedEngine {
    front: Front,
}

impl BatchedEngine {
    /// Loads the model and makes the shared context: `options.slots` sequences at once, each of
    /// up to `options.context_tokens`.
    pub fn load(options: &LlamaOptions) -> Result<Self, Error> {
        let (front, jobs) = Front::open(options)?;
        let slots = options.slots.max(1);
        let threads = threads(options.threads);
        let (context_tokens, queue) = (front.info.context_tokens, options.queue.max(1));
        let (counter, stalled) = (front.generated.clone(), options.stalled_reader());
        let params = move || {
            LlamaContextParams::default()
                .with_n_ctx(NonZeroU32::new(context_tokens * slots as u32))
                .with_n_batch(BATCH as u32)
                .with_n_seq_max(slots as u32)
                .with_n_threads(threads)
                .with_n_threads_batch(threads)
        };
        start_worker("llm-batch".into(), front.model.clone(), params, move |model, ctx| {
            let (seqs, kept) = ((0..slots).map(|_| None).collect(), (0..slots).map(|_| None).collect());
            let (deferred, limit) = (VecDeque::new(), context_tokens as usize);
            Batcher { model, ctx, seqs, kept, deferred, queue, limit, generated: counter, stalled }.serve(jobs)
        })?;
        Ok(BatchedEngine { front })
    }

    /// The one engine for `options` in this process, loaded by the first instance that asks
    /// (shared mode with the in-process runtime: every instance's requests batch together).
    pub fn shared(options: &LlamaOptions) -> Result<Arc<BatchedEngine>, Error> {
        static SHARED: Mutex<Vec<(LlamaOptions, Arc<BatchedEngine>)>> = Mutex::new(Vec::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, engine)) = shared.iter().find(|(o, _)| o == options) {
            return Ok(engine.clone());
        }
        let engine = Arc::new(BatchedEngine::load(options)?);
        shared.push((options.clone(), engine.clone()));
        Ok(engine)
    }

    /// Tokens generated for every sequence since the engine loaded.
    pub fn generated_tokens(&self) -> u64 {
        self.front.generated.load(Ordering::Relaxed)
    }
}

impl Engine for BatchedEngine {
    fn model(&self) -> &ModelInfo {
        &self.front.info
    }

    fn generate(&self, generation: Generation) -> Result<Events, Error> {
        self.front.generate(generation)
    }
}

/// One request under way: its place in the cache is its index among the batcher's sequences.
struct Seq {
    job: Job,
    /// Prompt tokens in the cache so far; then every token the sequence holds.
    fed: usize,
    /// Prompt tokens found in the place's cache, kept from the same caller's last request.
    reused: usize,
    /// The answer's tokens fed so far (in the cache after the prompt).
    answer: Vec<LlamaToken>,
    /// The token sampled last, to be fed at the next step.
    next: Option<LlamaToken>,
    /// Where in this step's batch the sequence's logits are.
    logits_at: Option<i32>,
    text: TextOut,
    generated: u64,
    started: Instant,
    prompt_ms: f64,
    decoding: Option<Instant>,
    outbox: VecDeque<Event>,
    stalled_since: Option<Instant>,
    done: bool,
    /// The answer ended as answers do (not by a fault): its cache may be kept.
    finished: bool,
}

/// What a place's cache holds after its request, for whom: the next request of the same caller
/// of the same instance continues from it.
struct Kept {
    tenant: String,
    caller: String,
    tokens: Vec<LlamaToken>,
    since: Instant,
}

impl Kept {
    fn of(job: &Job, answer: &[LlamaToken]) -> Kept {
        let g = &job.generation;
        let tokens = job.prompt.iter().chain(answer).copied().collect();
        Kept { tenant: g.tenant.clone(), caller: g.caller.clone(), tokens, since: Instant::now() }
    }

    fn is_for(&self, job: &Job) -> bool {
        self.tenant == job.generation.tenant && self.caller == job.generation.caller
    }
}

/// The places one instance may hold at once: half of them (at least one), so that with two or
/// more places there is always room for another user.
pub fn share(places: usize) -> usize {
    (places / 2).max(1)
}

struct Batcher<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    seqs: Vec<Option<Seq>>,
    /// For each free place, what its cache kept of its last request.
    kept: Vec<Option<Kept>>,
    /// Requests taken off the queue whose instance already holds its share of the places: they
    /// join, in order, as that instance's sequences end. At most `queue` of them: past it the
    /// queue fills, and a new request is refused with 429.
    deferred: VecDeque<Job>,
    queue: usize,
    /// Tokens one sequence may hold.
    limit: usize,
    generated: Arc<AtomicU64>,
    /// How long a sequence's reader may leave its channel full before the sequence leaves.
    stalled: Duration,
}

impl Batcher<'_> {
    fn serve(mut self, jobs: mpsc::Receiver<Job>) {
        let mut batch = LlamaBatch::new(BATCH, self.seqs.len() as i32);
        loop {
            if !self.admit(&jobs) {
                return; // the engine is gone and nothing is under way
            }
            // A fault fails the sequences under way, not the engine: each gets the error, the
            // cache is emptied, and the next requests start afresh.
            let stepped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.step(&mut batch)))
                .unwrap_or_else(|_| Err(Error::internal("the generation failed")));
            if let Err(e) = stepped {
                for seq in self.seqs.iter_mut().flatten() {
                    seq.outbox.push_back(Event::Failed(e.clone()));
                    seq.done = true;
                }
                self.ctx.clear_kv_cache();
                self.kept.iter_mut().for_each(|k| *k = None);
            }
            self.deliver();
        }
    }

    /// Takes waiting requests into free places: waits for one when nothing is under way. One
    /// instance holds at most its [`share`] of the places, so a user who opens many streams (and
    /// never reads them) cannot shut the others out. False once the engine is gone and nothing is
    /// left to do.
    fn admit(&mut self, jobs: &mpsc::Receiver<Job>) -> bool {
        let share = share(self.seqs.len());
        loop {
            if self.seqs.iter().all(Option::is_some) {
                return true;
            }
            let holds = |seqs: &[Option<Seq>], tenant: &str| {
                seqs.iter().flatten().filter(|s| s.job.generation.tenant == tenant).count()
            };
            // First the deferred request whose instance now has room, in the order they came.
            let ready = self.deferred.iter().position(|j| holds(&self.seqs, &j.generation.tenant) < share);
            let job = match ready {
                Some(at) => self.deferred.remove(at).expect("found"),
                None if self.deferred.len() >= self.queue => return true,
                None => {
                    let busy = self.seqs.iter().any(Option::is_some);
                    let next = if busy || !self.deferred.is_empty() { jobs.try_recv().ok() } else { jobs.recv().ok() };
                    match next {
                        Some(job) if holds(&self.seqs, &job.generation.tenant) >= share => {
                            self.deferred.push_back(job);
                            continue;
                        }
                        Some(job) => job,
                        None if busy || !self.deferred.is_empty() => return true,
                        None => return false,
                    }
                }
            };
            if job.events.is_closed() {
                continue; // the caller went away while it waited
            }
            let (place, reused) = self.place_for(&job);
            // A prompt is paid for whole, as OpenAI bills it, even what the cache held.
            job.generation.meter.add(job.prompt.len() as u64);
            self.seqs[place] = Some(Seq {
                job,
                fed: reused,
                reused,
                answer: Vec::new(),
                next: None,
                logits_at: None,
                text: TextOut::default(),
                generated: 0,
                started: Instant::now(),
                prompt_ms: 0.0,
                decoding: None,
                outbox: VecDeque::new(),
                stalled_since: None,
                done: false,
                finished: false,
            });
        }
    }

    /// A free place for `job`, and the prompt tokens its cache holds already: the place its
    /// caller's last request kept (the one sharing the most), else one that keeps nothing, else
    /// the one kept longest, forgotten. Only the same caller of the same instance reuses a cache.
    fn place_for(&mut self, job: &Job) -> (usize, usize) {
        let free = || (0..self.seqs.len()).filter(|&i| self.seqs[i].is_none());
        let own = free()
            .filter_map(|i| {
                self.kept[i].as_ref().filter(|k| k.is_for(job)).map(|k| (i, reusable(&k.tokens, &job.prompt)))
            })
            .filter(|&(_, n)| n > 0)
            .max_by_key(|&(_, n)| n);
        let place = own.map(|(i, _)| i).unwrap_or_else(|| {
            free()
                .find(|&i| self.kept[i].is_none())
                .or_else(|| free().min_by_key(|&i| self.kept[i].as_ref().map(|k| k.since)))
                .expect("a free place")
        });
        let mut reused = own.map_or(0, |(_, n)| n);
        self.kept[place] = None;
        let id = Some(place as u32);
        // Some models' caches cannot drop a tail: start that place from nothing.
        if reused == 0 || !self.ctx.clear_kv_cache_seq(id, Some(reused as u32), None).unwrap_or(false) {
            let _ = self.ctx.clear_kv_cache_seq(id, None, None);
            reused = 0;
        }
        (place, reused)
    }

    /// One decode: every sequence's next token, and chunks of the prompts still being fed;
    /// then a token sampled for each sequence whose logits it computed.
    fn step(&mut self, batch: &mut LlamaBatch) -> Result<(), Error> {
        batch.clear();
        // The answers under way first, a token each, so a long prompt that joins never holds
        // them back; then the prompts being fed, in what room is left.
        for (id, seq) in self.seqs.iter_mut().enumerate() {
            let Some(seq) = seq.as_mut().filter(|s| !s.done && s.outbox.len() < OUTBOX) else { continue };
            if let Some(t) = seq.next.take() {
                batch.add(t, seq.fed as i32, &[id as i32], true).map_err(Error::internal)?;
                seq.fed += 1;
                seq.answer.push(t);
                seq.logits_at = Some(batch.n_tokens() - 1);
            }
        }
        let mut room = BATCH - batch.n_tokens() as usize;
        for (id, seq) in self.seqs.iter_mut().enumerate() {
            let Some(seq) = seq.as_mut().filter(|s| !s.done && s.fed < s.job.prompt.len()) else { continue };
            if room == 0 {
                break;
            }
            let prompt = &seq.job.prompt;
            let n = room.min(prompt.len() - seq.fed);
            for (i, &t) in prompt[seq.fed..seq.fed + n].iter().enumerate() {
                let last = seq.fed + i + 1 == prompt.len();
                batch.add(t, (seq.fed + i) as i32, &[id as i32], last).map_err(Error::internal)?;
            }
            seq.fed += n;
            room -= n;
            if seq.fed == prompt.len() {
                seq.logits_at = Some(batch.n_tokens() - 1);
            }
        }
        if batch.n_tokens() == 0 {
            // Every sequence waits on its reader: give them a moment rather than spin.
            std::thread::sleep(Duration::from_millis(2));
            return Ok(());
        }
        self.ctx.decode(batch).map_err(|e| Error::internal(format!("llama.cpp decode: {e}")))?;
        for seq in self.seqs.iter_mut().flatten() {
            let Some(at) = seq.logits_at.take() else { continue };
            let token = seq.job.sampler.sample(&self.ctx, at);
            self.generated.fetch_add(1, Ordering::Relaxed);
            Self::take(self.model, self.limit, seq, token);
        }
        Ok(())
    }

    /// What a sampled token does to its sequence: more text, or the end of the answer.
    fn take(model: &LlamaModel, limit: usize, seq: &mut Seq, token: LlamaToken) {
        let decoding = *seq.decoding.get_or_insert_with(|| {
            seq.prompt_ms = seq.started.elapsed().as_secs_f64() * 1000.0;
            Instant::now()
        });
        let g = &seq.job.generation;
        let finish = if model.vocab().is_eog(token) {
            Some(FinishReason::Stop)
        } else {
            seq.generated += 1;
            g.meter.add(1);
            let said = seq.text.push(model, token, &g.stop);
            if !said.send.is_empty() {
                seq.outbox.push_back(Event::Delta(said.send));
            }
            if said.stopped {
                Some(FinishReason::Stop)
            } else if seq.generated >= u64::from(g.max_tokens) || seq.fed + 1 >= limit {
                Some(FinishReason::Length)
            } else {
                seq.next = Some(token);
                None
            }
        };
        if let Some(finish) = finish {
            let rest = seq.text.rest();
            if !rest.is_empty() {
                seq.outbox.push_back(Event::Delta(rest));
            }
            let (prompt_n, reused) = (seq.job.prompt.len() as u64, seq.reused as u64);
            let predicted_ms = decoding.elapsed().as_secs_f64() * 1000.0;
            let timings = Timings::new(prompt_n - reused, seq.prompt_ms, seq.generated, predicted_ms, reused);
            seq.outbox.push_back(Event::Done { finish, usage: Usage::new(prompt_n, seq.generated), timings });
            (seq.done, seq.finished) = (true, true);
        }
    }

    /// Hands each sequence's events to its client as far as it reads them; a sequence whose
    /// client left, stalled too long, or has its whole answer delivered leaves. A whole answer's
    /// cache is kept for its caller's next request; any other is cleared.
    fn deliver(&mut self) {
        for id in 0..self.seqs.len() {
            let Some(seq) = self.seqs[id].as_mut() else { continue };
            let mut gone = false;
            while let Some(event) = seq.outbox.pop_front() {
                match seq.job.events.try_send(event) {
                    Ok(()) => seq.stalled_since = None,
                    Err(tokio::sync::mpsc::error::TrySendError::Full(event)) => {
                        seq.outbox.push_front(event);
                        let since = *seq.stalled_since.get_or_insert_with(Instant::now);
                        gone = since.elapsed() > self.stalled;
                        break;
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                        gone = true;
                        break;
                    }
                }
            }
            // Once the whole answer is handed over, a reader that read it and left is no fault:
            // it may already be gone by now (its end of the channel dropped on the last event).
            let whole = !gone && seq.done && seq.outbox.is_empty();
            gone |= !whole && seq.job.events.is_closed();
            if gone || whole {
                let seq = self.seqs[id].take().expect("under way");
                if whole && seq.finished {
                    self.kept[id] = Some(Kept::of(&seq.job, &seq.answer));
                } else {
                    let _ = self.ctx.clear_kv_cache_seq(Some(id as u32), None, None);
                }
            }
        }
    }
}
