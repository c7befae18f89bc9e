//! Raw request bodies: a JSON object parsed with the path of every bad field, and a JSONL
//! submission turned into the JSON body its endpoint takes.

use super::SubmissionError;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Parses a JSON object body into `T`, keeping the raw object for the job's options.
/// Not JSON → 400; JSON of the wrong shape → 422 naming the field.
pub fn parse_body<T: DeserializeOwned>(
    body: &[u8],
) -> Result<(T, Map<String, Value>), SubmissionError> {
    not_empty(body)?;
    let raw: Value = serde_json::from_slice(body)
        .map_err(|e| SubmissionError::Malformed(format!("request body is not valid JSON: {e}")))?;
    let Value::Object(object) = raw else {
        return Err(SubmissionError::invalid(
            "body",
            format!("expected a JSON object, got {}", json_type(&raw)),
        ));
    };
    let value = Value::Object(object);
    let typed = serde_path_to_error::deserialize(&value)
        .map_err(|e| shape_error(e.path().to_string(), e.inner().to_string()))?;
    let Value::Object(object) = value else {
        unreachable!("checked above")
    };
    Ok((typed, object))
}

/// Like [`parse_body`] for a body whose `items_field` may hold a million items: `T` is
/// read from the text itself, so its items can stay JSON text (`Box<RawValue>`), and the
/// raw object of options comes back without `items_field`. No `Value` tree of the items
/// is ever built (one would be ~600 bytes an item).
pub fn parse_items_body<T: DeserializeOwned>(
    body: &[u8],
    items_field: &str,
) -> Result<(T, Map<String, Value>), SubmissionError> {
    not_empty(body)?;
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        // Not an object: `parse_body` refuses it, naming what it is.
        return parse_body(body);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let raw = serde::de::DeserializeSeed::deserialize(OptionsOnly(items_field), &mut de)
        .and_then(|raw| de.end().map(|()| raw))
        .map_err(|e| SubmissionError::Malformed(format!("request body is not valid JSON: {e}")))?;
    let mut de = serde_json::Deserializer::from_slice(body);
    let typed = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let inner = e.inner();
        // The text's position means nothing to the caller, who gets the field's path.
        let message = inner.to_string();
        let at = format!(" at line {} column {}", inner.line(), inner.column());
        let message = message.strip_suffix(&at).unwrap_or(&message).to_string();
        shape_error(e.path().to_string(), message)
    })?;
    Ok((typed, raw))
}

fn not_empty(body: &[u8]) -> Result<(), SubmissionError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(SubmissionError::Malformed(
            "request body is empty; expected a JSON object".into(),
        ));
    }
    Ok(())
}

/// A body of the wrong shape, as a 422 naming the field: serde reports a missing field
/// at its parent's path, so the field itself is named (an unknown field of a body that
/// denies them is reported at its own path).
fn shape_error(path: String, message: String) -> SubmissionError {
    let field = match message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        Some(name) if path == "." => name.to_string(),
        Some(name) => format!("{path}.{name}"),
        None if path == "." => "body".to_string(),
        None => path,
    };
    SubmissionError::invalid(field, message)
}

/// Reads a JSON object into a map of its fields but one, whose value is only checked to
/// be JSON (skipped without being kept).
struct OptionsOnly<'a>(&'a str);

impl<'de> serde::de::DeserializeSeed<'de> for OptionsOnly<'_> {
    type Value = Map<String, Value>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for OptionsOnly<'_> {
    type Value = Map<String, Value>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if key == self.0 {
                map.next_value::<serde::de::IgnoredAny>()?;
            } else {
                let value: Value = map.next_value()?;
                out.insert(key, value);
            }
        }
        Ok(out)
    }
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Query options of a JSONL submission that are numbers; every other one is a string.
const NUMERIC_OPTIONS: [&str; 15] = [
    "parallel",
    "priority",
    "max_attempts",
    "retry_delay_seconds",
    "retry_max_delay_seconds",
    "item_timeout_seconds",
    "timeout_seconds",
    "max_output_bytes",
    "max_loops",
    "chunk_size",
    "max_steps",
    "temperature",
    "llm_timeout_seconds",
    "llm_retries",
    "max_total_tokens",
];

/// Query options of a JSONL submission that are booleans.
const BOOLEAN_OPTIONS: [&str; 2] = ["run_on_failure", "apply_changes"];

/// Turns a JSONL submission (`application/x-ndjson`: one item a line, each with its own
/// `custom_id`, options in the query string) into the JSON body the endpoint takes, so
/// both forms go through the same checks. A bad line is refused with its line number.
pub fn ndjson_body(
    body: &[u8],
    items_field: &str,
    query: &str,
) -> Result<Vec<u8>, SubmissionError> {
    let text = std::str::from_utf8(body)
        .map_err(|e| SubmissionError::Malformed(format!("request body is not UTF-8: {e}")))?;
    // Files written by some Windows tools start with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).map_err(|e| {
        SubmissionError::invalid("query", format!("cannot parse query string: {e}"))
    })?;
    let mut object = Map::new();
    for (k, v) in pairs {
        let value = if k == "depends_on" {
            // A list in a query string: comma-separated job ids.
            Value::Array(
                v.split(',')
                    .map(|id| Value::String(id.trim().to_string()))
                    .collect(),
            )
        } else if BOOLEAN_OPTIONS.contains(&k.as_str()) {
            match v.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => {
                    return Err(SubmissionError::invalid(
                        k.clone(),
                        format!("must be true or false, got '{v}'"),
                    ))
                }
            }
        } else if NUMERIC_OPTIONS.contains(&k.as_str()) {
            serde_json::from_str::<serde_json::Number>(&v)
                .map(Value::Number)
                .map_err(|_| {
                    SubmissionError::invalid(k.clone(), format!("must be a number, got '{v}'"))
                })?
        } else {
            Value::String(v)
        };
        object.insert(k, value);
    }
    object.remove(items_field);
    // Written as text line by line: only one line's `Value` exists at a time.
    let mut out = Vec::with_capacity(body.len() + 256);
    let options = Value::Object(object).to_string();
    out.extend_from_slice(&options.as_bytes()[..options.len() - 1]);
    if options.len() > 2 {
        out.push(b',');
    }
    out.extend_from_slice(Value::from(items_field).to_string().as_bytes());
    out.extend_from_slice(b":[");
    let mut first = true;
    for (n, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(line).map_err(|e| {
            SubmissionError::Malformed(format!("line {}: not valid JSON: {e}", n + 1))
        })?;
        let Value::Object(mut item) = value else {
            return Err(SubmissionError::invalid(
                format!("line {}", n + 1),
                format!("expected a JSON object, got {}", json_type(&value)),
            ));
        };
        if let Some(custom_id) = item.remove("custom_id") {
            item.entry("id").or_insert(custom_id);
        }
        if !first {
            out.push(b',');
        }
        first = false;
        serde_json::to_writer(&mut out, &item)
            .map_err(|e| SubmissionError::Malformed(format!("line {}: {e}", n + 1)))?;
    }
    out.extend_from_slice(b"]}");
    Ok(out)
}
