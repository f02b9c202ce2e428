//! The assistant's retrieval: which of the owner's records a question is about, and the prompt
//! that hands them to the model with their names, so the answer can cite them.
//!
//! Ranking is hybrid: BM25 over the words of each record's text values (it needs no model and
//! finds the records that share the question's rare words) and, when the instance has an
//! embedding model, the cosine similarity of the record's vector to the question's (it finds the
//! records that say the same in other words); the two lists are fused by reciprocal rank. Both
//! give the same sources for the same question and records.

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

/// The least cosine similarity for a record to count as being about the question (all-MiniLM's
/// unrelated sentences score about 0 to 0.2, paraphrases 0.45 and more).
pub const MIN_SIMILARITY: f32 = 0.3;

/// The indexes of the passages whose vectors are nearest `query` (unit vectors: the dot product
/// is the cosine), best first, at most `k`, only those at least [`MIN_SIMILARITY`] alike.
/// A passage without a vector (not indexed yet) is left to BM25.
pub fn nearest(query: &[f32], vectors: &[Option<&[f32]>], k: usize) -> Vec<(usize, f32)> {
    let mut scored: Vec<(usize, f32)> = vectors
        .iter()
        .enumerate()
        .filter_map(|(i, v)| v.map(|v| (i, v.iter().zip(query).map(|(a, b)| a * b).sum::<f32>())))
        .filter(|(_, s)| *s >= MIN_SIMILARITY)
        .collect();
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

/// Reciprocal rank fusion of ranked lists: each passage scores the sum of 1 / (60 + its rank)
/// over the lists it is in, so one that both find comes first and neither list's scale matters.
pub fn fuse(lists: &[Vec<usize>], k: usize) -> Vec<(usize, f64)> {
    const K: f64 = 60.0;
    let mut scores: HashMap<usize, f64> = HashMap::new();
    for list in lists {
        for (rank, &i) in list.iter().enumerate() {
            *scores.entry(i).or_insert(0.0) += 1.0 / (K + rank as f64 + 1.0);
        }
    }
    let mut fused: Vec<(usize, f64)> = scores.into_iter().collect();
    fused.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    fused.truncate(k);
    fused
}

/// The best `k` passages for a question, by its words and, given its vector and the passages'
/// (`None` for one not embedded), by its meaning: the two rankings fused.
pub fn hybrid(
    question: &str,
    question_vector: Option<&[f32]>,
    passages: &[Passage],
    vectors: &[Option<Vec<f32>>],
    k: usize,
) -> Vec<(usize, f64)> {
    let by_words = rank(question, passages, k).into_iter().map(|r| r.0).collect();
    let by_meaning = question_vector.map_or_else(Vec::new, |q| {
        let vectors: Vec<Option<&[f32]>> = vectors.iter().map(Option::as_deref).collect();
        nearest(q, &vectors, k).into_iter().map(|r| r.0).collect()
    });
    fuse(&[by_words, by_meaning], k)
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
        // In the record's own order (serde_json keeps it: `preserve_order`, which llguidance needs).
        assert_eq!(text, "title: Trip legs: to: Lisbon day: 3");
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
    fn nearest_keeps_the_alike_and_skips_the_unindexed() {
        let (q, near, far, opposite) = ([1.0, 0.0], [0.8, 0.6], [0.1, 0.995], [-1.0, 0.0]);
        let vectors = [Some(&far[..]), None, Some(&near[..]), Some(&opposite[..]), Some(&q[..])];
        assert_eq!(nearest(&q, &vectors, 5), vec![(4, 1.0), (2, 0.8)]);
        assert_eq!(nearest(&q, &vectors, 1), vec![(4, 1.0)]);
    }

    #[test]
    fn what_both_rankings_find_comes_first() {
        // 7 is second in both lists, 1 and 5 each first in one: 7 wins, then the tie by index.
        assert_eq!(fuse(&[vec![1, 7], vec![5, 7]], 3).iter().map(|f| f.0).collect::<Vec<_>>(), [7, 1, 5]);
        assert_eq!(fuse(&[vec![2, 3], vec![]], 1).iter().map(|f| f.0).collect::<Vec<_>>(), [2]);
        assert!(fuse(&[vec![], vec![]], 3).is_empty());
    }

    #[test]
    fn hybrid_ranking_finds_by_words_by_meaning_and_best_by_both() {
        let passages = vec![
            passage("notes", "groceries", json!({"text": "Buy milk"})),
            passage("notes", "trip", json!({"text": "My flight to Lisbon"})),
            passage("notes", "plane", json!({"text": "Boarding at gate 9"})),
        ];
        // The question's vector is nearest the boarding note, then the trip; far from the milk.
        let vectors = vec![Some(vec![0.0, 1.0]), Some(vec![0.6, 0.8]), Some(vec![1.0, 0.0])];
        let found = |q: Option<&[f32]>| -> Vec<usize> {
            hybrid("when is my flight", q, &passages, &vectors, 3).into_iter().map(|r| r.0).collect()
        };
        assert_eq!(found(None), [1], "by words alone");
        assert_eq!(found(Some(&[0.995, 0.0999])), [1, 2], "the trip, found both ways, before the boarding");
        assert_eq!(hybrid("when does it leave", Some(&[1.0, 0.0]), &passages, &vectors, 3)[0].0, 2, "by meaning alone");
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
