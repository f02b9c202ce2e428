//! Embeddings on the embedded engine: a sentence encoder (a BERT GGUF, such as the one
//! `model pull all-minilm-l6-v2` converts) run by llama.cpp in the instance's own process, its
//! weights memory-mapped read-only like the chat model's.
//!
//! One worker thread owns the context and takes requests off a short queue (a full one is a
//! 429); it packs several short texts into one llama.cpp batch, each its own sequence, and
//! answers each text with its mean-pooled vector scaled to length 1 (so a dot product is the
//! cosine similarity), as sentence-transformers does.

use crate::budget::{fits, Allowance, Meter};
use crate::engine::{busy, ModelInfo};
use crate::llama::{backend, load_model, start_worker, threads};
use llama_cpp_2::context::params::{LlamaContextParams, LlamaPoolingType};
use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::token::LlamaToken;
use selfcloud_core::Error;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};

/// How the embedding engine runs; every field is a setting (`selfcloud up --help`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EmbedOptions {
    pub path: PathBuf,
    /// The name clients see and pass as `model`.
    pub name: String,
    /// Tokens of one text the encoder reads; the rest is cut (0: what the model was trained on).
    pub input_tokens: u32,
    /// Requests waiting for the worker before the next is refused with 429.
    pub queue: usize,
    /// Threads the worker computes with (0: every core the process may use).
    pub threads: usize,
}

/// The vectors of one request, in its order, and the tokens the encoder read for them.
#[derive(Debug, Clone, PartialEq)]
pub struct Embedded {
    pub vectors: Vec<Vec<f32>>,
    pub tokens: u64,
}

pub type Reply = tokio::sync::oneshot::Receiver<Result<Embedded, Error>>;

struct Job {
    texts: Vec<String>,
    allowance: Option<Allowance>,
    meter: Meter,
    reply: tokio::sync::oneshot::Sender<Result<Embedded, Error>>,
}

pub struct Embedder {
    info: ModelInfo,
    dimensions: usize,
    queue: mpsc::SyncSender<Job>,
}

/// Tokens in one llama.cpp batch: every text's tokens must fit one batch (the encoder attends
/// over the whole text at once), so it bounds `input_tokens` too.
const BATCH: u32 = 512;
/// Texts in one batch.
const SEQUENCES: u32 = 8;

impl Embedder {
    /// Loads the model and makes its context before returning, so a model that cannot embed
    /// fails here, not on the first request.
    pub fn load(options: &EmbedOptions) -> Result<Self, Error> {
        let backend = backend()?;
        let model = load_model(backend, &options.path)?;
        let dimensions = usize::try_from(model.n_embd()).map_err(Error::internal)?;
        let trained = model.n_ctx_train().min(BATCH);
        let input_tokens = match options.input_tokens {
            0 => trained,
            n => n.min(trained),
        }
        .max(2);
        let info = ModelInfo { id: options.name.clone(), context_tokens: input_tokens, size_bytes: model.size() };
        let threads = threads(options.threads);
        let (queue, jobs) = mpsc::sync_channel::<Job>(options.queue.max(1));
        let params = move || {
            LlamaContextParams::default()
                .with_embeddings(true)
                .with_pooling_type(LlamaPoolingType::Mean)
                .with_n_ctx(NonZeroU32::new(BATCH))
                .with_n_batch(BATCH)
                .with_n_ubatch(BATCH)
                .with_n_seq_max(SEQUENCES)
                .with_kv_unified(true)
                .with_n_threads(threads)
                .with_n_threads_batch(threads)
        };
        start_worker("llm-embed".into(), Arc::new(model), params, move |model, ctx| {
            Worker { model, ctx, input_tokens: input_tokens as usize }.serve(jobs)
        })?;
        Ok(Embedder { info, dimensions, queue })
    }

    /// The model; `context_tokens` is how much of one text it reads.
    pub fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// The length of every vector.
    pub fn dimensions(&self) -> usize {
        self.dimensions
    }

    /// Queues `texts`; 429 at once when the queue is full. Once tokenized, texts that are more
    /// than `allowance` leaves are refused whole (429 `budget_exceeded`); each batch computed
    /// is counted into `meter`, and a caller that goes away stops the rest.
    pub fn embed(&self, texts: Vec<String>, allowance: Option<Allowance>, meter: Meter) -> Result<Reply, Error> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.queue.try_send(Job { texts, allowance, meter, reply }).map_err(|e| match e {
            mpsc::TrySendError::Full(_) => busy(),
            mpsc::TrySendError::Disconnected(_) => Error::internal("the embedding worker has stopped"),
        })?;
        Ok(answer)
    }
}

/// `tokens` cut to `limit`, keeping the closing separator the tokenizer put last (as
/// sentence-transformers truncates).
pub fn truncate(mut tokens: Vec<LlamaToken>, limit: usize) -> Vec<LlamaToken> {
    if tokens.len() > limit {
        let last = *tokens.last().expect("longer than the limit");
        tokens.truncate(limit - 1);
        tokens.push(last);
    }
    tokens
}

/// `v` scaled to length 1 (a zero vector stays zero).
pub fn normalized(v: &[f32]) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        return v.to_vec();
    }
    v.iter().map(|x| x / norm).collect()
}

/// Consecutive runs of `lengths` that fit one batch: at most `tokens` together and `sequences`
/// of them (each length is at most `tokens`).
pub fn packs(lengths: &[usize], tokens: usize, sequences: usize) -> Vec<std::ops::Range<usize>> {
    let mut packs = Vec::new();
    let (mut start, mut used) = (0, 0);
    for (i, &n) in lengths.iter().enumerate() {
        if i > start && (used + n > tokens || i - start == sequences) {
            packs.push(start..i);
            (start, used) = (i, 0);
        }
        used += n;
    }
    if start < lengths.len() {
        packs.push(start..lengths.len());
    }
    packs
}

struct Worker<'m> {
    model: &'m LlamaModel,
    ctx: LlamaContext<'m>,
    input_tokens: usize,
}

impl Worker<'_> {
    fn serve(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(job) = jobs.recv() {
            if job.reply.is_closed() {
                continue; // the caller went away while it waited
            }
            let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.run(&job)))
                .unwrap_or_else(|_| Err(Error::internal("the embedding failed")));
            let _ = job.reply.send(answer);
        }
    }

    fn run(&mut self, job: &Job) -> Result<Embedded, Error> {
        // Specials are not parsed: a text that spells "[SEP]" gets the letters, not the token.
        let inputs: Vec<Vec<LlamaToken>> = job
            .texts
            .iter()
            .map(|t| truncate(self.model.vocab().tokenize(t.as_bytes(), true, false), self.input_tokens))
            .collect();
        let lengths: Vec<usize> = inputs.iter().map(Vec::len).collect();
        let total = lengths.iter().sum::<usize>() as u64;
        fits(total, job.allowance)?;
        let mut vectors = Vec::with_capacity(inputs.len());
        let mut batch = LlamaBatch::new(BATCH as usize, SEQUENCES as i32);
        for pack in packs(&lengths, BATCH as usize, SEQUENCES as usize) {
            if job.reply.is_closed() {
                return Err(Error::internal("the caller went away")); // nobody reads this
            }
            batch.clear();
            for (seq, tokens) in inputs[pack.clone()].iter().enumerate() {
                for (pos, &t) in tokens.iter().enumerate() {
                    batch.add(t, pos as i32, &[seq as i32], true).map_err(Error::internal)?;
                }
            }
            self.ctx.clear_kv_cache();
            self.ctx.decode(&mut batch).map_err(|e| Error::internal(format!("llama.cpp decode: {e}")))?;
            job.meter.add(lengths[pack.clone()].iter().sum::<usize>() as u64);
            for seq in 0..pack.len() {
                let pooled = self.ctx.embeddings_seq_ith(seq as i32).map_err(Error::internal)?;
                vectors.push(normalized(pooled));
            }
        }
        Ok(Embedded { vectors, tokens: total })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_long_text_keeps_its_closing_separator() {
        let t = |v: &[i32]| v.iter().map(|&i| LlamaToken(i)).collect::<Vec<_>>();
        assert_eq!(truncate(t(&[101, 5, 6, 7, 102]), 4), t(&[101, 5, 6, 102]));
        assert_eq!(truncate(t(&[101, 5, 102]), 4), t(&[101, 5, 102]));
    }

    #[test]
    fn vectors_come_back_unit_length() {
        let v = normalized(&[3.0, 4.0]);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert_eq!(normalized(&[0.0, 0.0]), vec![0.0, 0.0]);
    }

    #[test]
    fn texts_pack_into_batches_by_tokens_and_count() {
        assert_eq!(packs(&[3, 3, 3], 6, 8), vec![0..2, 2..3]);
        assert_eq!(packs(&[1, 1, 1, 1, 1], 100, 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(packs(&[6, 6], 6, 8), vec![0..1, 1..2]);
        assert_eq!(packs(&[], 6, 8), Vec::<std::ops::Range<usize>>::new());
    }
}
