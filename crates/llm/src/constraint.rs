//! What an answer is held to, token by token: one JSON object (`response_format: json_object`),
//! a value of a JSON schema (`json_schema`), or tool calls in the [`crate::tools`] format (a
//! `tool_choice` that demands one). Each is a grammar for llguidance, which masks every token
//! that would leave it; a schema it cannot compile is the caller's 400, found before any token is
//! computed ([`Guide::sampler`]).

use crate::tools::{CALL_CLOSE, CALL_OPEN};
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::sampling::LlamaSampler;
use llguidance::api::TopLevelGrammar;
use llguidance::{Matcher, ParserFactory};
use selfcloud_core::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::OnceLock;

/// The most bytes a schema (or the tools' schemas together) may take, written as JSON: a
/// grammar's size, and the time to compile it, grow with it.
pub const MAX_SCHEMA_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Constraint {
    /// Any one JSON object.
    JsonObject,
    /// A JSON value the schema allows.
    JsonSchema(Value),
    /// Only tool calls, each `<tool_call>` a JSON object naming one of `functions` (name, then
    /// the schema of its parameters); more than one when `parallel`.
    ToolCalls { functions: Vec<(String, Value)>, parallel: bool },
}

impl Constraint {
    /// The size bound, checked where the grammar is compiled as well as in the request: the engine
    /// process takes constraints from instances, which it does not trust (1 KiB of room for the
    /// tag around the schema).
    pub fn bounded(&self) -> Result<(), Error> {
        match serde_json::to_vec(self).map_or(usize::MAX, |v| v.len()) {
            n if n > MAX_SCHEMA_BYTES + 1024 => {
                Err(Error::invalid(format!("the schema exceeds {MAX_SCHEMA_BYTES} bytes")))
            }
            _ => Ok(()),
        }
    }

    /// The grammar llguidance holds the answer to.
    pub fn grammar(&self) -> TopLevelGrammar {
        match self {
            Constraint::JsonObject => TopLevelGrammar::from_json_schema(compact(json!({"type": "object"}))),
            Constraint::JsonSchema(schema) => TopLevelGrammar::from_json_schema(compact(schema.clone())),
            Constraint::ToolCalls { functions, parallel } => {
                let calls = functions
                    .iter()
                    .map(|(name, parameters)| {
                        json!({
                            "type": "object",
                            "properties": {"name": {"const": name}, "arguments": parameters},
                            "required": ["name", "arguments"],
                            "additionalProperties": false,
                        })
                    })
                    .collect::<Vec<_>>();
                let one = compact(json!({"anyOf": calls}));
                let start = if *parallel { "call (\"\\n\" call)*" } else { "call" };
                let lark = format!(
                    "start: {start}\ncall: {open} \"\\n\" args \"\\n\" {close}\nargs: %json {one}\n",
                    open = serde_json::to_string(CALL_OPEN).expect("a string"),
                    close = serde_json::to_string(CALL_CLOSE).expect("a string"),
                );
                TopLevelGrammar::from_lark(lark)
            }
        }
    }
}

/// `schema` written without runs of whitespace (one space after a separator): a small model
/// that likes spaces cannot pad an answer out to its token limit. The caller's own llguidance
/// options give way to these.
fn compact(mut schema: Value) -> Value {
    if let Some(object) = schema.as_object_mut() {
        let options = json!({"whitespace_flexible": false, "item_separator": ", ", "key_separator": ": "});
        object.insert("x-guidance".into(), options);
    }
    schema
}

/// A model's constraint compiler: llguidance's view of its vocabulary, made on the first request
/// that needs it (a walk of every token, some hundreds of milliseconds) and kept with the model.
#[derive(Default)]
pub struct Guide {
    factory: OnceLock<Result<ParserFactory, String>>,
}

impl Guide {
    fn factory(&self, model: &LlamaModel) -> Result<&ParserFactory, Error> {
        self.factory
            .get_or_init(|| {
                let env = LlamaSampler::llguidance_tok_env(model);
                ParserFactory::new_simple(&env)
                    .map(|mut f| {
                        // Its warnings would reach stderr outside our log format.
                        f.set_stderr_log_level(0);
                        f
                    })
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| Error::internal(format!("the constraint compiler: {e}")))
    }

    /// The sampler that holds an answer to `constraint`; 400 naming the fault when the grammar
    /// cannot be compiled (a schema llguidance does not support).
    pub fn sampler(&self, model: &LlamaModel, constraint: &Constraint) -> Result<LlamaSampler, Error> {
        constraint.bounded()?;
        let parser = self.factory(model)?.create_parser(constraint.grammar()).map_err(refused)?;
        Ok(LlamaSampler::from(Matcher::new(Ok(parser))))
    }
}

fn refused(e: impl std::fmt::Display) -> Error {
    let mut why = e.to_string();
    why.truncate(300);
    Error::invalid(format!("the schema cannot be held to: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use llguidance::toktrie::ApproximateTokEnv;

    /// Whether `text`, one byte a token, is a whole answer the constraint allows.
    fn allows(c: &Constraint, text: &str) -> Result<bool, String> {
        let env = ApproximateTokEnv::single_byte_env();
        let mut factory = ParserFactory::new_simple(&env).map_err(|e| e.to_string())?;
        factory.set_stderr_log_level(0);
        let mut m = Matcher::new(Ok(factory.create_parser(c.grammar()).map_err(|e| e.to_string())?));
        let tokens = env.tokenize_bytes(text.as_bytes());
        if m.validate_tokens(&tokens).map_err(|e| e.to_string())? < tokens.len() {
            return Ok(false);
        }
        m.consume_tokens(&tokens).map_err(|e| e.to_string())?;
        m.is_accepting().map_err(|e| e.to_string())
    }

    #[test]
    fn a_json_object_is_one_object() {
        let c = Constraint::JsonObject;
        assert_eq!(allows(&c, r#"{"a": [1, 2]}"#), Ok(true));
        assert_eq!(allows(&c, "{\"a\":    1}"), Ok(false), "a run of spaces");
        assert_eq!(allows(&c, r#"[1]"#), Ok(false));
        assert_eq!(allows(&c, r#"{"a": 1} and more"#), Ok(false));
    }

    #[test]
    fn a_schema_holds_types_required_fields_and_enums() {
        let c = Constraint::JsonSchema(json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
            "required": ["city", "unit"], "additionalProperties": false,
        }));
        assert_eq!(allows(&c, r#"{"city": "Paris", "unit": "c"}"#), Ok(true));
        assert_eq!(allows(&c, r#"{"city": "Paris", "unit": "k"}"#), Ok(false));
        assert_eq!(allows(&c, r#"{"city": "Paris"}"#), Ok(false));
        assert_eq!(allows(&c, r#"{"city": 3, "unit": "c"}"#), Ok(false));
    }

    #[test]
    fn tool_calls_name_a_function_and_match_its_parameters() {
        let weather = json!({"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]});
        let time = json!({"type": "object", "properties": {}});
        let functions = vec![("get_weather".to_owned(), weather), ("get_time".to_owned(), time)];
        let one = Constraint::ToolCalls { functions: functions.clone(), parallel: false };
        let call = "<tool_call>\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n</tool_call>";
        assert_eq!(allows(&one, call), Ok(true));
        assert_eq!(allows(&one, &call.replace("get_weather", "rm_rf")), Ok(false));
        assert_eq!(allows(&one, &call.replace("\"city\"", "\"town\"")), Ok(false));
        assert_eq!(allows(&one, "It is sunny."), Ok(false));
        let two = format!("{call}\n<tool_call>\n{{\"name\": \"get_time\", \"arguments\": {{}}}}\n</tool_call>");
        assert_eq!(allows(&one, &two), Ok(false));
        assert_eq!(allows(&Constraint::ToolCalls { functions, parallel: true }, &two), Ok(true));
    }

    #[test]
    fn a_constraint_past_the_bound_is_refused_however_it_came() {
        let huge =
            Constraint::JsonSchema(json!({"type": "string", "description": "x".repeat(MAX_SCHEMA_BYTES + 1024)}));
        assert!(huge.bounded().unwrap_err().message.contains("exceeds"));
        assert!(Constraint::JsonSchema(json!({"description": "x".repeat(MAX_SCHEMA_BYTES - 100)})).bounded().is_ok());
    }

    #[test]
    fn a_schema_that_cannot_be_compiled_is_refused() {
        let c = Constraint::JsonSchema(json!({"type": "object", "if": {}}));
        assert!(allows(&c, "{}").is_err());
        assert!(refused("x".repeat(1000)).message.len() < 400);
    }
}
