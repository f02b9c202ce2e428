//! The shared engine seen from an instance: an [`Engine`] whose generations run in the engine
//! process (`selfcloud engine run`), over the channel control's broker hands in
//! (`llm::channel` says what crosses). The prompt and answer cross only that channel; the
//! instance still bills every token, from what each frame says was spent. When the engine dies
//! the answers under way end with 503 and `Retry-After`, and the next call asks the broker for
//! a channel to the engine that replaced it.

use crate::broker::{Broker, HttpChannel};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use selfcloud_core::{Error, Result};
use selfcloud_llm::channel::{self, Ask, Frame, WireError};
use selfcloud_llm::engine::{Events, ModelInfo};
use selfcloud_llm::openai::Generation;
use selfcloud_llm::{Engine, Event};
use std::sync::Arc;
use std::time::Duration;

use crate::protocol::broker::Channel;

/// Events an answer holds for a caller slow to read (then the channel's flow control holds the
/// engine's sequence back, which ends it if the caller stalls too long).
const EVENTS_BUFFER: usize = 64;

/// What a caller is told while the engine restarts.
fn restarting() -> Error {
    Error::unavailable("the shared LLM engine is restarting; try again shortly", Duration::from_secs(2))
}

pub struct RemoteEngine {
    info: ModelInfo,
    channel: HttpChannel,
    runtime: tokio::runtime::Handle,
}

impl RemoteEngine {
    /// Asks the broker for the engine's channel and the engine for its model.
    pub async fn connect(broker: Arc<Broker>) -> Result<RemoteEngine> {
        let mut engine = RemoteEngine {
            info: ModelInfo { id: String::new(), context_tokens: 0, size_bytes: 0 },
            channel: HttpChannel::new(broker, Channel::LlmEngine, restarting),
            runtime: tokio::runtime::Handle::current(),
        };
        let request = http::Request::get(channel::MODEL_PATH).body(Full::default()).map_err(Error::internal)?;
        let answer = engine.channel.send(request).await?;
        let body = Limited::new(answer.into_body(), 64 * 1024).collect().await.map_err(|_| restarting())?;
        engine.info = channel::parse_model(&body.to_bytes())?;
        Ok(engine)
    }

    async fn start(&self, generation: Generation) -> Result<Events> {
        let body = serde_json::to_vec(&Ask::of(&generation)).map_err(Error::internal)?;
        let request = http::Request::post(channel::GENERATE_PATH)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))
            .map_err(Error::internal)?;
        let answer = self.channel.send(request).await?;
        if !answer.status().is_success() {
            let body = Limited::new(answer.into_body(), 64 * 1024).collect().await.map_err(|_| restarting())?;
            let wire: WireError = serde_json::from_slice(&body.to_bytes())
                .map_err(|e| Error::internal(format!("the engine's error is malformed: {e}")))?;
            return Err(wire.into_error());
        }
        let (events, rx) = tokio::sync::mpsc::channel(EVENTS_BUFFER);
        let meter = generation.meter;
        tokio::spawn(async move {
            let (mut body, mut buf, mut billed) = (answer.into_body(), Vec::new(), 0u64);
            loop {
                let frame = match body.frame().await {
                    Some(Ok(frame)) => frame,
                    // The engine died or broke the channel: what was sent stands.
                    Some(Err(_)) | None => {
                        let _ = events.send(Event::Failed(restarting())).await;
                        return;
                    }
                };
                let Ok(data) = frame.into_data() else { continue };
                buf.extend_from_slice(&data);
                if buf.len() > channel::MAX_FRAME_BYTES {
                    let _ = events.send(Event::Failed(Error::internal("the engine sent a frame past its bound"))).await;
                    return;
                }
                for line in channel::take_lines(&mut buf) {
                    let (event, spent) = match Frame::parse(&line) {
                        Ok(frame) => frame.into_event(),
                        Err(e) => (Event::Failed(e), billed),
                    };
                    meter.add(spent.saturating_sub(billed));
                    billed = billed.max(spent);
                    let last = !matches!(event, Event::Delta(_));
                    // A caller gone: dropping the body resets the stream, which ends the
                    // sequence in the engine.
                    if events.send(event).await.is_err() || last {
                        return;
                    }
                }
            }
        });
        Ok(rx)
    }
}

impl Engine for RemoteEngine {
    fn model(&self) -> &ModelInfo {
        &self.info
    }

    /// Called off the async threads (as every engine's `generate` is): waits for the engine to
    /// take the generation or refuse it, so a 429 or a 400 is the call's answer, not a stream's.
    fn generate(&self, generation: Generation) -> Result<Events> {
        self.runtime.block_on(self.start(generation))
    }
}
