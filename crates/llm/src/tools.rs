//! Function calling as OpenAI's clients use it (`tools`, `tool_choice`, `parallel_tool_calls`),
//! for models whose chat template llama.cpp applies without tools: the functions are described
//! in the system turn, and the model calls one by answering with a `<tool_call>` block holding
//! `{"name": ..., "arguments": {...}}`, the format Hermes and Qwen models are trained on. Earlier
//! calls and their results are written back into the conversation in the same format.
//!
//! When the choice demands a call (`required`, or a named function) the answer is held to that
//! format by a grammar ([`crate::constraint::Constraint::ToolCalls`]), so it always parses; with
//! `auto` the model chooses, and [`CallScan`] reads its text as it comes into content and calls
//! (a block that does not parse, or names no offered function, stays text).

use crate::constraint::{Constraint, MAX_SCHEMA_BYTES};
use rand::distributions::{Alphanumeric, DistString};
use selfcloud_core::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const CALL_OPEN: &str = "<tool_call>";
pub const CALL_CLOSE: &str = "</tool_call>";
const RESULT_OPEN: &str = "<tool_response>";
const RESULT_CLOSE: &str = "</tool_response>";
/// Functions one request may offer.
pub const MAX_TOOLS: usize = 64;

/// One entry of `tools`.
#[derive(Deserialize, Debug, Clone)]
struct Tool {
    #[serde(rename = "type")]
    kind: String,
    function: Function,
}

#[derive(Deserialize, Serialize, Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// A JSON schema of the arguments; none means no arguments.
    #[serde(default = "no_parameters")]
    pub parameters: Value,
}

fn no_parameters() -> Value {
    json!({"type": "object", "properties": {}})
}

/// What `tool_choice` asks of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// The functions a request offers and how the model may use them, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Offer {
    pub functions: Vec<Function>,
    pub choice: Choice,
    pub parallel: bool,
}

/// A call the model made, as OpenAI names it: `arguments` is JSON text.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

impl ToolCall {
    /// The call in an answer's `tool_calls`.
    pub fn to_openai(&self) -> Value {
        json!({"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}})
    }

    /// The call as a stream chunk's delta (each call whole, in one chunk).
    pub fn delta(&self, index: usize) -> Value {
        let mut call = self.to_openai();
        call["index"] = json!(index);
        json!({"tool_calls": [call]})
    }

    /// How the model wrote it, for the conversation's later turns.
    pub fn written(name: &str, arguments: &str) -> String {
        let arguments = serde_json::from_str::<Value>(arguments).unwrap_or_else(|_| json!(arguments));
        format!("{CALL_OPEN}\n{}\n{CALL_CLOSE}", json!({"name": name, "arguments": arguments}))
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl Offer {
    /// `tools`, `tool_choice` and `parallel_tool_calls` as a request names them; `None` when it
    /// offers no function. 400 naming the field for what is malformed.
    pub fn read(tools: Option<Value>, choice: Option<Value>, parallel: Option<bool>) -> Result<Option<Offer>, Error> {
        let bad = |m: String| Err(Error::invalid(m));
        let tools: Vec<Tool> = match tools {
            None | Some(Value::Null) => Vec::new(),
            Some(t) => serde_json::from_value(t)
                .map_err(|e| Error::invalid(format!("`tools` must be a list of functions: {e}")))?,
        };
        if tools.len() > MAX_TOOLS {
            return bad(format!("`tools` holds at most {MAX_TOOLS} functions"));
        }
        if let Some(t) = tools.iter().find(|t| t.kind != "function") {
            return bad(format!("a tool of type {:?} is not supported here (only \"function\")", short(&t.kind)));
        }
        let functions: Vec<Function> = tools.into_iter().map(|t| t.function).collect();
        for (i, f) in functions.iter().enumerate() {
            if !valid_name(&f.name) {
                return bad(format!(
                    "a function's name is 1 to 64 of a-z, A-Z, 0-9, _ and -, not {:?}",
                    short(&f.name)
                ));
            }
            if functions[..i].iter().any(|g| g.name == f.name) {
                return bad(format!("the function {:?} is offered twice", f.name));
            }
            if !f.parameters.is_object() {
                return bad(format!("the parameters of {:?} must be a JSON schema object", f.name));
            }
        }
        if serde_json::to_vec(&functions).map_or(0, |v| v.len()) > MAX_SCHEMA_BYTES {
            return bad(format!("the functions exceed {MAX_SCHEMA_BYTES} bytes"));
        }
        let choice = match choice {
            None | Some(Value::Null) => Choice::Auto,
            Some(Value::String(mode)) => match mode.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => return bad(format!("unsupported tool_choice {:?}", short(other))),
            },
            Some(named) => match named.pointer("/function/name").and_then(Value::as_str) {
                Some(name) if named["type"] == "function" => Choice::Named(name.to_owned()),
                _ => return bad("`tool_choice` is \"none\", \"auto\", \"required\" or a named function".into()),
            },
        };
        if functions.is_empty() {
            return match choice {
                Choice::None | Choice::Auto => Ok(None),
                _ => bad("`tool_choice` asks for a call but `tools` offers no function".into()),
            };
        }
        if let Choice::Named(name) = &choice {
            if !functions.iter().any(|f| &f.name == name) {
                return bad(format!("`tool_choice` names {:?}, which `tools` does not offer", short(name)));
            }
        }
        // Several calls in one answer only when asked for: one call is always allowed, and a
        // small model held to a grammar that allows more repeats its call to the token limit.
        Ok(Some(Offer { functions, choice, parallel: parallel.unwrap_or(false) }))
    }

    /// The names the model may call; none when the choice is `none`.
    pub fn callable(&self) -> Vec<String> {
        match &self.choice {
            Choice::None => Vec::new(),
            Choice::Named(name) => vec![name.clone()],
            _ => self.functions.iter().map(|f| f.name.clone()).collect(),
        }
    }

    /// What the system turn says of the functions, or nothing when none may be called.
    pub fn instructions(&self) -> Option<String> {
        let callable = self.callable();
        if callable.is_empty() {
            return None;
        }
        let listed: Vec<String> = self
            .functions
            .iter()
            .filter(|f| callable.contains(&f.name))
            .map(|f| json!({"type": "function", "function": f}).to_string())
            .collect();
        let must = match &self.choice {
            Choice::Required => "You must call at least one function.\n",
            Choice::Named(_) => "You must call this function.\n",
            _ => "",
        };
        Some(format!(
            "# Tools\n\nYou may call functions to answer. Their signatures, as JSON schemas:\n<tools>\n{}\n</tools>\n\n\
             {must}To call one, answer with a JSON object of its name and arguments inside {CALL_OPEN}{CALL_CLOSE} tags:\n\
             {CALL_OPEN}\n{{\"name\": <function name>, \"arguments\": <arguments as a JSON object>}}\n{CALL_CLOSE}",
            listed.join("\n")
        ))
    }

    /// The grammar when the choice demands a call; with `auto` or `none` the model writes freely.
    pub fn constraint(&self) -> Option<Constraint> {
        matches!(self.choice, Choice::Required | Choice::Named(_)).then(|| {
            let callable = self.callable();
            let functions = self
                .functions
                .iter()
                .filter(|f| callable.contains(&f.name))
                .map(|f| (f.name.clone(), f.parameters.clone()))
                .collect();
            Constraint::ToolCalls { functions, parallel: self.parallel }
        })
    }
}

/// A whole answer's text as its content and the calls it makes.
pub fn read(callable: Vec<String>, only_calls: bool, text: &str) -> (String, Vec<ToolCall>) {
    let mut scan = CallScan::new(callable, only_calls);
    let (mut content, mut calls) = (String::new(), Vec::new());
    for said in scan.push(text).into_iter().chain(scan.finish()) {
        match said {
            Said::Text(t) => content.push_str(&t),
            Said::Call(_, c) => calls.push(c),
        }
    }
    (content, calls)
}

/// Why an answer ended, once its calls are known: one that ended by itself with calls ends for
/// them (`tool_calls`); one cut at its length stays `length`.
pub fn finish(engine: crate::openai::FinishReason, calls: usize) -> crate::openai::FinishReason {
    match engine {
        crate::openai::FinishReason::Stop if calls > 0 => crate::openai::FinishReason::ToolCalls,
        other => other,
    }
}

/// A tool's result as the model reads it, in a user turn (as Qwen's template writes it).
pub fn written_result(content: &str) -> String {
    format!("{RESULT_OPEN}\n{content}\n{RESULT_CLOSE}")
}

fn short(s: &str) -> String {
    s.chars().take(40).collect()
}

/// What the model's text turns out to be, as it comes.
#[derive(Debug, Clone, PartialEq)]
pub enum Said {
    Text(String),
    /// A call, and its place among the answer's calls (a stream chunk's `index`).
    Call(usize, ToolCall),
}

/// Reads an answer's text as it comes into content and tool calls. Text that may be the start of
/// a `<tool_call>` waits until it is known, and a call leaves once its block closes; whitespace
/// between calls is no content, and a call the answer made already is not made twice (a model
/// repeating itself).
#[derive(Debug)]
pub struct CallScan {
    callable: Vec<String>,
    /// The answer was held to calls ([`Offer::constraint`]): what a token limit cut short is a
    /// broken call, not content.
    only_calls: bool,
    pending: String,
    in_call: bool,
    /// Whitespace held until text that is not whitespace follows it.
    blank: String,
    made: Vec<(String, String)>,
    pub calls: usize,
}

impl CallScan {
    pub fn new(callable: Vec<String>, only_calls: bool) -> Self {
        CallScan {
            callable,
            only_calls,
            pending: String::new(),
            in_call: false,
            blank: String::new(),
            made: Vec::new(),
            calls: 0,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Said> {
        self.pending.push_str(text);
        let mut out = Vec::new();
        loop {
            if self.in_call {
                let Some(end) = self.pending.find(CALL_CLOSE) else { break };
                let body: String = self.pending.drain(..end + CALL_CLOSE.len()).collect();
                let body = &body[..end];
                self.in_call = false;
                match self.parse(body) {
                    Some(call) if self.made.contains(&(call.name.clone(), call.arguments.clone())) => {
                        self.blank.clear();
                    }
                    Some(call) => {
                        self.blank.clear();
                        self.made.push((call.name.clone(), call.arguments.clone()));
                        out.push(Said::Call(self.calls, call));
                        self.calls += 1;
                    }
                    None => self.text(format!("{CALL_OPEN}{body}{CALL_CLOSE}"), &mut out),
                }
                continue;
            }
            if let Some(at) = self.pending.find(CALL_OPEN) {
                let before: String = self.pending.drain(..at + CALL_OPEN.len()).collect();
                self.text(before[..at].to_owned(), &mut out);
                self.in_call = true;
                continue;
            }
            // Keep what may be the start of a call's tag.
            let keep = (1..CALL_OPEN.len()).rev().find(|&n| self.pending.ends_with(&CALL_OPEN[..n])).unwrap_or(0);
            let ready: String = self.pending.drain(..self.pending.len() - keep).collect();
            self.text(ready, &mut out);
            break;
        }
        out
    }

    /// What is left once the answer ended: held text, and a call never closed, as text.
    pub fn finish(&mut self) -> Vec<Said> {
        let mut rest = std::mem::take(&mut self.pending);
        if self.only_calls {
            self.in_call = false;
            return Vec::new();
        }
        if self.in_call {
            rest.insert_str(0, CALL_OPEN);
            self.in_call = false;
        }
        let mut out = Vec::new();
        self.text(rest, &mut out);
        if self.calls == 0 && !self.blank.is_empty() {
            out.push(Said::Text(std::mem::take(&mut self.blank)));
        }
        out
    }

    fn text(&mut self, text: String, out: &mut Vec<Said>) {
        if text.is_empty() {
            return;
        }
        if text.trim().is_empty() {
            self.blank.push_str(&text);
            return;
        }
        let text = std::mem::take(&mut self.blank) + &text;
        match out.last_mut() {
            Some(Said::Text(t)) => t.push_str(&text),
            _ => out.push(Said::Text(text)),
        }
    }

    fn parse(&self, body: &str) -> Option<ToolCall> {
        let call: Value = serde_json::from_str(body.trim()).ok()?;
        let name = call.get("name")?.as_str()?;
        if !self.callable.iter().any(|c| c == name) {
            return None;
        }
        let arguments = match call.get("arguments") {
            None => "{}".to_owned(),
            Some(Value::String(s)) if serde_json::from_str::<Value>(s).is_ok() => s.clone(),
            Some(a @ Value::Object(_)) => a.to_string(),
            Some(_) => return None,
        };
        let id = format!("call_{}", Alphanumeric.sample_string(&mut rand::thread_rng(), 24));
        Some(ToolCall { id, name: name.to_owned(), arguments })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_core::ErrorCode;

    fn weather() -> Value {
        json!([{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}])
    }

    #[test]
    fn an_offer_is_read_and_its_faults_named() {
        let offer = Offer::read(Some(weather()), None, None).unwrap().unwrap();
        assert_eq!(
            (offer.choice.clone(), offer.parallel, offer.callable()),
            (Choice::Auto, false, vec!["get_weather".into()])
        );
        assert_eq!(offer.constraint(), None);
        let named = json!({"type": "function", "function": {"name": "get_weather"}});
        let offer = Offer::read(Some(weather()), Some(named), Some(false)).unwrap().unwrap();
        assert!(matches!(offer.constraint(), Some(Constraint::ToolCalls { parallel: false, .. })));
        assert_eq!(Offer::read(None, Some(json!("auto")), None).unwrap(), None);
        let none = Offer::read(Some(weather()), Some(json!("none")), None).unwrap().unwrap();
        assert_eq!((none.instructions(), none.constraint()), (None, None));
        for (tools, choice, names) in [
            (json!({"a": 1}), json!("auto"), "`tools`"),
            (json!([{"type": "retrieval", "function": {"name": "x"}}]), json!("auto"), "retrieval"),
            (json!([{"type": "function", "function": {"name": "rm -rf"}}]), json!("auto"), "name"),
            (json!([{"type": "function", "function": {"name": "a", "parameters": 3}}]), json!("auto"), "parameters"),
            (weather(), json!("always"), "tool_choice"),
            (weather(), json!({"type": "function", "function": {"name": "other"}}), "does not offer"),
            (json!([]), json!("required"), "offers no function"),
        ] {
            let e = Offer::read(Some(tools.clone()), Some(choice), None).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidRequest);
            assert!(e.message.contains(names), "{tools}: {}", e.message);
        }
        let twice = json!([weather()[0], weather()[0]]);
        assert!(Offer::read(Some(twice), None, None).unwrap_err().message.contains("twice"));
        let many: Vec<Value> =
            (0..=MAX_TOOLS).map(|i| json!({"type": "function", "function": {"name": format!("f{i}")}})).collect();
        assert!(Offer::read(Some(json!(many)), None, None).is_err());
    }

    #[test]
    fn the_instructions_list_the_callable_functions_and_the_format() {
        let offer = Offer::read(Some(weather()), Some(json!("required")), None).unwrap().unwrap();
        let text = offer.instructions().unwrap();
        assert!(text.contains("\"get_weather\"") && text.contains("The weather in a city"), "{text}");
        assert!(text.contains(CALL_OPEN) && text.contains("must call"), "{text}");
        assert_eq!(
            ToolCall::written("get_weather", r#"{"city":"Paris"}"#),
            "<tool_call>\n{\"name\":\"get_weather\",\"arguments\":{\"city\":\"Paris\"}}\n</tool_call>"
        );
    }

    fn scan_all(callable: &[&str], pieces: &[&str]) -> Vec<Said> {
        let mut scan = CallScan::new(callable.iter().map(|s| s.to_string()).collect(), false);
        let mut out: Vec<Said> = pieces.iter().flat_map(|p| scan.push(p)).collect();
        out.extend(scan.finish());
        // Adjacent texts as one, as a reader joins them.
        out.into_iter().fold(Vec::new(), |mut v, s| {
            match (v.last_mut(), s) {
                (Some(Said::Text(a)), Said::Text(b)) => a.push_str(&b),
                (_, s) => v.push(s),
            }
            v
        })
    }

    #[test]
    fn calls_are_read_from_text_however_it_is_cut() {
        let text = "Let me look.<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"get_weather\", \"arguments\": \"{\\\"city\\\": \\\"Rome\\\"}\"}\n</tool_call>\n";
        for cut in 1..text.len() {
            let Some((a, b)) = (text.is_char_boundary(cut)).then(|| text.split_at(cut)) else { continue };
            let out = scan_all(&["get_weather"], &[a, b]);
            assert_eq!(out.len(), 3, "cut at {cut}: {out:?}");
            assert_eq!(out[0], Said::Text("Let me look.".into()));
            let (Said::Call(0, paris), Said::Call(1, rome)) = (&out[1], &out[2]) else { panic!("{out:?}") };
            assert_eq!((paris.name.as_str(), paris.arguments.as_str()), ("get_weather", r#"{"city":"Paris"}"#));
            assert_eq!(rome.arguments, r#"{"city": "Rome"}"#);
            assert!(paris.id.starts_with("call_") && paris.id != rome.id);
        }
    }

    #[test]
    fn what_is_not_a_call_stays_text() {
        let plain = scan_all(&["get_weather"], &["Paris is <b>sunny</b> ", "today. <tool"]);
        assert_eq!(plain, [Said::Text("Paris is <b>sunny</b> today. <tool".into())]);
        for block in [
            "<tool_call>{\"name\": \"rm\", \"arguments\": {}}</tool_call>",
            "<tool_call>not json</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"arguments\": 3}</tool_call>",
            "<tool_call>{\"name\": \"get_weather\", \"argu",
        ] {
            assert_eq!(scan_all(&["get_weather"], &[block]), [Said::Text(block.into())]);
        }
        assert_eq!(scan_all(&[], &["<tool_call>{\"name\": \"get_weather\"}</tool_call>"]).len(), 1);
        assert_eq!(scan_all(&["f"], &["  \n"]), [Said::Text("  \n".into())]);
    }

    #[test]
    fn a_repeated_call_is_made_once_and_a_held_answer_cut_short_is_no_content() {
        let call = "<tool_call>\n{\"name\": \"f\", \"arguments\": {\"a\": 1}}\n</tool_call>";
        let other = call.replace("1", "2");
        let text = format!("{call}\n{other}\n{call}\n<tool_call>\n{{\"name\": \"f\", \"argu");
        let (content, calls) = read(vec!["f".into()], true, &text);
        assert_eq!((content.as_str(), calls.len()), ("", 2), "{calls:?}");
        let (content, calls) = read(vec!["f".into()], false, &text);
        assert_eq!((content.as_str(), calls.len()), ("\n<tool_call>\n{\"name\": \"f\", \"argu", 2));
    }
}
