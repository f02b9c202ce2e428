//! The instance's LLM part: its chat engine and its embedding model, each loaded on the first
//! call that needs it (an instance that is only ever asked for records never maps a model), then
//! kept while the instance is awake.

use crate::protocol::LlmSettings;
use selfcloud_core::{Error, Result};
use selfcloud_llm::batched::BatchedEngine;
use selfcloud_llm::embed::Embedder;
use selfcloud_llm::llama::LlamaEngine;
use selfcloud_llm::Engine;
use std::sync::Arc;
use std::time::Duration;

pub struct Llm {
    settings: Option<LlmSettings>,
    /// Control's broker, in an instance process: the shared engine is reached through it.
    broker: Option<Arc<crate::broker::Broker>>,
    engine: tokio::sync::OnceCell<Arc<dyn Engine>>,
    embedder: tokio::sync::OnceCell<Arc<Embedder>>,
}

impl Llm {
    pub fn new(settings: Option<LlmSettings>, broker: Option<Arc<crate::broker::Broker>>) -> Self {
        Llm { settings, broker, engine: Default::default(), embedder: Default::default() }
    }

    pub fn limits(&self) -> selfcloud_llm::openai::RequestLimits {
        self.settings.as_ref().map(|s| s.limits).unwrap_or_default()
    }

    /// The engine, loading it on first use; 503 when the server has no model.
    pub async fn engine(&self) -> Result<Arc<dyn Engine>> {
        let Some(settings) = &self.settings else {
            return Err(Error::unavailable(
                "no model is installed on this server (the operator runs `selfcloud model pull smollm2`)",
                Duration::from_secs(60),
            ));
        };
        match (&settings.shared, &self.broker) {
            // Shared mode in an instance process: the engine process, through the broker's
            // channel (asked for again whenever it breaks).
            (Some(_), Some(broker)) => {
                let broker = broker.clone();
                let engine = self
                    .engine
                    .get_or_try_init(|| async move {
                        let engine = crate::remote_engine::RemoteEngine::connect(broker).await?;
                        Ok::<_, Error>(Arc::new(engine) as Arc<dyn Engine>)
                    })
                    .await?;
                Ok(engine.clone())
            }
            // Shared mode with the in-process runtime: one engine in the server's process.
            (Some(shared), None) => {
                let options = shared.clone();
                loaded(&self.engine, "the shared engine", move || {
                    BatchedEngine::shared(&options).map(|e| e as Arc<dyn Engine>)
                })
                .await
            }
            (None, _) => {
                let options = settings.engine.clone();
                loaded(&self.engine, "the assistant's model", move || {
                    LlamaEngine::load(&options).map(|e| Arc::new(e) as Arc<dyn Engine>)
                })
                .await
            }
        }
    }

    /// The embedding model, loading it on first use; 503 when the server has none.
    pub async fn embedder(&self) -> Result<Arc<Embedder>> {
        let Some(options) = self.settings.as_ref().and_then(|s| s.embedding.clone()) else {
            return Err(Error::unavailable(
                "no embedding model is installed on this server (the operator runs `selfcloud model pull all-minilm-l6-v2`)",
                Duration::from_secs(60),
            ));
        };
        loaded(&self.embedder, "the embedding model", move || Embedder::load(&options).map(Arc::new)).await
    }

    /// True when the server gave this instance an embedding model.
    pub fn has_embedder(&self) -> bool {
        self.settings.as_ref().is_some_and(|s| s.embedding.is_some())
    }

    /// Texts one embeddings request may carry.
    pub fn max_embedding_inputs(&self) -> usize {
        self.limits().max_embedding_inputs
    }
}

/// What `cell` holds, made by `load` off the async threads the first time. A model that does
/// not load is the server's fault, not the caller's: 503, the cause in the log only.
async fn loaded<T: ?Sized + Send + Sync + 'static>(
    cell: &tokio::sync::OnceCell<Arc<T>>,
    what: &'static str,
    load: impl FnOnce() -> Result<Arc<T>> + Send + 'static,
) -> Result<Arc<T>> {
    let part = cell
        .get_or_try_init(|| async {
            let started = std::time::Instant::now();
            let part = tokio::task::spawn_blocking(load).await.map_err(Error::internal)?.map_err(|e| {
                tracing::error!(error = %e.message, "{what} did not load");
                Error::unavailable(format!("{what} could not be loaded"), Duration::from_secs(60))
            })?;
            tracing::info!(ms = started.elapsed().as_millis() as u64, "{what} loaded");
            Ok::<_, Error>(part)
        })
        .await?;
    Ok(part.clone())
}
