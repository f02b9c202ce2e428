//! A request's messages as OpenAI's clients write them (text or text parts, an assistant's earlier
//! tool calls, a tool's results) and as the turns a chat template knows ([`Message`]).

use crate::tools::{Offer, ToolCall};
use selfcloud_core::Error;
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct Message {
    pub role: String,
    /// A string, or OpenAI's list of parts, of which text parts are read (joined) and any other
    /// kind (an image, audio) is refused.
    #[serde(deserialize_with = "content_text")]
    pub content: String,
}

/// A message as a request may write it: besides a turn's text, an assistant's earlier tool calls
/// (its content then may be null) and a tool's result (`role: "tool"`). [`ChatRequest::validate`]
/// writes them as the turns a chat template knows ([`Message`]).
#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct RequestMessage {
    pub role: String,
    #[serde(default, deserialize_with = "optional_content_text")]
    pub content: Option<String>,
    #[serde(default)]
    pub tool_calls: Option<Vec<RequestToolCall>>,
    #[serde(default)]
    pub tool_call_id: Option<String>,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct RequestToolCall {
    #[serde(default)]
    pub id: Option<String>,
    pub function: CalledFunction,
}

#[derive(Deserialize, Debug, Clone, PartialEq)]
pub struct CalledFunction {
    pub name: String,
    #[serde(default)]
    pub arguments: String,
}

impl From<Message> for RequestMessage {
    fn from(m: Message) -> Self {
        RequestMessage { role: m.role, content: Some(m.content), tool_calls: None, tool_call_id: None }
    }
}

fn optional_content_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Text(#[serde(deserialize_with = "content_text")] String);
    Ok(Option::<Text>::deserialize(d)?.map(|t| t.0))
}

fn content_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Content {
        Text(String),
        Parts(Vec<Part>),
    }
    #[derive(Deserialize)]
    struct Part {
        #[serde(rename = "type")]
        kind: String,
        text: Option<String>,
    }
    match Content::deserialize(d)? {
        Content::Text(t) => Ok(t),
        Content::Parts(parts) => parts
            .into_iter()
            .map(|p| match (p.kind.as_str(), p.text) {
                ("text", Some(t)) => Ok(t),
                (kind, _) => Err(serde::de::Error::custom(format!("a `{kind}` content part is not supported here"))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(|texts| texts.concat()),
    }
}

/// The request's messages as the turns a chat template knows: `developer` is the system turn,
/// an assistant's tool calls are written as it would write them, a tool's results come in a
/// user turn, and the offered functions are described at the end of the system turn (one is put
/// first when there is none).
pub(crate) fn conversation(messages: Vec<RequestMessage>, offer: Option<&Offer>) -> Result<Vec<Message>, Error> {
    let mut turns: Vec<Message> = Vec::with_capacity(messages.len() + 1);
    let mut last_was_tool = false;
    for m in messages {
        let is_tool = m.role == "tool";
        let content = match (m.role.as_str(), m.content, m.tool_calls) {
            ("assistant", content, Some(calls)) if !calls.is_empty() => {
                let written: Vec<String> =
                    calls.iter().map(|c| ToolCall::written(&c.function.name, &c.function.arguments)).collect();
                let text = content.unwrap_or_default();
                if text.is_empty() {
                    written.join("\n")
                } else {
                    format!("{text}\n{}", written.join("\n"))
                }
            }
            (_, _, Some(calls)) if !calls.is_empty() => {
                return Err(Error::invalid("only an assistant's message may hold `tool_calls`"))
            }
            ("tool", Some(content), _) => crate::tools::written_result(&content),
            (role, None, _) => return Err(Error::invalid(format!("a {role} message needs its `content`"))),
            (_, Some(content), _) => content,
        };
        let role = match m.role.as_str() {
            "developer" => "system",
            "tool" => "user",
            other => other,
        };
        // A tool's results after another's are one user turn, as the model reads them.
        match turns.last_mut() {
            Some(last) if is_tool && last_was_tool => {
                last.content.push('\n');
                last.content.push_str(&content);
            }
            _ => turns.push(Message { role: role.to_owned(), content }),
        }
        last_was_tool = is_tool;
    }
    if let Some(instructions) = offer.and_then(Offer::instructions) {
        match turns.first_mut() {
            Some(first) if first.role == "system" => {
                first.content.push_str("\n\n");
                first.content.push_str(&instructions);
            }
            _ => turns.insert(0, Message { role: "system".into(), content: instructions }),
        }
    }
    Ok(turns)
}

#[cfg(test)]
mod tests {
    use crate::constraint::Constraint;
    use crate::openai::tests::parse;
    use serde_json::json;

    #[test]
    fn tools_earlier_calls_and_their_results_become_turns_the_template_knows() {
        let tools = json!([{"type": "function", "function": {"name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]);
        let g = parse(json!({
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Rome?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Rome\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "rain"},
            ],
            "tools": tools, "tool_choice": "auto",
        }))
        .unwrap();
        let roles: Vec<&str> = g.messages.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert!(
            g.messages[0].content.starts_with("Be brief.\n\n# Tools") && g.messages[0].content.contains("get_weather")
        );
        assert_eq!(g.messages[2].content.matches("<tool_call>").count(), 2);
        assert_eq!(
            g.messages[3].content,
            "<tool_response>\nsunny\n</tool_response>\n<tool_response>\nrain\n</tool_response>"
        );
        assert_eq!((g.tools.as_slice(), &g.constraint), (&["get_weather".to_owned()][..], &None));
        // A demanded call is held by the grammar, and cannot be held beside a response format.
        let mut body =
            json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "required"});
        assert!(matches!(parse(body.clone()).unwrap().constraint, Some(Constraint::ToolCalls { .. })));
        assert_eq!(parse(body.clone()).unwrap().messages[0].role, "system");
        body["response_format"] = json!({"type": "json_object"});
        assert!(parse(body).unwrap_err().message.contains("cannot both hold"));
        let user_calls =
            json!({"messages": [{"role": "user", "content": "x", "tool_calls": [{"function": {"name": "f"}}]}]});
        assert!(parse(user_calls).unwrap_err().message.contains("tool_calls"));
        let none =
            parse(json!({"messages": [{"role": "user", "content": "x"}], "tools": tools, "tool_choice": "none"}))
                .unwrap();
        assert_eq!((none.messages.len(), none.tools.len()), (1, 0));
    }
}
