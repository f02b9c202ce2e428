//! A BERT sentence encoder as Hugging Face ships it (`model.safetensors`, `vocab.txt`,
//! `config.json`) turned into a GGUF file llama.cpp runs: the same f32 weights under llama.cpp's
//! tensor names, the WordPiece vocabulary in llama.cpp's form, and the encoder's shape, pooling
//! and normalizer in the metadata. The embeddings then run through the engine the chat model
//! already uses, with no second inference library in the build.

use crate::gguf::GgufWriter;
use selfcloud_core::Error;
use std::path::Path;

/// How the encoder's token vectors become one vector per text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pooling {
    Mean,
    Cls,
}

impl Pooling {
    /// llama.cpp's `LLAMA_POOLING_TYPE_*`.
    fn gguf(self) -> u32 {
        match self {
            Pooling::Mean => 1,
            Pooling::Cls => 2,
        }
    }
}

/// The checkpoint's files and what the catalog knows of it.
pub struct Bert<'a> {
    pub weights: &'a Path,
    pub vocab: &'a Path,
    pub config: &'a Path,
    pub name: &'a str,
    pub pooling: Pooling,
    /// The tokenizer lowercases and strips accents ("uncased" models).
    pub lowercase: bool,
}

/// The parts of `config.json` the conversion reads; a checkpoint that is not a plain BERT is
/// refused rather than converted into something that embeds wrongly.
#[derive(serde::Deserialize)]
struct Config {
    model_type: String,
    hidden_act: String,
    hidden_size: u32,
    intermediate_size: u32,
    num_hidden_layers: u32,
    num_attention_heads: u32,
    max_position_embeddings: u32,
    layer_norm_eps: f32,
    type_vocab_size: u32,
    vocab_size: usize,
    #[serde(default = "absolute")]
    position_embedding_type: String,
}

fn absolute() -> String {
    "absolute".into()
}

/// llama.cpp's name for a Hugging Face BERT tensor; `None` for what the encoder does not use
/// (the pooler head, the position-id buffer).
pub fn gguf_name(hf: &str) -> Option<String> {
    let hf = hf.strip_prefix("bert.").unwrap_or(hf);
    let fixed = match hf {
        "embeddings.word_embeddings.weight" => Some("token_embd.weight"),
        "embeddings.position_embeddings.weight" => Some("position_embd.weight"),
        "embeddings.token_type_embeddings.weight" => Some("token_types.weight"),
        "embeddings.LayerNorm.weight" => Some("token_embd_norm.weight"),
        "embeddings.LayerNorm.bias" => Some("token_embd_norm.bias"),
        _ => None,
    };
    if let Some(name) = fixed {
        return Some(name.to_owned());
    }
    let rest = hf.strip_prefix("encoder.layer.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (module, param) = part.rsplit_once('.')?;
    if param != "weight" && param != "bias" {
        return None;
    }
    let name = match module {
        "attention.self.query" => "attn_q",
        "attention.self.key" => "attn_k",
        "attention.self.value" => "attn_v",
        "attention.output.dense" => "attn_output",
        "attention.output.LayerNorm" => "attn_output_norm",
        "intermediate.dense" => "ffn_up",
        "output.dense" => "ffn_down",
        "output.LayerNorm" => "layer_output_norm",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}.{param}"))
}

/// A WordPiece token as llama.cpp's tokenizer holds it: a word's start carries a leading U+2581
/// (where WordPiece marks the continuation instead, with `##`); bracketed specials stay as they are.
pub fn phantom_space(token: &str) -> String {
    if token.starts_with('[') && token.ends_with(']') {
        token.to_owned()
    } else if let Some(rest) = token.strip_prefix("##") {
        rest.to_owned()
    } else {
        format!("\u{2581}{token}")
    }
}

/// llama.cpp's token types: 1 normal, 3 control (the specials a text never spells).
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const SPECIALS: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// Writes `out` (a GGUF file) from the checkpoint.
pub fn bert_to_gguf(bert: &Bert<'_>, out: &Path) -> Result<(), Error> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| Error::internal(format!("reading {}: {e}", p.display())));
    let config: Config = serde_json::from_slice(&read(bert.config)?)
        .map_err(|e| Error::internal(format!("{}: {e}", bert.config.display())))?;
    if config.model_type != "bert" || config.hidden_act != "gelu" || config.position_embedding_type != "absolute" {
        return Err(Error::internal(format!(
            "{} is a {} with {} activation and {} positions; only a plain BERT converts",
            bert.config.display(),
            config.model_type,
            config.hidden_act,
            config.position_embedding_type
        )));
    }
    let vocab_text = String::from_utf8(read(bert.vocab)?).map_err(|_| Error::internal("vocab.txt is not UTF-8"))?;
    let vocab: Vec<&str> = vocab_text.lines().collect();
    if vocab.len() != config.vocab_size {
        return Err(Error::internal(format!(
            "vocab.txt has {} tokens, config.json {}",
            vocab.len(),
            config.vocab_size
        )));
    }
    let id_of =
        |t: &str| vocab.iter().position(|v| *v == t).ok_or_else(|| Error::internal(format!("vocab.txt has no {t}")));

    let weights = read(bert.weights)?;
    let tensors = safetensors::SafeTensors::deserialize(&weights)
        .map_err(|e| Error::internal(format!("{}: {e}", bert.weights.display())))?;
    // f32 copies: the file's bytes are not aligned for f32, and ggml writes from these.
    let mut converted: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut names = tensors.names();
    names.sort();
    for hf in names {
        let Some(name) = gguf_name(hf) else { continue };
        let view = tensors.tensor(hf).map_err(|e| Error::internal(format!("{hf}: {e}")))?;
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::internal(format!("{hf} is {:?}; only f32 checkpoints convert", view.dtype())));
        }
        let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        // PyTorch's [rows, cols] is ggml's [cols, rows]: the same bytes.
        let dims = view.shape().iter().rev().copied().collect();
        converted.push((name, dims, values));
    }
    let expected = 5 + 16 * config.num_hidden_layers as usize;
    if converted.len() != expected {
        return Err(Error::internal(format!(
            "{} holds {} encoder tensors, not {expected}",
            bert.weights.display(),
            converted.len()
        )));
    }

    let mut w = GgufWriter::new()?;
    w.set_str("general.architecture", "bert")?;
    w.set_str("general.name", bert.name)?;
    w.set_u32("general.file_type", 0)?; // all f32
    w.set_u32("bert.context_length", config.max_position_embeddings)?;
    w.set_u32("bert.embedding_length", config.hidden_size)?;
    w.set_u32("bert.feed_forward_length", config.intermediate_size)?;
    w.set_u32("bert.block_count", config.num_hidden_layers)?;
    w.set_u32("bert.attention.head_count", config.num_attention_heads)?;
    w.set_f32("bert.attention.layer_norm_epsilon", config.layer_norm_eps)?;
    w.set_bool("bert.attention.causal", false)?;
    w.set_u32("bert.pooling_type", bert.pooling.gguf())?;
    w.set_str("tokenizer.ggml.model", "bert")?;
    w.set_bool("tokenizer.ggml.normalizer.lowercase", bert.lowercase)?;
    w.set_bool("tokenizer.ggml.normalizer.strip_accents", bert.lowercase)?;
    w.set_strings("tokenizer.ggml.tokens", &vocab.iter().map(|t| phantom_space(t)).collect::<Vec<_>>())?;
    let types: Vec<i32> = vocab.iter().map(|t| if SPECIALS.contains(t) { CONTROL } else { NORMAL }).collect();
    w.set_i32s("tokenizer.ggml.token_type", &types)?;
    w.set_u32("tokenizer.ggml.token_type_count", config.type_vocab_size)?;
    for (key, token) in [
        ("tokenizer.ggml.bos_token_id", "[CLS]"),
        ("tokenizer.ggml.cls_token_id", "[CLS]"),
        ("tokenizer.ggml.seperator_token_id", "[SEP]"),
        ("tokenizer.ggml.unknown_token_id", "[UNK]"),
        ("tokenizer.ggml.padding_token_id", "[PAD]"),
        ("tokenizer.ggml.mask_token_id", "[MASK]"),
    ] {
        w.set_u32(key, id_of(token)? as u32)?;
    }
    for (name, dims, values) in &converted {
        w.add_f32(name, dims, values)?;
    }
    w.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tensor_names_are_llama_cpps() {
        assert_eq!(gguf_name("embeddings.word_embeddings.weight").as_deref(), Some("token_embd.weight"));
        assert_eq!(gguf_name("bert.embeddings.LayerNorm.bias").as_deref(), Some("token_embd_norm.bias"));
        assert_eq!(
            gguf_name("encoder.layer.5.attention.output.LayerNorm.weight").as_deref(),
            Some("blk.5.attn_output_norm.weight")
        );
        assert_eq!(gguf_name("encoder.layer.0.output.dense.bias").as_deref(), Some("blk.0.ffn_down.bias"));
        assert_eq!(gguf_name("encoder.layer.1.intermediate.dense.weight").as_deref(), Some("blk.1.ffn_up.weight"));
        for unused in ["pooler.dense.weight", "embeddings.position_ids", "encoder.layer.x.output.dense.weight"] {
            assert_eq!(gguf_name(unused), None, "{unused}");
        }
    }

    #[test]
    fn word_pieces_take_llama_cpps_phantom_space() {
        assert_eq!(phantom_space("paris"), "\u{2581}paris");
        assert_eq!(phantom_space("##ing"), "ing");
        assert_eq!(phantom_space("[CLS]"), "[CLS]");
        assert_eq!(phantom_space("["), "\u{2581}[");
    }
}
