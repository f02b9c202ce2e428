//! The embedded engine on a real model (SmolLM2 through llama.cpp): the loader, the GGUF's chat
//! template, the sampler, the KV cache, streaming, stop strings, length, JSON mode, cancellation
//! and the queue. `./selfcloud test` pulls the model and sets `SELFCLOUD_TEST_MODEL`.

mod common;

use common::{block_on, done, events, generation_of, text_of};
use selfcloud_core::ErrorCode;
use selfcloud_llm::engine::collect;
use selfcloud_llm::llama::{LlamaEngine, LlamaOptions};
use selfcloud_llm::openai::{FinishReason, Generation};
use selfcloud_llm::{Engine, Event};
use serde_json::{json, Value};
use std::path::PathBuf;

fn model() -> Option<PathBuf> {
    match std::env::var_os("SELFCLOUD_TEST_MODEL") {
        Some(p) => Some(p.into()),
        None if std::env::var_os("SELFCLOUD_TEST_REQUIRE_MODEL").is_some() => panic!("SELFCLOUD_TEST_MODEL is not set"),
        None => {
            eprintln!("skipped: SELFCLOUD_TEST_MODEL unset");
            None
        }
    }
}

fn engine(path: PathBuf, context_tokens: u32, queue: usize) -> LlamaEngine {
    let options = LlamaOptions {
        path,
        name: "smollm2".into(),
        context_tokens,
        slots: 1,
        queue,
        threads: 2,
        stalled_reader_ms: 5_000,
    };
    LlamaEngine::load(&options).unwrap()
}

fn generation(user: &str, extra: Value) -> Generation {
    let body = json!({
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
            {"role": "user", "content": user},
        ],
        "temperature": 0,
        "max_tokens": 24,
    });
    generation_of(body, extra)
}

const CAPITAL: &str = "What is the capital of France?";
/// A request greedy decoding answers at length (checked in the test, not assumed).
const STORY: &str = "Write a long story about a dragon who learns to bake bread.";

#[test]
fn greedy_answers_stream_in_pieces_and_the_next_turn_reuses_the_cache() {
    let Some(path) = model() else { return };
    let engine = engine(path, 2048, 4);
    assert_eq!(engine.model().id, "smollm2");

    let first = events(&engine, generation(CAPITAL, json!({})));
    let text = text_of(&first);
    assert!(text.contains("Paris"), "{text}");
    assert!(first.iter().filter(|e| matches!(e, Event::Delta(_))).count() > 1, "one piece: {text}");
    let (finish, completion, cache_n) = done(&first);
    assert!(matches!(finish, FinishReason::Stop | FinishReason::Length));
    assert!((1..=24).contains(&completion));
    assert_eq!(cache_n, 0, "a fresh slot holds nothing");

    let again = events(&engine, generation(CAPITAL, json!({})));
    assert_eq!(text_of(&again), text, "greedy is deterministic");
    assert!(done(&again).2 > 10, "the same prompt is served from the KV cache");

    // Another caller's identical prompt finds nothing cached: no caller learns from the cache
    // (its contents or its speed) what another asked.
    let as_other = |g: Generation| Generation { caller: "grant:other".into(), ..g };
    let other = events(&engine, as_other(generation(CAPITAL, json!({}))));
    assert_eq!(done(&other).2, 0, "another caller's prompt was served from the cache");
    assert_eq!(text_of(&other), text);
    assert!(done(&events(&engine, as_other(generation(CAPITAL, json!({}))))).2 > 10);
}

#[test]
fn stop_strings_length_and_json_mode() {
    let Some(path) = model() else { return };
    let engine = engine(path, 2048, 4);

    let short = events(&engine, generation(CAPITAL, json!({"max_tokens": 3})));
    assert_eq!(done(&short).0, FinishReason::Length);
    assert_eq!(done(&short).1, 3);

    let stopped = events(&engine, generation(CAPITAL, json!({"stop": ["Paris"]})));
    let text = text_of(&stopped);
    assert_eq!(done(&stopped).0, FinishReason::Stop);
    assert!(!text.contains("Paris") && !text.is_empty(), "{text}");

    let json_mode = generation(
        "Describe the city of Paris as JSON with the keys name and country.",
        json!({"response_format": {"type": "json_object"}, "max_tokens": 64}),
    );
    let (text, finish, _, _) = block_on(collect(engine.generate(json_mode).unwrap())).unwrap();
    let trimmed = text.trim();
    assert!(trimmed.starts_with('{'), "{text}");
    if finish == FinishReason::Stop {
        let value: Value = serde_json::from_str(trimmed).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(value.is_object());
    }
}

#[test]
fn a_client_that_goes_away_stops_its_generation_and_a_full_queue_says_429() {
    let Some(path) = model() else { return };
    let engine = engine(path, 2048, 1);

    // Uncancelled, the story runs to its limit: the check below could not pass by the story's end.
    let whole = events(&engine, generation(STORY, json!({"max_tokens": 200})));
    assert_eq!(done(&whole).0, FinishReason::Length, "{}", text_of(&whole));

    let before = engine.generated_tokens();
    let mut rx = engine.generate(generation(STORY, json!({"max_tokens": 200}))).unwrap();
    assert!(matches!(rx.blocking_recv(), Some(Event::Delta(_))));
    // One in a slot (it has sent a piece), one waiting: the next is refused.
    let waiting = engine.generate(generation(CAPITAL, json!({}))).unwrap();
    let refused = engine.generate(generation(CAPITAL, json!({}))).unwrap_err();
    assert_eq!((refused.code, refused.status().as_u16()), (ErrorCode::RateLimited, 429));
    assert!(refused.retry_after.is_some());
    drop(rx);
    // The waiting one runs next, and the abandoned story stopped within a few tokens.
    let answer = std::iter::from_fn({
        let mut waiting = waiting;
        move || waiting.blocking_recv()
    })
    .collect::<Vec<_>>();
    let spent_on_story = engine.generated_tokens() - before - done(&answer).1;
    assert!(spent_on_story < 16, "the story went on for {spent_on_story} tokens after its client left");
}

#[test]
fn what_the_engine_cannot_run_is_a_clear_error() {
    let Some(path) = model() else { return };
    // A prompt past the context.
    let small = engine(path, 64, 1);
    let long = "word ".repeat(200);
    let err = small.generate(generation(&long, json!({}))).unwrap_err();
    assert_eq!(err.status().as_u16(), 400);
    assert!(err.message.contains("context holds 64"), "{}", err.message);

    // A file that is not a model.
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    let options = LlamaOptions {
        path: junk,
        name: "junk".into(),
        context_tokens: 64,
        slots: 1,
        queue: 1,
        threads: 1,
        stalled_reader_ms: 5_000,
    };
    let err = LlamaEngine::load(&options).err().expect("junk loads");
    assert_eq!(err.status().as_u16(), 400, "{}", err.message);
    let missing = LlamaOptions { path: dir.path().join("absent.gguf"), ..options };
    assert_eq!(LlamaEngine::load(&missing).err().expect("absent loads").status().as_u16(), 404);
}

/// What holding an answer to a grammar costs, beside the same engine answering freely: decode
/// rate of 96 tokens, free, held to a JSON schema, and held to a demanded tool call (medians of
/// five). A measurement, not a check: `cargo test --test engine -- --ignored --nocapture`.
#[test]
#[ignore]
fn measure_constrained_decoding_against_free() {
    let Some(path) = model() else { return };
    let engine = engine(path, 2048, 4);
    let schema = json!({"type": "object", "properties": {"story": {"type": "string"}}, "required": ["story"]});
    let tool = json!([{"type": "function", "function": {"name": "tell", "parameters": schema}}]);
    let runs = [
        ("free", json!({})),
        (
            "json_schema",
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": schema}}}),
        ),
        ("tool call", json!({"tools": tool, "tool_choice": "required"})),
    ];
    for (name, extra) in runs {
        let mut extra = extra;
        extra["max_tokens"] = json!(96);
        extra["temperature"] = json!(0.8);
        let mut rates: Vec<f64> = (0..5)
            .map(|seed| {
                extra["seed"] = json!(seed);
                let answer = events(&engine, generation(STORY, extra.clone()));
                match answer.last() {
                    Some(Event::Done { timings, .. }) => timings.predicted_per_second,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        println!("{name}: {:.1} tok/s (min {:.1}, max {:.1})", rates[2], rates[0], rates[4]);
    }
}
