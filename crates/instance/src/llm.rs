//! The instance's LLM part: its engine, loaded on the first call that needs it (an instance that
//! is only ever asked for records never maps the model), then kept while the instance is awake.

use crate::protocol::LlmSettings;
use selfcloud_core::{Error, Result};
use selfcloud_llm::llama::LlamaEngine;
use selfcloud_llm::Engine;
use std::sync::Arc;
use std::time::Duration;

pub struct Llm {
    settings: Option<LlmSettings>,
    engine: tokio::sync::OnceCell<Arc<dyn Engine>>,
}

impl Llm {
    pub fn new(settings: Option<LlmSettings>) -> Self {
        Llm { settings, engine: Default::default() }
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
        let engine = self
            .engine
            .get_or_try_init(|| async {
                let options = settings.engine.clone();
                let started = std::time::Instant::now();
                let engine = tokio::task::spawn_blocking(move || LlamaEngine::load(&options))
                    .await
                    .map_err(Error::internal)?
                    // The server's model is at fault, not the caller: 503, the path in the log only.
                    .map_err(|e| {
                        tracing::error!(error = %e.message, "the model did not load");
                        Error::unavailable("the assistant's model could not be loaded", Duration::from_secs(60))
                    })?;
                tracing::info!(model = %engine.model().id, ms = started.elapsed().as_millis() as u64, "model loaded");
                Ok::<_, Error>(Arc::new(engine) as Arc<dyn Engine>)
            })
            .await?;
        Ok(engine.clone())
    }
}
