//! Secrets a job carries (an API key, a token, a password among its options or an item's
//! input) are used by the processors but never shown back: every job and item the API
//! answers with (and a schedule's job template), and so the event streams built from
//! them, has them as `"***"`.

use serde_json::Value;

/// What a secret is shown as.
pub const MASK: &str = "***";

/// Whether an option of this name carries a secret: `*_key` (but `idempotency_key`),
/// `*token*`, `*secret*`, `password`/`*_password`, `authorization`.
pub fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    (n.ends_with("_key") && n != "idempotency_key")
        || n == "apikey"
        || n.contains("token")
        || n.contains("secret")
        || n == "password"
        || n.ends_with("_password")
        || n == "authorization"
}

/// `value` with the string values of secret-named fields, and every value of a `headers`
/// object (an MCP server's headers), replaced by [`MASK`], at any depth. Numbers and
/// booleans stay (`max_tokens: 512` is no secret).
pub fn mask_secrets(value: Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let v = if k.eq_ignore_ascii_case("headers") && v.is_object() {
                        mask_all_strings(v)
                    } else if is_secret_name(&k) && v.is_string() {
                        Value::from(MASK)
                    } else {
                        mask_secrets(v)
                    };
                    (k, v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask_secrets).collect()),
        other => other,
    }
}

fn mask_all_strings(value: Value) -> Value {
    match value {
        Value::String(_) => Value::from(MASK),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, mask_all_strings(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(mask_all_strings).collect()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_options_are_masked_at_any_depth_and_the_rest_is_kept() {
        let options = json!({
            "check_command": "true",
            "llm_api_key": "sk-live-1",
            "github_token": "ghp_2",
            "client_secret": "s3",
            "password": "hunter2",
            "max_tokens": 512,
            "idempotency_key": "nightly-1",
            "mcp": {"url": "http://x", "headers": {"Authorization": "Bearer t", "X-Trace": "1"}},
            "items": [{"id": "a", "access_token": "t4", "path": "p"}],
        });
        let masked = mask_secrets(options);
        assert_eq!(
            masked,
            json!({
                "check_command": "true",
                "llm_api_key": "***",
                "github_token": "***",
                "client_secret": "***",
                "password": "***",
                "max_tokens": 512,
                "idempotency_key": "nightly-1",
                "mcp": {"url": "http://x", "headers": {"Authorization": "***", "X-Trace": "***"}},
                "items": [{"id": "a", "access_token": "***", "path": "p"}],
            })
        );
    }
}
