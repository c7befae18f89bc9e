//! Secrets a job carries (an API key, a token, a password among its options or an item's
//! input, an MCP server's header values, credentials in a URL) are used by the processors
//! but never shown back.
//!
//! Two layers, because a secret can leave by its name or by its value:
//! - by name, [`mask_secrets`]: every job and item the API answers with (and a schedule's
//!   job template), and so the event streams built from them, has secret-named fields
//!   and URL credentials as `"***"`;
//! - by value, [`Redactor`]: what a processor produces (an item's result and error) is
//!   scrubbed of the job's secret values before it is stored, so results, exports,
//!   `results.jsonl`, `/v1/batches` output files and webhooks built from them cannot echo
//!   a key that an upstream error message or a tool repeated.

use serde_json::Value;
use std::borrow::Cow;

/// What a secret is shown as.
pub const MASK: &str = "***";

/// Shortest value [`Redactor`] scrubs: shorter ones (`"1"`, `"true"`) would blank out
/// unrelated text, and are no secret worth the name.
pub const MIN_SECRET_LEN: usize = 6;

/// Whether an option of this name carries a secret: `*_key` (but `idempotency_key`),
/// `*token*`, `*secret*`, `password`/`*_password`, `authorization`. Only string values
/// are secrets: `max_tokens: 512` is a count.
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
/// object (an MCP server's headers), replaced by [`MASK`], at any depth; credentials in
/// URL strings are masked too (see [`mask_url`]). Numbers and booleans stay
/// (`max_tokens: 512` is no secret).
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
        Value::String(s) => match mask_url(&s) {
            Cow::Borrowed(_) => Value::String(s),
            Cow::Owned(masked) => Value::String(masked),
        },
        other => other,
    }
}

/// `s` with the credentials of an `http(s)://` URL masked: the password of its user info
/// (or the user alone, a token in the form `https://TOKEN@host`) and the values of
/// secret-named query parameters (`?access_token=…`). Anything else is returned as is.
pub fn mask_url(s: &str) -> Cow<'_, str> {
    let lower = s.get(..8).unwrap_or(s).to_ascii_lowercase();
    if !(lower.starts_with("http://") || lower.starts_with("https://")) {
        return Cow::Borrowed(s);
    }
    let Ok(mut url) = reqwest::Url::parse(s) else {
        return Cow::Borrowed(s);
    };
    let mut changed = false;
    if url.password().is_some() {
        changed |= url.set_password(Some(MASK)).is_ok();
    } else if !url.username().is_empty() {
        changed |= url.set_username(MASK).is_ok();
    }
    if url
        .query_pairs()
        .any(|(k, v)| is_secret_name(&k) && v != MASK)
    {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_name(&k) {
                    MASK.to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
        changed = true;
    }
    if changed {
        Cow::Owned(url.to_string())
    } else {
        Cow::Borrowed(s)
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

/// A secret string: used as is, shown by `Debug` (and so in logs and panics) as [`MASK`].
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

/// `Debug` of an optional secret: `Some("***")` or `None`, never the value.
pub fn debug_option(s: &Option<String>) -> Option<&'static str> {
    s.as_ref().map(|_| MASK)
}

/// The secret values of a job (its options and an item's input), to scrub from what its
/// processor produces: every string [`mask_secrets`] would mask, and the credentials
/// inside URL strings.
#[derive(Default, Clone)]
pub struct Redactor {
    /// Longest first, so a secret that contains another is replaced whole.
    values: Vec<String>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("values", &self.values.len())
            .finish()
    }
}

impl Redactor {
    /// The secrets found in `sources` (a job's options, an item's payload…).
    pub fn of<'a>(sources: impl IntoIterator<Item = &'a Value>) -> Redactor {
        let mut values = Vec::new();
        for source in sources {
            collect(source, false, &mut values);
        }
        values.retain(|v| v.len() >= MIN_SECRET_LEN && v != MASK);
        values.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        values.dedup();
        Redactor { values }
    }

    /// A redactor of these values (an engine's `--llm-api-key`, say).
    pub fn with_values(mut self, more: impl IntoIterator<Item = String>) -> Redactor {
        self.values
            .extend(more.into_iter().filter(|v| v.len() >= MIN_SECRET_LEN));
        self.values
            .sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        self.values.dedup();
        self
    }

    /// This redactor with `other`'s values too (a job's secrets and the engine's).
    pub fn and(self, other: &Redactor) -> Redactor {
        if other.is_empty() {
            return self;
        }
        self.with_values(other.values.iter().cloned())
    }

    /// Whether there is nothing to scrub.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// `s` with every secret value replaced by [`MASK`].
    pub fn scrub_str<'a>(&self, s: &'a str) -> Cow<'a, str> {
        let mut out = Cow::Borrowed(s);
        for secret in &self.values {
            if out.contains(secret.as_str()) {
                out = Cow::Owned(out.replace(secret.as_str(), MASK));
            }
        }
        out
    }

    /// `value` with every secret value replaced by [`MASK`] in its strings (keys
    /// included), at any depth.
    pub fn scrub(&self, value: Value) -> Value {
        if self.is_empty() {
            return value;
        }
        match value {
            Value::String(s) => match self.scrub_str(&s) {
                Cow::Borrowed(_) => Value::String(s),
                Cow::Owned(t) => Value::String(t),
            },
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.scrub(v)).collect()),
            Value::Object(map) => Value::Object(
                map.into_iter()
                    .map(|(k, v)| (self.scrub_str(&k).into_owned(), self.scrub(v)))
                    .collect(),
            ),
            other => other,
        }
    }
}

/// Pushes the secret strings of `value` onto `out`; `all` when every string is one (the
/// values of a `headers` object).
fn collect(value: &Value, all: bool, out: &mut Vec<String>) {
    match value {
        Value::String(s) if all => push_secret(s, out),
        Value::String(s) => collect_url(s, out),
        Value::Array(items) => items.iter().for_each(|v| collect(v, all, out)),
        Value::Object(map) => {
            for (k, v) in map {
                match v {
                    Value::String(s) if is_secret_name(k) => push_secret(s, out),
                    _ => collect(v, all || k.eq_ignore_ascii_case("headers"), out),
                }
            }
        }
        _ => {}
    }
}

/// Pushes `s`, and the credential alone of a `Bearer …`-style value, which may be echoed
/// without its scheme.
fn push_secret(s: &str, out: &mut Vec<String>) {
    out.push(s.to_string());
    if let Some((_, token)) = s.trim().split_once(' ') {
        out.push(token.trim().to_string());
    }
}

/// Pushes the credentials of an `http(s)://` URL onto `out`.
fn collect_url(s: &str, out: &mut Vec<String>) {
    if mask_url(s) == s {
        return;
    }
    let Ok(url) = reqwest::Url::parse(s) else {
        return;
    };
    if let Some(p) = url.password() {
        out.push(p.to_string());
    } else if !url.username().is_empty() {
        out.push(url.username().to_string());
    }
    for (k, v) in url.query_pairs() {
        if is_secret_name(&k) {
            out.push(v.into_owned());
        }
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

    #[test]
    fn credentials_in_urls_are_masked_and_plain_urls_kept_verbatim() {
        assert_eq!(
            mask_url("https://hooks.example/x?id=7&access_token=abc123"),
            "https://hooks.example/x?id=7&access_token=***"
        );
        assert_eq!(
            mask_url("https://bob:pw-123@example.com/a"),
            "https://bob:***@example.com/a"
        );
        assert_eq!(
            mask_url("https://ghp_abcdef@github.com/o/r.git"),
            "https://***@github.com/o/r.git"
        );
        for plain in ["http://127.0.0.1:8000/hook?id=1", "not a url", "HTTP://X/"] {
            assert!(matches!(mask_url(plain), Cow::Borrowed(_)), "{plain}");
        }
        assert_eq!(
            mask_secrets(json!({"callback_url": "http://h/?token=zzzzzz"})),
            json!({"callback_url": "http://h/?token=***"})
        );
    }

    #[test]
    fn a_redactor_scrubs_the_values_of_secrets_wherever_they_are_echoed() {
        let options = json!({
            "llm_api_key": "sk-live-123456",
            "headers": {"Authorization": "Bearer mcp-tok-987654", "X-Short": "1"},
            "callback_url": "http://h/?token=hook-tok-5555",
            "check_command": "pytest -q",
        });
        let r = Redactor::of([&options]);
        let echoed = json!({
            "error": "401 from upstream: key sk-live-123456 rejected",
            "said mcp-tok-987654": ["hook-tok-5555", "Bearer mcp-tok-987654"],
            "exit_code": 1,
            "note": "1 pytest -q",
        });
        assert_eq!(
            r.scrub(echoed),
            json!({
                "error": "401 from upstream: key *** rejected",
                "said ***": ["***", "***"],
                "exit_code": 1,
                "note": "1 pytest -q",
            })
        );
        assert!(Redactor::of([&json!({"check_command": "true"})]).is_empty());
        assert_eq!(format!("{r:?}"), "Redactor { values: 4 }");
        assert_eq!(format!("{:?}", Some(Secret::new("sk-1"))), "Some(\"***\")");
    }
}
