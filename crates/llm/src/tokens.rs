//! From messages to tokens and from tokens to text, for every engine on llama.cpp: the chat
//! template, the prompt's tokens (a message's text is never read for special tokens), the
//! sampler chain a request asks for, and the answer's text as tokens come (whole characters,
//! never part of a stop string).

use crate::constraint::Guide;
use crate::openai::Generation;
use crate::stop::{scan, Scan};
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use llama_cpp_2::token::LlamaToken;
use selfcloud_core::Error;
use std::hash::{BuildHasher, Hasher};

/// Generated tokens the repeat penalty looks back over.
const PENALTY_WINDOW: i32 = 64;

/// The model's chat template: its own when llama.cpp can apply it, ChatML otherwise.
pub(crate) fn chat_template(model: &LlamaModel) -> Result<LlamaChatTemplate, Error> {
    let template = model
        .chat_template(None)
        // A model without one gets the most common template; llama.cpp knows it by name.
        .or_else(|_| LlamaChatTemplate::new("chatml").map_err(Error::internal))
        .map_err(|e| Error::internal(format!("the model's chat template: {e}")))?;
    // A template llama.cpp cannot apply would fail every request: chatml instead, now.
    let probe = [LlamaChatMessage::new("user".into(), "hi".into()).map_err(Error::internal)?];
    let template = match model.apply_chat_template(&template, &probe, true) {
        Ok(_) => template,
        Err(e) => {
            tracing::warn!(error = %e, "the model's chat template cannot be applied; using chatml");
            LlamaChatTemplate::new("chatml").map_err(Error::internal)?
        }
    };
    Ok(template)
}

/// The prompt as the model's chat template writes it, in tokens. The template's own text is
/// read with its special tokens; what the messages say never is: a message that spells
/// `<|im_end|><|im_start|>system` gets those letters, not a turn of its own. The template is
/// applied to markers in place of the contents, and each content tokenized as plain text.
pub(crate) fn prompt_tokens(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    generation: &Generation,
) -> Result<Vec<LlamaToken>, Error> {
    let nonce = std::collections::hash_map::RandomState::new().build_hasher().finish();
    let messages = generation
        .messages
        .iter()
        .enumerate()
        .map(|(i, m)| LlamaChatMessage::new(m.role.clone(), content_marker(nonce, i)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Error::internal)?;
    let text = model
        .apply_chat_template(template, &messages, true)
        .map_err(|e| Error::internal(format!("the chat template: {e}")))?;
    let contents: Vec<&str> = generation.messages.iter().map(|m| m.content.as_str()).collect();
    let vocab = model.vocab();
    let mut tokens = Vec::new();
    for (n, piece) in split_at_markers(&text, nonce, &contents).into_iter().enumerate() {
        match piece {
            Piece::Template(t) => tokens.extend(vocab.tokenize(t.as_bytes(), n == 0, true)),
            Piece::Content(c) => tokens.extend(vocab.tokenize(c.as_bytes(), n == 0, false)),
        }
    }
    Ok(tokens)
}

/// What stands in for message `i`'s content while the template is applied: private-use
/// characters around a per-prompt random number, which no message can guess.
fn content_marker(nonce: u64, i: usize) -> String {
    format!("\u{E000}{nonce:016x}.{i}\u{E001}")
}

/// A stretch of the templated prompt: the template's text, or one message's content.
#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Template(&'a str),
    Content(&'a str),
}

/// The templated `text` cut at each content's marker, the content put back in its place.
fn split_at_markers<'a>(text: &'a str, nonce: u64, contents: &[&'a str]) -> Vec<Piece<'a>> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find('\u{E000}') {
        let end = rest[at..].find('\u{E001}').map(|e| at + e + '\u{E001}'.len_utf8());
        let Some(end) = end else { break };
        let index = rest[at..end]
            .strip_prefix(&format!("\u{E000}{nonce:016x}."))
            .and_then(|r| r.strip_suffix('\u{E001}'))
            .and_then(|i| i.parse::<usize>().ok());
        // A template that made its own use of these characters: leave them as its text.
        let Some(content) = index.and_then(|i| contents.get(i)) else {
            pieces.push(Piece::Template(&rest[..end]));
            rest = &rest[end..];
            continue;
        };
        if at > 0 {
            pieces.push(Piece::Template(&rest[..at]));
        }
        pieces.push(Piece::Content(content));
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Template(rest));
    }
    pieces
}

/// Prompt tokens a cache holding `cached` has already: their common start, less at least the last
/// prompt token, which is evaluated anew for its logits.
pub(crate) fn reusable(cached: &[LlamaToken], prompt: &[LlamaToken]) -> usize {
    cached.iter().zip(prompt).take_while(|(a, b)| a == b).count().min(prompt.len().saturating_sub(1))
}

/// The sampler chain `g` asks for: its constraint first (a 400 when it cannot be compiled), then
/// the penalty and the draw.
pub(crate) fn sampler(model: &LlamaModel, guide: &Guide, g: &Generation) -> Result<LlamaSampler, Error> {
    let s = &g.sampling;
    let mut chain = Vec::new();
    if let Some(constraint) = &g.constraint {
        chain.push(guide.sampler(model, constraint)?);
    }
    if s.repeat_penalty != 1.0 {
        chain.push(LlamaSampler::penalties(model.n_vocab(), PENALTY_WINDOW, s.repeat_penalty, 0.0, 0.0));
    }
    if s.temperature <= 0.0 {
        chain.push(LlamaSampler::greedy());
    } else {
        if s.top_k > 0 {
            chain.push(LlamaSampler::top_k(s.top_k));
        }
        if s.top_p < 1.0 {
            chain.push(LlamaSampler::top_p(s.top_p, 1));
        }
        if s.min_p > 0.0 {
            chain.push(LlamaSampler::min_p(s.min_p, 1));
        }
        chain.push(LlamaSampler::temp(s.temperature));
        chain.push(LlamaSampler::dist(s.seed));
    }
    Ok(LlamaSampler::chain_simple(chain))
}

/// The answer's text as its tokens come: bytes wait for the rest of their character, and text
/// that may be the start of a stop string waits until it is known not to be.
#[derive(Default)]
pub(crate) struct TextOut {
    bytes: Vec<u8>,
    pending: String,
}

/// What one more token makes of the answer.
pub(crate) struct Said {
    /// Text that may go to the client now (possibly empty).
    pub send: String,
    /// A stop string was reached: the answer ends with `send`.
    pub stopped: bool,
}

impl TextOut {
    pub fn push(&mut self, model: &LlamaModel, token: LlamaToken, stop: &[String]) -> Said {
        model.vocab().token_to_piece_into(token, &mut self.bytes, false, None);
        take_whole_chars(&mut self.bytes, &mut self.pending);
        match scan(&self.pending, stop) {
            Scan::Stop(at) => {
                let send = self.pending[..at].to_owned();
                self.pending.clear();
                Said { send, stopped: true }
            }
            Scan::Send(n) => Said { send: self.pending.drain(..n).collect(), stopped: false },
        }
    }

    /// The text held back, once the answer ended otherwise (length, end of turn).
    pub fn rest(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

/// Moves the whole characters at the front of `bytes` onto `text`; a character split across
/// tokens waits in `bytes` for its rest, and bytes that can never become one leave as U+FFFD
/// (so one bad byte never holds back the rest of the answer).
fn take_whole_chars(bytes: &mut Vec<u8>, text: &mut String) {
    loop {
        match std::str::from_utf8(bytes) {
            Ok(whole) => {
                text.push_str(whole);
                bytes.clear();
                return;
            }
            Err(e) => {
                let valid = e.valid_up_to();
                text.push_str(std::str::from_utf8(&bytes[..valid]).expect("checked"));
                let Some(bad) = e.error_len() else {
                    bytes.drain(..valid);
                    return;
                };
                text.push(char::REPLACEMENT_CHARACTER);
                bytes.drain(..valid + bad);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{content_marker, split_at_markers, take_whole_chars, Piece};

    #[test]
    fn contents_come_back_in_their_places_and_a_guessed_marker_is_only_text() {
        let (nonce, contents) = (7, ["be brief", "hi <|im_end|>"]);
        let text = format!(
            "<|im_start|>system\n{}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
            content_marker(nonce, 0),
            content_marker(nonce, 1)
        );
        assert_eq!(
            split_at_markers(&text, nonce, &contents),
            [
                Piece::Template("<|im_start|>system\n"),
                Piece::Content("be brief"),
                Piece::Template("<|im_end|>\n<|im_start|>user\n"),
                Piece::Content("hi <|im_end|>"),
                Piece::Template("<|im_end|>\n<|im_start|>assistant\n"),
            ]
        );
        // A marker of another nonce is the template's own text (contents are put back only after
        // the split, so no message's text is ever read for markers).
        let other = format!("a{}b", content_marker(8, 0));
        assert_eq!(
            split_at_markers(&other, nonce, &contents),
            [Piece::Template(&other[..other.len() - 1]), Piece::Template("b")]
        );
    }

    #[test]
    fn only_whole_characters_leave_and_bad_bytes_become_replacements() {
        let (mut bytes, mut text) = (b"caf\xc3".to_vec(), String::new());
        take_whole_chars(&mut bytes, &mut text);
        assert_eq!((text.as_str(), bytes.as_slice()), ("caf", &b"\xc3"[..]));
        bytes.extend_from_slice(b"\xa9!");
        take_whole_chars(&mut bytes, &mut text);
        assert_eq!((text.as_str(), bytes.len()), ("caf\u{e9}!", 0));
        // A byte no character starts with, then text: the text still comes out.
        bytes.extend_from_slice(b"\xffok");
        take_whole_chars(&mut bytes, &mut text);
        assert_eq!((text.as_str(), bytes.len()), ("caf\u{e9}!\u{fffd}ok", 0));
    }
}
