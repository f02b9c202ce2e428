//! `POST /v1/llm/embeddings`, as OpenAI's clients send it and read it: the request checked into
//! the texts to embed, and the answer written back (floats, or base64 of little-endian f32s,
//! which OpenAI's Python client asks for by default).

use base64::Engine as _;
use selfcloud_core::Error;
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
    /// Token arrays, which OpenAI also takes: refused (the tokens of another tokenizer mean
    /// nothing to this model).
    Other(Value),
}

#[derive(Deserialize, Debug)]
pub struct EmbeddingsRequest {
    pub input: Input,
    pub model: Option<String>,
    pub encoding_format: Option<String>,
    pub dimensions: Option<usize>,
    pub user: Option<String>,
}

/// What the engine embeds, and how the answer is written.
#[derive(Debug, PartialEq)]
pub struct Embedding {
    pub texts: Vec<String>,
    pub base64: bool,
}

impl EmbeddingsRequest {
    /// The texts, checked: at least one and at most `max_inputs`, none empty; `dimensions` only
    /// as the model's own (its vectors are not truncated).
    pub fn validate(self, max_inputs: usize, dimensions: usize) -> Result<Embedding, Error> {
        let texts = match self.input {
            Input::One(text) => vec![text],
            Input::Many(texts) => texts,
            Input::Other(_) => return Err(Error::invalid("`input` must be a string or a list of strings")),
        };
        if texts.is_empty() || texts.len() > max_inputs {
            return Err(Error::invalid(format!("`input` must hold 1 to {max_inputs} texts")));
        }
        if let Some(i) = texts.iter().position(|t| t.trim().is_empty()) {
            return Err(Error::invalid(format!("`input[{i}]` is empty")));
        }
        if texts.iter().any(|t| t.contains('\0')) {
            return Err(Error::invalid("a text holds a NUL character"));
        }
        if self.dimensions.is_some_and(|d| d != dimensions) {
            return Err(Error::invalid(format!("`dimensions`: this model's vectors have {dimensions}")));
        }
        let base64 = match self.encoding_format.as_deref() {
            None | Some("float") => false,
            Some("base64") => true,
            Some(other) => return Err(Error::invalid(format!("`encoding_format` {other:?}: float or base64"))),
        };
        Ok(Embedding { texts, base64 })
    }
}

/// The answer, in OpenAI's `list` of `embedding` objects.
pub fn answer(model: &str, vectors: &[Vec<f32>], tokens: u64, base64: bool) -> Value {
    let data: Vec<Value> = vectors
        .iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                json!(base64::engine::general_purpose::STANDARD.encode(bytes))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    json!({
        "object": "list", "data": data, "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_core::ErrorCode;

    fn parse(body: Value) -> Result<Embedding, Error> {
        serde_json::from_value::<EmbeddingsRequest>(body).unwrap().validate(4, 3)
    }

    #[test]
    fn one_text_or_a_list_and_either_encoding() {
        assert_eq!(parse(json!({"input": "hi"})).unwrap(), Embedding { texts: vec!["hi".into()], base64: false });
        let many = parse(json!({"input": ["a", "b"], "encoding_format": "base64", "dimensions": 3})).unwrap();
        assert_eq!(many, Embedding { texts: vec!["a".into(), "b".into()], base64: true });
    }

    #[test]
    fn what_is_not_supported_is_a_clear_400() {
        for (body, says) in [
            (json!({"input": [1, 2, 3]}), "`input`"),
            (json!({"input": []}), "1 to 4"),
            (json!({"input": ["a", "b", "c", "d", "e"]}), "1 to 4"),
            (json!({"input": ["a", " "]}), "`input[1]`"),
            (json!({"input": "a\u{0}b"}), "NUL"),
            (json!({"input": "a", "dimensions": 2}), "have 3"),
            (json!({"input": "a", "encoding_format": "int8"}), "float or base64"),
        ] {
            let e = parse(body.clone()).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest, "{body}");
            assert!(e.message.contains(says), "{body}: {}", e.message);
        }
    }

    #[test]
    fn base64_is_little_endian_f32s() {
        let a = answer("m", &[vec![1.0, -0.5]], 7, true);
        let bytes =
            base64::engine::general_purpose::STANDARD.decode(a["data"][0]["embedding"].as_str().unwrap()).unwrap();
        let back: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
        assert_eq!(back, [1.0, -0.5]);
        assert_eq!(a["usage"], json!({"prompt_tokens": 7, "total_tokens": 7}));
        let f = answer("m", &[vec![0.25]], 1, false);
        assert_eq!((f["object"].as_str(), f["data"][0]["index"].as_u64()), (Some("list"), Some(0)));
        assert_eq!(f["data"][0]["embedding"], json!([0.25]));
    }
}
