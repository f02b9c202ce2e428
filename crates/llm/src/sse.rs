//! Server-sent events as OpenAI's streaming clients read them: one `data:` line of JSON per chunk,
//! a blank line after each, and `data: [DONE]` last.

/// One event carrying `json`. JSON text never holds a raw newline, so one `data:` line suffices.
pub fn event(json: &serde_json::Value) -> String {
    format!("data: {json}\n\n")
}

/// The event OpenAI's clients wait for before they close the stream.
pub const DONE: &str = "data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_one_data_line_then_a_blank_line() {
        let e = event(&serde_json::json!({"content": "two\nlines"}));
        assert_eq!(e, "data: {\"content\":\"two\\nlines\"}\n\n");
        assert_eq!(e.matches('\n').count(), 2);
        assert!(DONE.ends_with("\n\n"));
    }
}
