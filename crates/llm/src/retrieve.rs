//! The assistant's retrieval: which of the owner's records a question is about, and the prompt
//! that hands them to the model with their names, so the answer can cite them.
//!
//! Ranking is BM25 over the words of each record's text values, computed over the records the
//! assistant may read; it needs no model and gives the same sources for the same question.

use crate::openai::Message;
use std::collections::HashMap;

/// One record as the assistant reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passage {
    pub collection: String,
    pub key: String,
    /// The record's string values, joined; what is ranked and quoted.
    pub text: String,
}

/// The text of a JSON record: its string values (and numbers), depth first, keys included so a
/// field's name can match (`{"flight": "May 3"}`).
pub fn record_text(value: &serde_json::Value) -> String {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Number(n) => out.push(n.to_string()),
            serde_json::Value::Array(items) => items.iter().for_each(|i| walk(i, out)),
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    // A field's name only when its value says something.
                    let at = out.len();
                    walk(v, out);
                    if out.len() > at {
                        out.insert(at, format!("{k}:"));
                    }
                }
            }
            _ => {}
        }
    }
    let mut parts = Vec::new();
    walk(value, &mut parts);
    parts.join(" ")
}

fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| w.len() > 1)
        .map(str::to_lowercase)
        .filter(|w| !STOP.contains(&w.as_str()))
}

/// Words too common to tell records apart.
const STOP: &[&str] = &[
    "the", "a", "an", "is", "are", "was", "of", "to", "in", "on", "at", "and", "or", "my", "me", "what", "when",
    "where", "who", "how", "do", "does", "did", "for", "it", "its", "be", "with", "i", "you", "your", "this", "that",
];

/// The indexes of the passages that best match `query`, best first, at most `k`, only those that
/// share a word with it.
pub fn rank(query: &str, passages: &[Passage], k: usize) -> Vec<(usize, f64)> {
    const K1: f64 = 1.2;
    const B: f64 = 0.75;
    let docs: Vec<HashMap<String, usize>> = passages
        .iter()
        .map(|p| {
            let mut tf = HashMap::new();
            for w in words(&p.text).chain(words(&p.key)).chain(words(&p.collection)) {
                *tf.entry(w).or_insert(0) += 1;
            }
            tf
        })
        .collect();
    let lengths: Vec<usize> = docs.iter().map(|d| d.values().sum()).collect();
    let average = lengths.iter().sum::<usize>() as f64 / lengths.len().max(1) as f64;
    let mut terms: Vec<String> = words(query).collect();
    terms.sort();
    terms.dedup();
    let n = docs.len() as f64;
    // Each term's inverse document frequency, counted once over all documents.
    let idf: HashMap<&String, f64> = terms
        .iter()
        .map(|t| {
            let with = docs.iter().filter(|d| d.contains_key(t)).count() as f64;
            (t, ((n - with + 0.5) / (with + 0.5) + 1.0).ln())
        })
        .collect();
    let mut scored: Vec<(usize, f64)> = docs
        .iter()
        .enumerate()
        .map(|(i, tf)| {
            let score = terms
                .iter()
                .filter_map(|t| tf.get(t).map(|&f| (t, f as f64)))
                .map(|(t, f)| idf[t] * f * (K1 + 1.0) / (f + K1 * (1.0 - B + B * lengths[i] as f64 / average.max(1.0))))
                .sum::<f64>();
            (i, score)
        })
        .filter(|(_, s)| *s > 0.0)
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

/// The longest start of `text` of at most `max_bytes` that ends on a character boundary.
pub fn prefix(text: &str, max_bytes: usize) -> &str {
    let mut end = max_bytes.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Longest piece of one record quoted to the model, in bytes.
pub const QUOTE_BYTES: usize = 600;

/// The conversation the model sees: its instructions, the sources numbered with their names,
/// then the question.
pub fn prompt(question: &str, sources: &[&Passage]) -> Vec<Message> {
    // Short and plain: small models follow a short instruction and copy from the notes; a
    // longer one (measured on SmolLM2-135M) makes them repeat the question instead.
    let mut system = String::from(
        "You are a helpful assistant. Answer the question using only these notes of the user, \
         and cite the note number like [1]. If they do not hold the answer, say so.\n",
    );
    for (n, p) in sources.iter().enumerate() {
        let quote = prefix(&p.text, QUOTE_BYTES);
        system.push_str(&format!("\n[{}] ({}/{}) {}", n + 1, p.collection, p.key, quote));
    }
    vec![
        Message { role: "system".into(), content: system },
        Message { role: "user".into(), content: question.to_owned() },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn passage(collection: &str, key: &str, value: serde_json::Value) -> Passage {
        Passage { collection: collection.into(), key: key.into(), text: record_text(&value) }
    }

    #[test]
    fn a_records_text_is_its_values_and_field_names() {
        let text = record_text(&json!({"title": "Trip", "legs": [{"to": "Lisbon", "day": 3}], "done": false}));
        assert_eq!(text, "legs: day: 3 to: Lisbon title: Trip");
    }

    #[test]
    fn the_record_that_shares_the_rare_words_ranks_first() {
        let passages = vec![
            passage("notes", "groceries", json!({"text": "Buy milk, bread and eggs on the way home"})),
            passage("notes", "trip", json!({"text": "My flight to Lisbon leaves on May 3 at 9am from gate B12"})),
            passage("notes", "work", json!({"text": "The quarterly report is due on the way to May"})),
        ];
        let ranked = rank("When does my flight to Lisbon leave?", &passages, 3);
        assert_eq!(ranked.first().map(|r| r.0), Some(1), "{ranked:?}");
        assert!(ranked.iter().all(|(i, _)| *i != 0), "nothing shared with the groceries: {ranked:?}");
        assert!(rank("What is the weather on Mars?", &passages, 3).is_empty());
        assert_eq!(rank("flight", &passages, 0), vec![]);
    }

    #[test]
    fn a_prefix_never_splits_a_character() {
        assert_eq!(prefix("caf\u{e9}", 4), "caf");
        assert_eq!(prefix("caf\u{e9}", 5), "caf\u{e9}");
        assert_eq!(prefix("ab", 10), "ab");
    }

    #[test]
    fn the_prompt_numbers_each_source_with_its_name_and_bounds_its_quote() {
        let long = passage("notes", "long", json!({"text": "é".repeat(1000)}));
        let trip = passage("notes", "trip", json!({"text": "Lisbon on May 3"}));
        let messages = prompt("When is my flight?", &[&trip, &long]);
        assert_eq!(messages.len(), 2);
        assert!(messages[0].content.contains("[1] (notes/trip) text: Lisbon on May 3"), "{}", messages[0].content);
        assert!(messages[0].content.contains("[2] (notes/long) "));
        assert!(messages[0].content.len() < 1000 + QUOTE_BYTES);
        assert_eq!(messages[1].content, "When is my flight?");
    }
}
