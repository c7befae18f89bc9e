//! Reading the string arguments of a tool call, for the built-in MCP server's tools and
//! the agent's workspace tools, which mirror them.
//!
//! The two differ in one rule, kept as each was: the MCP server takes a client's string
//! exactly (only `""` is blank, so a name of spaces is a name), while the agent's tools
//! take a whitespace-only string from the model as not given.

use serde_json::{Map, Value};

/// Which strings count as not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blank {
    /// Only the empty string (the MCP server).
    Empty,
    /// The empty string and whitespace only (the agent's tools).
    Whitespace,
}

impl Blank {
    fn is_blank(self, s: &str) -> bool {
        match self {
            Blank::Empty => s.is_empty(),
            Blank::Whitespace => s.trim().is_empty(),
        }
    }
}

/// The string argument `name`, which must be present and not blank.
pub fn required_str<'a>(
    args: &'a Map<String, Value>,
    name: &str,
    blank: Blank,
) -> Result<&'a str, String> {
    match args.get(name) {
        Some(Value::String(s)) if !blank.is_blank(s) => Ok(s),
        Some(Value::String(_)) => Err(format!("argument '{name}' must not be empty")),
        None | Some(Value::Null) => Err(format!("missing required argument '{name}' (a string)")),
        Some(other) => Err(format!("argument '{name}' must be a string, got {other}")),
    }
}

/// The string argument `name`, `None` when absent, null or blank.
pub fn optional_str<'a>(
    args: &'a Map<String, Value>,
    name: &str,
    blank: Blank,
) -> Result<Option<&'a str>, String> {
    match args.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if blank.is_blank(s) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("argument '{name}' must be a string, got {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn blank_strings_are_judged_per_caller() {
        let a = args(json!({"p": "src", "s": "  ", "e": "", "n": null, "i": 3}));
        for blank in [Blank::Empty, Blank::Whitespace] {
            assert_eq!(required_str(&a, "p", blank), Ok("src"));
            assert_eq!(optional_str(&a, "p", blank), Ok(Some("src")));
            assert!(required_str(&a, "e", blank).unwrap_err().contains("empty"));
            assert_eq!(optional_str(&a, "e", blank), Ok(None));
            assert!(required_str(&a, "n", blank)
                .unwrap_err()
                .contains("missing"));
            assert!(required_str(&a, "x", blank)
                .unwrap_err()
                .contains("missing"));
            assert_eq!(optional_str(&a, "n", blank), Ok(None));
            assert!(optional_str(&a, "i", blank).unwrap_err().contains("got 3"));
        }
        // Spaces are a name to the MCP server, nothing to the agent's tools.
        assert_eq!(required_str(&a, "s", Blank::Empty), Ok("  "));
        assert_eq!(optional_str(&a, "s", Blank::Empty), Ok(Some("  ")));
        assert!(required_str(&a, "s", Blank::Whitespace)
            .unwrap_err()
            .contains("empty"));
        assert_eq!(optional_str(&a, "s", Blank::Whitespace), Ok(None));
    }
}
