//! The top-level fields each submission body may have, and the checks that hold every
//! body to them: an unknown field (`"paralel": 3`) is refused naming it, with the closest
//! known field suggested, instead of being kept as an option nobody reads; and text the
//! store cannot hold (a NUL character) is refused at the edge, naming its field.
//!
//! The rule for `POST /batch/jobs` (and cron schedules' job templates, which are such
//! bodies): a built-in kind is held to the same fields as its own endpoint; any other
//! kind belongs to an embedder whose options the engine cannot know, so only the
//! engine's own fields are checked there — a field one or two edits away from one of them
//! (`paralel`, `max_attempt`) is refused as a typo, every other field passes to the
//! processor as an option. JSONL submissions' query options are body fields (see
//! [`super::ndjson_body`]) and follow the same rule.

use super::SubmissionError;
use serde_json::Value;

/// Fields every submission takes, whatever its kind: the job's own (`parallel`,
/// `metadata`), the scheduling fields and the engine's options (read by
/// [`crate::model::JobOptions`] and the webhook outbox).
pub const ENGINE_FIELDS: &[&str] = &[
    "parallel",
    "metadata",
    "priority",
    "run_at",
    "idempotency_key",
    "callback_url",
    "depends_on",
    "run_on_failure",
    "max_attempts",
    "retry_delay_seconds",
    "retry_max_delay_seconds",
    "item_timeout_seconds",
    "deadline",
    "concurrency_group",
];

/// Fields the Python original accepted that this engine keeps accepting (and ignores):
/// `chunk_size` split agent batches into chunks, which the per-job `parallel` replaces.
pub const COMPAT_FIELDS: &[&str] = &["chunk_size"];

/// Options of `batch_validation` (read by its processor).
pub const VALIDATION_OPTIONS: &[&str] = &[
    "check_command",
    "timeout_seconds",
    "max_output_bytes",
    "target_kind",
    "sandbox",
    "network",
    "env",
    "memory_mb",
    "cpu_seconds",
    "max_processes",
    "max_file_mb",
];
/// Options of `batch_tests` (read by its processor).
pub const TESTS_OPTIONS: &[&str] = &[
    "test_command",
    "timeout_seconds",
    "max_output_bytes",
    "target_kind",
    "sandbox",
    "network",
    "env",
    "memory_mb",
    "cpu_seconds",
    "max_processes",
    "max_file_mb",
];
/// Options of `batch_agent_tasks` (read by `AgentOptions::parse`).
pub const AGENT_OPTIONS: &[&str] = &[
    "coder_model",
    "reviewer_model",
    "max_loops",
    "max_steps",
    "check_command",
    "apply_changes",
    "workspace_mode",
    "llm_url",
    "api",
    "llm_api_key",
    "temperature",
    "options",
    "keep_alive",
    "timeout_seconds",
    "llm_timeout_seconds",
    "llm_retries",
    "max_total_tokens",
    "max_output_bytes",
    "sandbox",
    "network",
    "env",
    "memory_mb",
    "cpu_seconds",
    "max_processes",
    "max_file_mb",
];
/// Options of `batch_mcp` (read by its processor).
pub const MCP_OPTIONS: &[&str] = &["server", "timeout_seconds", "headers"];
/// Options of `batch_llm` (read by `LlmBatchOptions::parse`).
pub const LLM_OPTIONS: &[&str] = &[
    "llm_url",
    "api",
    "llm_api_key",
    "llm_timeout_seconds",
    "llm_retries",
    "max_total_tokens",
];
/// Options of `noop`: none (its items carry `sleep_ms` themselves).
pub const NOOP_OPTIONS: &[&str] = &[];

/// The options of a built-in kind; `None` for a kind an embedder registered.
pub fn kind_options(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        crate::processors::validation::KIND => VALIDATION_OPTIONS,
        crate::processors::test_suite::KIND => TESTS_OPTIONS,
        crate::processors::agent::KIND => AGENT_OPTIONS,
        crate::processors::mcp::KIND => MCP_OPTIONS,
        crate::processors::noop::KIND => NOOP_OPTIONS,
        crate::processors::llm_batch::KIND => LLM_OPTIONS,
        _ => return None,
    })
}

/// What a body may hold besides the engine's and the compatibility fields.
pub enum Known<'a> {
    /// Exactly these fields (an endpoint's items field and its kind's options).
    Exactly(&'a [&'a str], &'a [&'a str]),
    /// These, and any other field that is not a near miss of an engine field: an
    /// embedder's kind, whose options cannot be known.
    Open(&'a [&'a str]),
}

/// Refuses the body's unknown top-level fields: the error names the first, the message
/// lists them all and suggests the closest known field where one is close.
pub fn check_fields(
    raw: &serde_json::Map<String, Value>,
    known: Known<'_>,
) -> Result<(), SubmissionError> {
    let (own, options, open): (&[&str], &[&str], bool) = match known {
        Known::Exactly(own, options) => (own, options, false),
        Known::Open(own) => (own, &[], true),
    };
    let is_known = |k: &str| {
        ENGINE_FIELDS.contains(&k)
            || COMPAT_FIELDS.contains(&k)
            || own.contains(&k)
            || options.contains(&k)
    };
    let candidates = || {
        ENGINE_FIELDS
            .iter()
            .chain(own)
            .chain(options)
            .copied()
            .filter(|c| !COMPAT_FIELDS.contains(c))
    };
    let mut unknown: Vec<(&str, Option<&str>)> = Vec::new();
    for key in raw.keys() {
        if is_known(key) {
            continue;
        }
        let suggestion = closest(key, candidates());
        if open {
            // An embedder's option passes unless it is a near miss of an engine field.
            match closest(key, ENGINE_FIELDS.iter().copied()) {
                Some(engine) => unknown.push((key, Some(engine))),
                None => continue,
            }
        } else {
            unknown.push((key, suggestion));
        }
    }
    let Some((first, _)) = unknown.first() else {
        return Ok(());
    };
    let described: Vec<String> = unknown
        .iter()
        .map(|(k, s)| match s {
            Some(s) => format!("`{k}` (did you mean `{s}`?)"),
            None => format!("`{k}`"),
        })
        .collect();
    let mut message = format!(
        "unknown field{} {}",
        if unknown.len() > 1 { "s" } else { "" },
        described.join(", ")
    );
    if !open {
        let mut all: Vec<&str> = candidates().collect();
        all.sort_unstable();
        all.dedup();
        message.push_str(&format!("; expected one of {}", all.join(", ")));
    }
    Err(SubmissionError::invalid(*first, message))
}

/// The candidate closest to `name` by edit distance, if it is close enough to be a typo:
/// at most 2 edits, and fewer than a third of the name's length plus one.
fn closest<'a>(name: &str, candidates: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    let limit = (name.chars().count() / 3).clamp(1, 2);
    candidates
        .map(|c| (edit_distance(&name.to_ascii_lowercase(), c), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// Levenshtein distance, by characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut prev = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let cur = row[j + 1];
            row[j + 1] = if ca == *cb {
                prev
            } else {
                1 + prev.min(cur).min(row[j])
            };
            prev = cur;
        }
    }
    row[b.len()]
}

/// Where a NUL character is in `v` (a string or a key), as a field path under `field`.
pub fn nul_at(v: &Value, field: &str) -> Option<String> {
    match v {
        Value::String(s) if s.contains('\0') => Some(field.to_string()),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, v)| nul_at(v, &format!("{field}[{i}]"))),
        Value::Object(o) => o.iter().find_map(|(k, v)| {
            if k.contains('\0') {
                Some(field.to_string())
            } else {
                nul_at(v, &format!("{field}.{k}"))
            }
        }),
        _ => None,
    }
}

/// Refuses text that holds a NUL character: PostgreSQL cannot store one in a text
/// column, so it is refused on either backend and a request means the same on both.
pub fn check_text(field: &str, text: &str) -> Result<(), SubmissionError> {
    if text.contains('\0') {
        return Err(SubmissionError::invalid(
            field,
            "NUL characters (\\u0000) are not allowed here",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(body: Value, known: Known<'_>) -> Option<(String, String)> {
        let Value::Object(raw) = body else {
            unreachable!()
        };
        match check_fields(&raw, known) {
            Ok(()) => None,
            Err(SubmissionError::Invalid(e)) => Some((e.field, e.message)),
            Err(other) => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_typo_is_named_with_the_field_it_was_meant_to_be() {
        let own = Known::Exactly(&["targets"], VALIDATION_OPTIONS);
        let (field, message) = refused(json!({"targets": [], "paralel": 3}), own).unwrap();
        assert_eq!(field, "paralel");
        assert!(message.contains("did you mean `parallel`?"), "{message}");
        let own = Known::Exactly(&["targets"], VALIDATION_OPTIONS);
        let (field, message) = refused(json!({"check_comand": "x", "zzz": 1}), own).unwrap();
        assert_eq!(field, "check_comand");
        assert!(message.contains("`check_command`"), "{message}");
        assert!(
            message.contains("`zzz`,") || message.contains("`zzz`;"),
            "{message}"
        );
    }

    #[test]
    fn known_engine_option_and_compat_fields_pass() {
        let body = json!({"targets": [], "parallel": 2, "chunk_size": 20, "max_attempts": 2,
                          "check_command": "true", "deadline": 5, "metadata": {}});
        assert_eq!(
            refused(body, Known::Exactly(&["targets"], VALIDATION_OPTIONS)),
            None
        );
    }

    #[test]
    fn an_embedders_kind_takes_any_option_but_near_misses_of_engine_fields() {
        let open = || Known::Open(&["type", "items"]);
        assert_eq!(refused(json!({"model": "x", "shards": 4}), open()), None);
        let (field, message) = refused(json!({"model": "x", "max_attempt": 2}), open()).unwrap();
        assert_eq!(field, "max_attempt");
        assert!(message.contains("`max_attempts`"), "{message}");
    }

    #[test]
    fn nul_is_found_with_its_path() {
        assert_eq!(
            nul_at(&json!({"a": [1, "x\u{0}"]}), "metadata").unwrap(),
            "metadata.a[1]"
        );
        assert_eq!(
            nul_at(&json!({"a\u{0}": 1}), "metadata").unwrap(),
            "metadata"
        );
        assert_eq!(nul_at(&json!({"a": "fine"}), "metadata"), None);
        assert!(check_text("name", "a\u{0}").is_err());
        assert!(check_text("name", "a").is_ok());
    }

    #[test]
    fn edit_distance_counts_edits() {
        assert_eq!(edit_distance("paralel", "parallel"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }
}
