//! What crosses the channel between an instance and the shared engine process (`selfcloud
//! engine run`): HTTP/2 on a connected socket pair that control hands each side, one stream per
//! generation. `GET /model` answers the [`ModelInfo`]; `POST /generate` takes an [`Ask`] and
//! answers either the contract's JSON error with its status (429 when every place is taken, 400
//! when the prompt does not fit) or 200 and one [`Frame`] per line, as the engine makes them.
//!
//! The engine never learns which instance asks from what an instance sends: control names the
//! tenant when it hands the engine its end of the pair. Every frame carries what the generation
//! has spent so far (its prompt, then each token), so the instance bills exactly what was
//! computed even when the answer breaks off.

use crate::engine::{Event, ModelInfo, Timings};
use crate::openai::{FinishReason, Generation, Message, Sampling, Usage};
use selfcloud_core::{Error, ErrorCode};
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub const MODEL_PATH: &str = "/model";
pub const GENERATE_PATH: &str = "/generate";
/// The longest line a frame may be (a delta is a few characters; an error a sentence).
pub const MAX_FRAME_BYTES: usize = 64 * 1024;

/// One generation as an instance asks for it: the checked request, without the tenant (which
/// control names) or the meter (which stays in the instance).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ask {
    pub messages: Vec<Message>,
    pub sampling: Sampling,
    pub stop: Vec<String>,
    pub max_tokens: u32,
    /// What the answer is held to (the engine compiles it; one it cannot is the caller's 400).
    #[serde(default)]
    pub constraint: Option<crate::constraint::Constraint>,
    /// Whose request it is within the instance (an engine's cache is never shared across them).
    pub caller: String,
    /// Tokens the caller's budget leaves, and milliseconds until it resets.
    pub allowance: Option<(u64, u64)>,
}

impl Ask {
    pub fn of(g: &Generation) -> Ask {
        Ask {
            messages: g.messages.clone(),
            sampling: g.sampling.clone(),
            stop: g.stop.clone(),
            max_tokens: g.max_tokens,
            constraint: g.constraint.clone(),
            caller: g.caller.clone(),
            allowance: g.allowance.map(|a| (a.tokens, a.resets_in.as_millis() as u64)),
        }
    }

    /// The generation the engine runs for `tenant`, counting into `meter`.
    pub fn into_generation(self, tenant: String, meter: crate::budget::Meter) -> Generation {
        Generation {
            messages: self.messages,
            sampling: self.sampling,
            stop: self.stop,
            max_tokens: self.max_tokens,
            constraint: self.constraint,
            // Calls are read from the text in the instance, not by the engine.
            tools: Vec::new(),
            // The engine streams frames whatever the caller asked; the instance shapes them.
            stream: true,
            include_usage: true,
            caller: self.caller,
            tenant,
            allowance: self
                .allowance
                .map(|(tokens, ms)| crate::budget::Allowance { tokens, resets_in: Duration::from_millis(ms) }),
            meter,
        }
    }
}

/// The contract's error as it crosses, with the wait a 429 or 503 names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WireError {
    pub code: ErrorCode,
    pub message: String,
    #[serde(default)]
    pub retry_after_ms: Option<u64>,
}

impl WireError {
    pub fn of(e: &Error) -> WireError {
        WireError {
            code: e.code,
            message: e.message.clone(),
            retry_after_ms: e.retry_after.map(|d| d.as_millis() as u64),
        }
    }

    pub fn into_error(self) -> Error {
        Error { retry_after: self.retry_after_ms.map(Duration::from_millis), ..Error::new(self.code, self.message) }
    }
}

/// One step of an answer on the channel, with the tokens spent so far.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "frame")]
pub enum Frame {
    Delta { text: String, spent: u64 },
    Done { finish: FinishReason, usage: Usage, timings: Timings, spent: u64 },
    Failed { error: WireError, spent: u64 },
}

impl Frame {
    pub fn of(event: Event, spent: u64) -> Frame {
        match event {
            Event::Delta(text) => Frame::Delta { text, spent },
            Event::Done { finish, usage, timings } => Frame::Done { finish, usage, timings, spent },
            Event::Failed(e) => Frame::Failed { error: WireError::of(&e), spent },
        }
    }

    /// The event, and what the generation has spent by then.
    pub fn into_event(self) -> (Event, u64) {
        match self {
            Frame::Delta { text, spent } => (Event::Delta(text), spent),
            Frame::Done { finish, usage, timings, spent } => (Event::Done { finish, usage, timings }, spent),
            Frame::Failed { error, spent } => (Event::Failed(error.into_error()), spent),
        }
    }

    /// The frame as one line of the answer.
    pub fn line(&self) -> Vec<u8> {
        let mut line = serde_json::to_vec(self).expect("a frame serializes");
        line.push(b'\n');
        line
    }

    /// Reads one line the engine sent; an engine that sends anything else broke its side of
    /// the channel, and the instance ends the answer with an error.
    pub fn parse(line: &[u8]) -> Result<Frame, Error> {
        if line.len() > MAX_FRAME_BYTES {
            return Err(Error::internal("the engine sent a frame past its bound"));
        }
        serde_json::from_slice(line).map_err(|e| Error::internal(format!("the engine sent a malformed frame: {e}")))
    }
}

/// Where the engine process finds its end of control's socket, on which control hands it one
/// end of each instance's channel beside a [`Tenant`].
pub const ENGINE_BROKER_FD: i32 = 3;
/// The line the engine process writes on stdout once its model is loaded.
pub const ENGINE_READY_LINE: &str = "ready";

/// The engine process's start message, one line of JSON on its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EngineStart {
    /// The model and its places: every instance's sequences together.
    pub engine: crate::llama::LlamaOptions,
    /// Put the process behind the sandbox's walls.
    pub sandbox: bool,
    /// The files it reads (the model), mounted read-only.
    pub read_only: Vec<std::path::PathBuf>,
    /// The host uid its root is mapped to (a server running as root); `None`: the server's own.
    pub host_id: Option<u32>,
}

/// Whose channel control hands the engine: the instance its sequences count against.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tenant {
    pub tenant: String,
}

/// What the instance reads back as the model behind the channel.
pub fn parse_model(body: &[u8]) -> Result<ModelInfo, Error> {
    serde_json::from_slice(body).map_err(|e| Error::internal(format!("the engine's model is malformed: {e}")))
}

/// Splits complete lines off the front of `buf`, leaving a partial one there.
pub fn take_lines(buf: &mut Vec<u8>) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    while let Some(end) = buf.iter().position(|&b| b == b'\n') {
        let rest = buf.split_off(end + 1);
        let mut line = std::mem::replace(buf, rest);
        line.pop();
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::{Allowance, Meter};

    fn generation() -> Generation {
        Generation {
            messages: vec![Message { role: "user".into(), content: "hi".into() }],
            sampling: Sampling { temperature: 0.0, top_p: 1.0, top_k: 40, min_p: 0.05, seed: 7, repeat_penalty: 1.0 },
            stop: vec!["\n\n".into()],
            max_tokens: 24,
            constraint: Some(crate::constraint::Constraint::JsonSchema(serde_json::json!({"type": "integer"}))),
            tools: vec!["get_weather".into()],
            stream: false,
            include_usage: false,
            caller: "grt_1".into(),
            tenant: "what the instance says is ignored".into(),
            allowance: Some(Allowance { tokens: 99, resets_in: Duration::from_secs(60) }),
            meter: Meter::default(),
        }
    }

    #[test]
    fn an_ask_crosses_whole_and_the_tenant_is_the_engines_to_name() {
        let g = generation();
        let ask: Ask = serde_json::from_slice(&serde_json::to_vec(&Ask::of(&g)).unwrap()).unwrap();
        let back = ask.into_generation("ins_a".into(), Meter::default());
        assert_eq!((back.messages, back.sampling, back.stop), (g.messages, g.sampling, g.stop));
        assert_eq!((back.max_tokens, &back.constraint, &back.caller), (24, &g.constraint, &g.caller));
        assert_eq!(back.allowance, g.allowance);
        assert_eq!(back.tenant, "ins_a");
        assert!(!serde_json::to_string(&Ask::of(&generation())).unwrap().contains("ignored"));
    }

    #[test]
    fn frames_carry_events_and_what_was_spent() {
        let events = [
            Event::Delta("Par".into()),
            Event::Done {
                finish: FinishReason::Length,
                usage: Usage::new(3, 2),
                timings: Timings::new(3, 1.0, 2, 2.0, 0),
            },
            Event::Failed(Error::unavailable("restarting", Duration::from_secs(2))),
        ];
        for (n, event) in events.into_iter().enumerate() {
            let mut buf = Frame::of(event.clone(), n as u64).line();
            let lines = take_lines(&mut buf);
            assert_eq!(lines.len(), 1);
            let (back, spent) = Frame::parse(&lines[0]).unwrap().into_event();
            assert_eq!((back, spent), (event, n as u64));
        }
    }

    #[test]
    fn lines_split_where_they_end_and_a_partial_one_waits() {
        let mut buf = b"{\"a\":1}\n{\"b\"".to_vec();
        assert_eq!(take_lines(&mut buf), vec![b"{\"a\":1}".to_vec()]);
        assert_eq!(buf, b"{\"b\"");
        assert!(Frame::parse(b"not json").is_err());
        assert!(Frame::parse(&vec![b' '; MAX_FRAME_BYTES + 1]).is_err());
    }
}
