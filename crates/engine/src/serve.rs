//! One instance's channel: HTTP/2, a stream per generation (`llm::channel`).

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use selfcloud_core::Error;
use selfcloud_llm::batched::BatchedEngine;
use selfcloud_llm::budget::Meter;
use selfcloud_llm::channel::{Ask, Frame, WireError, GENERATE_PATH, MODEL_PATH};
use selfcloud_llm::Engine;
use std::convert::Infallible;
use std::sync::Arc;

type Body = UnsyncBoxBody<Bytes, Infallible>;

/// The most bytes one ask may be: the prompt's bound (`openai::MAX_PROMPT_BYTES`) and room for
/// its JSON.
const MAX_ASK_BYTES: usize = 1024 * 1024;
/// Generations one channel may have under way; the engine's places and queue bound them again.
const MAX_STREAMS: u32 = 64;

/// Serves `tenant`'s channel until the instance closes it (or a newer one replaces it).
pub async fn channel(stream: tokio::net::UnixStream, tenant: String, engine: Arc<BatchedEngine>) {
    let service = hyper::service::service_fn(move |request| answer(request, tenant.clone(), engine.clone()));
    let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .max_concurrent_streams(MAX_STREAMS)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(e) = served {
        tracing::debug!(error = %e, "a channel ended");
    }
}

async fn answer(
    request: Request<Incoming>,
    tenant: String,
    engine: Arc<BatchedEngine>,
) -> Result<Response<Body>, Infallible> {
    Ok(match (request.method(), request.uri().path()) {
        (&Method::GET, MODEL_PATH) => json(StatusCode::OK, serde_json::to_vec(engine.model()).expect("serializes")),
        (&Method::POST, GENERATE_PATH) => generate(request, tenant, engine).await.unwrap_or_else(|e| error(&e)),
        _ => error(&Error::not_found("no such call on the engine's channel")),
    })
}

async fn generate(
    request: Request<Incoming>,
    tenant: String,
    engine: Arc<BatchedEngine>,
) -> Result<Response<Body>, Error> {
    let body = Limited::new(request.into_body(), MAX_ASK_BYTES)
        .collect()
        .await
        .map_err(|_| Error::invalid("the ask is too long or broke off"))?
        .to_bytes();
    let ask: Ask = serde_json::from_slice(&body).map_err(|e| Error::invalid(format!("a malformed ask: {e}")))?;
    let meter = Meter::default();
    let generation = ask.into_generation(tenant, meter.clone());
    // Templating and tokenizing a long prompt takes milliseconds: off the async threads.
    let events = tokio::task::spawn_blocking(move || engine.generate(generation)).await.map_err(Error::internal)??;
    // One line per event, with what the generation has spent by then. Dropping the body (the
    // instance reset the stream, or the channel died) drops the receiver, which ends the
    // sequence at its next token.
    let frames = futures_util::stream::unfold((events, meter), |(mut events, meter)| async move {
        let event = events.recv().await?;
        let line = Frame::of(event, meter.spent()).line();
        Some((Ok::<_, Infallible>(hyper::body::Frame::data(Bytes::from(line))), (events, meter)))
    });
    let mut response = Response::new(StreamBody::new(frames).boxed_unsync());
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/x-ndjson"));
    Ok(response)
}

fn json(status: StatusCode, body: Vec<u8>) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(body)).boxed_unsync());
    *response.status_mut() = status;
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    response
}

fn error(e: &Error) -> Response<Body> {
    if let Some(detail) = &e.detail {
        tracing::warn!(detail, "a generation failed");
    }
    json(e.status(), serde_json::to_vec(&WireError::of(e)).expect("serializes"))
}
