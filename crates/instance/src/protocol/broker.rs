//! The broker's half of the instance protocol: how control hands an instance the outside
//! channels its parts declare (`Part::channels`), as Sandstorm's supervisor brokers every outside
//! access of a grain. The instance can make no socket; at [`BROKER_FD`] it finds one end of a
//! sequenced-packet pair whose other end control holds. It asks for a channel by name
//! ([`Message::Want`]); control answers with the channel's descriptor beside a
//! [`Message::Channel`], already connected to the one peer that channel reaches, or with
//! [`Message::Refused`]. Each message is one JSON datagram.

use serde::{Deserialize, Serialize};

/// Where an instance process finds its end of the broker's socket.
pub const BROKER_FD: i32 = super::LISTENER_FD + 1;
/// The longest message either side sends.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// An outside channel a part may need.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The shared LLM engine process (`selfcloud engine run`): the instance's end of a stream
    /// pair whose other end the engine holds, named to it as this instance's.
    LlmEngine,
    /// Requests to hosts outside, on the operator's allow-list (`protocol::egress`): the
    /// instance's end of a stream pair whose other end control serves as HTTP/2.
    Egress,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::LlmEngine => "llm_engine",
            Channel::Egress => "egress",
        }
    }
}

/// One datagram on the broker's socket.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Message {
    /// Instance to control: a (new) channel, its last one having broken or never come.
    Want { channel: Channel },
    /// Control to instance: the channel, its descriptor beside this message.
    Channel { channel: Channel },
    /// Control to instance: none now, and why; `retry_after_ms` when one may come later.
    Refused { channel: Channel, message: String, retry_after_ms: Option<u64> },
}

impl Message {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a broker message serializes")
    }

    /// Reads one datagram; `None` for anything that is not a message of this protocol.
    pub fn decode(bytes: &[u8]) -> Option<Message> {
        (bytes.len() <= MAX_MESSAGE_BYTES).then(|| serde_json::from_slice(bytes).ok()).flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_cross_as_json_and_nothing_else_is_one() {
        let all = [
            Message::Want { channel: Channel::LlmEngine },
            Message::Channel { channel: Channel::LlmEngine },
            Message::Refused { channel: Channel::LlmEngine, message: "restarting".into(), retry_after_ms: Some(2000) },
        ];
        for m in all {
            assert_eq!(Message::decode(&m.encode()), Some(m));
        }
        assert_eq!(
            String::from_utf8(Message::Want { channel: Channel::LlmEngine }.encode()).unwrap(),
            r#"{"kind":"want","channel":"llm_engine"}"#
        );
        assert_eq!(Message::decode(br#"{"kind":"want","channel":"the_host"}"#), None);
        assert_eq!(Message::decode(&[b' '; MAX_MESSAGE_BYTES + 1]), None);
    }
}
