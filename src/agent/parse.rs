//! Tool calls a model wrote in its text instead of calling natively. Small local models do
//! this a lot, even when the server offers tools: as a bare JSON object, in a markdown
//! fence, inside `<tool_call>` tags (Qwen's and Hermes' format), or several at once.
//!
//! Accepted shapes, alone, in an array or under `tool_calls`:
//! `{"name": N, "arguments": {…}}` (also `args`, `parameters`, `input`, or the arguments
//! as a JSON string), `{"tool": N, …}`, `{"function": {"name": N, "arguments": …}}`.

use super::llm::ToolCall;
use serde_json::{Map, Value};

/// What a reply's text holds.
#[derive(Debug, Clone, PartialEq)]
pub enum TextCalls {
    /// No tool call: the model is talking (or done).
    None,
    /// Tool calls, in order.
    Calls(Vec<ToolCall>),
    /// Something meant as a tool call that does not parse; the reason, for the model.
    Invalid(String),
}

/// Finds the tool calls in `text`.
pub fn parse_tool_calls(text: &str) -> TextCalls {
    let mut candidates: Vec<(&str, bool)> = Vec::new();
    for inner in tagged(text, "<tool_call>", "</tool_call>") {
        candidates.push((inner, true));
    }
    if candidates.is_empty() {
        for (lang, body) in fences(text) {
            let lang = lang.to_ascii_lowercase();
            let jsonish = matches!(
                lang.as_str(),
                "json" | "jsonc" | "json5" | "tool" | "tool_call" | "tool_code" | "javascript"
            ) || lang.is_empty();
            if jsonish {
                candidates.push((body, false));
            }
        }
    }
    if candidates.is_empty() {
        let trimmed = text.trim();
        if trimmed.starts_with('{') || trimmed.starts_with('[') {
            candidates.push((trimmed, false));
        } else {
            // Prose around objects: take each balanced object that is a call.
            let mut calls = Vec::new();
            for object in balanced_objects(text) {
                if let Ok(v) = serde_json::from_str::<Value>(object) {
                    extract(&v, &mut calls);
                }
            }
            return finish(calls);
        }
    }
    let mut calls = Vec::new();
    let mut invalid = None;
    for (body, always_meant) in candidates {
        let body = body.trim();
        match parse_values(body) {
            Ok(values) => {
                let before = calls.len();
                for v in &values {
                    extract(v, &mut calls);
                }
                if calls.len() == before && always_meant {
                    invalid.get_or_insert_with(|| {
                        format!("the tool call {} has no tool name", clip(body))
                    });
                }
            }
            Err(e) if always_meant || looks_like_call(body) => {
                invalid.get_or_insert_with(|| {
                    format!("the tool call is not valid JSON ({e}): {}", clip(body))
                });
            }
            Err(_) => {}
        }
    }
    match (calls.is_empty(), invalid) {
        (true, Some(reason)) => TextCalls::Invalid(reason),
        _ => finish(calls),
    }
}

fn finish(calls: Vec<ToolCall>) -> TextCalls {
    if calls.is_empty() {
        TextCalls::None
    } else {
        TextCalls::Calls(calls)
    }
}

fn looks_like_call(body: &str) -> bool {
    (body.starts_with('{') || body.starts_with('['))
        && ["\"name\"", "\"tool\"", "\"function\"", "\"arguments\""]
            .iter()
            .any(|k| body.contains(k))
}

fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(160).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

/// One JSON value, or several one after another (one a line, say).
fn parse_values(body: &str) -> Result<Vec<Value>, serde_json::Error> {
    match serde_json::from_str::<Value>(body) {
        Ok(v) => Ok(vec![v]),
        Err(first) => {
            let values: Result<Vec<Value>, _> = serde_json::Deserializer::from_str(body)
                .into_iter()
                .collect();
            match values {
                Ok(v) if v.len() > 1 => Ok(v),
                _ => Err(first),
            }
        }
    }
}

fn extract(v: &Value, calls: &mut Vec<ToolCall>) {
    match v {
        Value::Array(items) => items.iter().for_each(|i| extract(i, calls)),
        Value::Object(o) => {
            if let Some(inner) = o.get("tool_calls") {
                extract(inner, calls);
                return;
            }
            if let Some(Value::Object(f)) = o.get("function") {
                if let Some(call) = call_from(f, calls.len()) {
                    calls.push(call);
                }
                return;
            }
            if let Some(call) = call_from(o, calls.len()) {
                calls.push(call);
            }
        }
        _ => {}
    }
}

fn call_from(o: &Map<String, Value>, n: usize) -> Option<ToolCall> {
    let name = ["name", "tool", "tool_name", "function"]
        .iter()
        .find_map(|k| o.get(*k).and_then(Value::as_str))?
        .trim();
    if name.is_empty() {
        return None;
    }
    let arguments = ["arguments", "args", "parameters", "input", "params"]
        .iter()
        .find_map(|k| o.get(*k));
    let arguments = match arguments {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(Value::String(s)) => {
            serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.clone()))
        }
        Some(other) => other.clone(),
    };
    Some(ToolCall {
        id: format!("text_{n}"),
        name: name.to_string(),
        arguments,
    })
}

/// The contents between each `open` and its `close` (or the end of the text).
fn tagged<'a>(text: &'a str, open: &str, close: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find(open) {
        let after = &rest[start + open.len()..];
        match after.find(close) {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + close.len()..];
            }
            None => {
                out.push(after);
                break;
            }
        }
    }
    out
}

/// Markdown fences: `(language, body)` of each, an unclosed last one running to the end.
fn fences(text: &str) -> Vec<(&str, &str)> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("```") {
        let after = &rest[start + 3..];
        let (lang, body_start) = match after.find('\n') {
            Some(nl) => (after[..nl].trim(), nl + 1),
            None => ("", after.len()),
        };
        let body = &after[body_start..];
        match body.find("```") {
            Some(end) => {
                out.push((lang, &body[..end]));
                rest = &body[end + 3..];
            }
            None => {
                out.push((lang, body));
                break;
            }
        }
    }
    out
}

/// Top-level `{…}` spans of `text`, braces inside JSON strings ignored.
fn balanced_objects(text: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] != b'{' {
            i += 1;
            continue;
        }
        let (mut depth, mut in_string, mut escaped) = (0usize, false, false);
        let mut end = None;
        for (j, &b) in bytes.iter().enumerate().skip(i) {
            if in_string {
                match (escaped, b) {
                    (true, _) => escaped = false,
                    (false, b'\\') => escaped = true,
                    (false, b'"') => in_string = false,
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => in_string = true,
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = Some(j);
                        break;
                    }
                }
                _ => {}
            }
        }
        match end {
            Some(j) => {
                out.push(&text[i..=j]);
                i = j + 1;
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn calls(text: &str) -> Vec<(String, Value)> {
        match parse_tool_calls(text) {
            TextCalls::Calls(c) => c.into_iter().map(|c| (c.name, c.arguments)).collect(),
            other => panic!("expected calls in {text:?}, got {other:?}"),
        }
    }

    #[test]
    fn bare_and_fenced_json_calls_are_found() {
        let bare = r#"{"name": "read_file", "arguments": {"path": "a.py"}}"#;
        assert_eq!(calls(bare), [("read_file".into(), json!({"path": "a.py"}))]);
        let fenced = "I'll write it now.\n```json\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"x.py\", \"content\": \"print('}')\\n\"}}\n```\nDone.";
        assert_eq!(
            calls(fenced),
            [(
                "write_file".into(),
                json!({"path": "x.py", "content": "print('}')\n"})
            )]
        );
        let unlabeled = "```\n{\"tool\": \"list_files\", \"args\": {}}\n```";
        assert_eq!(calls(unlabeled), [("list_files".into(), json!({}))]);
        let qwen = "<tool_call>\n{\"name\": \"finish\", \"arguments\": {\"summary\": \"ok\"}}\n</tool_call>";
        assert_eq!(calls(qwen), [("finish".into(), json!({"summary": "ok"}))]);
    }

    #[test]
    fn other_shapes_and_several_calls_are_found() {
        let openai_like = r#"{"tool_calls": [{"function": {"name": "read_file", "arguments": "{\"path\": \"b\"}"}}, {"function": {"name": "finish"}}]}"#;
        assert_eq!(
            calls(openai_like),
            [
                ("read_file".into(), json!({"path": "b"})),
                ("finish".into(), json!({}))
            ]
        );
        let array = r#"[{"name": "a", "parameters": {"x": 1}}, {"name": "b"}]"#;
        assert_eq!(calls(array).len(), 2);
        let lines = "{\"name\": \"a\"}\n{\"name\": \"b\"}";
        assert_eq!(calls(lines).len(), 2);
        let prose =
            r#"First I read it: {"name": "read_file", "arguments": {"path": "c"}} and then see."#;
        assert_eq!(calls(prose), [("read_file".into(), json!({"path": "c"}))]);
        let two_fences = "```json\n{\"name\": \"a\"}\n```\ntext\n```json\n{\"name\": \"b\"}\n```";
        assert_eq!(calls(two_fences).len(), 2);
    }

    #[test]
    fn prose_and_plain_json_are_not_calls_but_broken_calls_are_reported() {
        assert_eq!(
            parse_tool_calls("All done, the tests pass."),
            TextCalls::None
        );
        assert_eq!(parse_tool_calls(""), TextCalls::None);
        assert_eq!(
            parse_tool_calls("Config:\n```json\n{\"debug\": true}\n```"),
            TextCalls::None
        );
        assert_eq!(
            parse_tool_calls("```python\nprint({'name': 1})\n```"),
            TextCalls::None
        );
        let truncated = r#"{"name": "write_file", "arguments": {"path": "a.txt", "content": "#;
        match parse_tool_calls(truncated) {
            TextCalls::Invalid(reason) => assert!(reason.contains("not valid JSON"), "{reason}"),
            other => panic!("{other:?}"),
        }
        match parse_tool_calls("```json\n{\"name\": 'single quotes'}\n```") {
            TextCalls::Invalid(_) => {}
            other => panic!("{other:?}"),
        }
        match parse_tool_calls("<tool_call>{\"arguments\": {}}</tool_call>") {
            TextCalls::Invalid(reason) => assert!(reason.contains("no tool name"), "{reason}"),
            other => panic!("{other:?}"),
        }
    }
}
