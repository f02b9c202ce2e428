//! What the engine suites share: a request from a JSON body, and reading an answer's events.
#![allow(dead_code)] // each suite uses its own part

use selfcloud_llm::openai::{ChatRequest, FinishReason, Generation, RequestLimits};
use selfcloud_llm::{Engine, Event, Events};
use serde_json::Value;

/// The checked generation of `body` with `extra`'s fields over it.
pub fn generation_of(mut body: Value, extra: Value) -> Generation {
    body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
    serde_json::from_value::<ChatRequest>(body).unwrap().validate(RequestLimits::default()).unwrap()
}

/// Every event of one answer, in order.
pub fn receive(mut rx: Events) -> Vec<Event> {
    std::iter::from_fn(move || rx.blocking_recv()).collect()
}

/// Every event of one generation, in order.
pub fn events(engine: &impl Engine, g: Generation) -> Vec<Event> {
    receive(engine.generate(g).unwrap())
}

pub fn text_of(events: &[Event]) -> String {
    events.iter().filter_map(|e| if let Event::Delta(t) = e { Some(t.as_str()) } else { None }).collect()
}

/// The finish reason, completion tokens and cached prompt tokens of an answer that ended.
pub fn done(events: &[Event]) -> (FinishReason, u64, u64) {
    match events.last() {
        Some(Event::Done { finish, usage, timings }) => (*finish, usage.completion_tokens, timings.cache_n),
        other => panic!("the last event is not Done: {other:?}"),
    }
}

pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
}
