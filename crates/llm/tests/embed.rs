//! The embedding engine on the real model: all-MiniLM-L6-v2 as `model pull` converts it, run by
//! llama.cpp. `./selfcloud test` pulls it and sets `SELFCLOUD_TEST_EMBED_MODEL`.

use selfcloud_llm::budget::{Allowance, Meter};
use selfcloud_llm::embed::{EmbedOptions, Embedded, Embedder};
use std::path::PathBuf;

fn model() -> Option<PathBuf> {
    match std::env::var_os("SELFCLOUD_TEST_EMBED_MODEL") {
        Some(p) => Some(p.into()),
        None if std::env::var_os("SELFCLOUD_TEST_REQUIRE_MODEL").is_some() => {
            panic!("SELFCLOUD_TEST_EMBED_MODEL is not set")
        }
        None => {
            eprintln!("skipped: SELFCLOUD_TEST_EMBED_MODEL unset");
            None
        }
    }
}

fn embedder() -> Option<Embedder> {
    let options =
        EmbedOptions { path: model()?, name: "all-minilm-l6-v2".into(), input_tokens: 256, queue: 4, threads: 2 };
    Some(Embedder::load(&options).unwrap())
}

fn embed(e: &Embedder, texts: &[&str]) -> Embedded {
    e.embed(texts.iter().map(|t| t.to_string()).collect(), None, Meter::default())
        .unwrap()
        .blocking_recv()
        .unwrap()
        .unwrap()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The first components of each text's vector and its token count, from a plain NumPy BERT over
/// the same checkpoint with Hugging Face's own tokenizer (sentence-transformers' pipeline: mean
/// pooling, then unit length).
const REFERENCE: [(&str, usize, [f32; 6]); 2] = [
    ("Paris is the capital of France.", 9, [0.1007, 0.03715, 0.02823, -0.04167, 0.06719, -0.04774]),
    ("Héllo, WORLD! naïve café—ok", 10, [0.01718, -0.01184, -0.00519, 0.014, 0.03205, -0.03981]),
];

#[test]
fn vectors_match_the_reference_implementation() {
    let Some(e) = embedder() else { return };
    assert_eq!(e.dimensions(), 384);
    for (text, tokens, head) in REFERENCE {
        let out = embed(&e, &[text]);
        assert_eq!(out.tokens, tokens as u64, "{text}: the tokenizer differs from Hugging Face's");
        let v = &out.vectors[0];
        assert_eq!(v.len(), 384);
        assert!((dot(v, v) - 1.0).abs() < 1e-4, "unit length");
        for (got, want) in v.iter().zip(head) {
            assert!((got - want).abs() < 2e-3, "{text}: {:?} vs {head:?}", &v[..6]);
        }
    }
}

#[test]
fn texts_embedded_together_are_embedded_as_if_alone() {
    let Some(e) = embedder() else { return };
    let texts = ["My flight to Lisbon leaves on May 3.", "Buy milk and eggs.", "Planning the trip went well."];
    let together = embed(&e, &texts);
    for (i, text) in texts.iter().enumerate() {
        let alone = embed(&e, &[text]);
        assert!(dot(&together.vectors[i], &alone.vectors[0]) > 0.9999, "text {i} changed in company");
    }
    // More texts than one batch takes, in order.
    let many: Vec<String> = (0..20).map(|i| format!("note number {i} about the garden")).collect();
    let out = e.embed(many.clone(), None, Meter::default()).unwrap().blocking_recv().unwrap().unwrap();
    assert_eq!(out.vectors.len(), 20);
    let seventh = embed(&e, &[&many[7]]);
    assert!(dot(&out.vectors[7], &seventh.vectors[0]) > 0.9999);
}

#[test]
fn meaning_decides_the_distance() {
    let Some(e) = embedder() else { return };
    let out = embed(&e, &["When does my plane take off?", "My flight to Lisbon leaves at 9am.", "Buy milk and bread."]);
    let (question, flight, milk) = (&out.vectors[0], &out.vectors[1], &out.vectors[2]);
    assert!(dot(question, flight) > dot(question, milk) + 0.2, "{} vs {}", dot(question, flight), dot(question, milk));
}

#[test]
fn a_long_text_is_cut_and_specials_in_text_are_only_letters() {
    let Some(e) = embedder() else { return };
    let long = "garden ".repeat(1000);
    assert_eq!(embed(&e, &[&long]).tokens, 256);
    // "[SEP]" written in a text is five characters' worth of word pieces, not the separator.
    assert!(embed(&e, &["[SEP]"]).tokens > 3);
}

#[test]
fn texts_past_the_budget_are_refused_whole_and_what_is_computed_is_metered() {
    let Some(e) = embedder() else { return };
    let texts = vec!["Paris is the capital of France.".to_owned(); 3]; // 9 tokens each
    let left = |tokens| Some(Allowance { tokens, resets_in: std::time::Duration::from_secs(5) });
    let meter = Meter::default();
    let refused = e.embed(texts.clone(), left(26), meter.clone()).unwrap().blocking_recv().unwrap().unwrap_err();
    assert_eq!(refused.code, selfcloud_core::ErrorCode::BudgetExceeded, "{}", refused.message);
    assert_eq!(meter.spent(), 0, "nothing computed, nothing billed");
    let out = e.embed(texts, left(27), meter.clone()).unwrap().blocking_recv().unwrap().unwrap();
    assert_eq!((out.tokens, meter.spent()), (27, 27));
}
