//! The admission check: everything a job must pass before it is stored, in one function
//! used both for submissions and for cron schedules' job templates, so a template that
//! is accepted is a job that its ticks can submit.

use crate::model::{FieldError, JobOptions, NewJob};
use crate::processor::Processor;
use serde_json::Value;

/// What admission checks a job against: the engine's registered kinds and configured
/// concurrency groups, as the Supervisor holds them.
pub struct AdmissionRules<'a> {
    /// The processor registered for the job's kind; `None` when the kind is unknown.
    pub processor: Option<&'a dyn Processor>,
    /// The names of the configured concurrency groups.
    pub groups: Vec<&'a str>,
}

/// Why a job is not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No processor is registered for its kind (it may be on another node).
    #[error("processor '{0}' is not available in this engine")]
    NoProcessor(String),
    /// A field of the job is not acceptable.
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// Checks a job as the engine admits it: its kind is registered, it has items, its
/// processor accepts its options, no NUL character is in its options or item ids, and
/// the engine's own options ([`JobOptions`]) are valid against `rules`. Answers those
/// options, read once.
pub fn check_job(job: &NewJob, rules: &AdmissionRules<'_>) -> Result<JobOptions, Refusal> {
    let Some(processor) = rules.processor else {
        return Err(Refusal::NoProcessor(job.kind.clone()));
    };
    if job.items.is_empty() {
        return Err(FieldError::new("items", "a job needs at least one item").into());
    }
    processor.validate_options(&job.spec)?;
    // PostgreSQL cannot hold a NUL character in text, nor read `\u0000` back as JSON:
    // refused on either backend, so a job means the same on both.
    if contains_nul(&job.spec) {
        return Err(FieldError::new(
            "options",
            "NUL characters (\\u0000) are not allowed in a job's options",
        )
        .into());
    }
    if let Some(i) = job.items.iter().position(|item| item.key.contains('\0')) {
        return Err(FieldError::new(
            format!("items[{i}].id"),
            "NUL characters are not allowed in an item's id",
        )
        .into());
    }
    Ok(JobOptions::parse(&job.spec, &rules.groups)?)
}

/// Whether a JSON value holds a NUL character in any string or key.
fn contains_nul(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains('\0'),
        Value::Array(a) => a.iter().any(contains_nul),
        Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ItemOutcome, NewItem};
    use crate::processor::{Item, ItemContext};
    use serde_json::json;

    /// Accepts any options but `{"bad": …}`.
    struct Picky;

    #[async_trait::async_trait(?Send)]
    impl Processor for Picky {
        fn kind(&self) -> &str {
            "picky"
        }

        fn validate_options(&self, options: &Value) -> Result<(), FieldError> {
            match options.get("bad") {
                Some(_) => Err(FieldError::new("bad", "is bad")),
                None => Ok(()),
            }
        }

        async fn process(&self, _: Item, _: ItemContext) -> ItemOutcome {
            ItemOutcome::succeeded(json!({}))
        }
    }

    fn job(spec: Value, keys: &[&str]) -> NewJob {
        NewJob {
            kind: "picky".into(),
            spec,
            parallel: 1,
            metadata: json!({}),
            items: keys
                .iter()
                .map(|k| NewItem::new(k.to_string(), json!({})))
                .collect(),
            schedule: Default::default(),
        }
    }

    fn field(job: &NewJob) -> String {
        let rules = AdmissionRules {
            processor: Some(&Picky),
            groups: vec!["gpu"],
        };
        match check_job(job, &rules) {
            Err(Refusal::Invalid(e)) => e.field,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_good_job_is_admitted_with_its_options_read() {
        let rules = AdmissionRules {
            processor: Some(&Picky),
            groups: vec!["gpu"],
        };
        let options = check_job(
            &job(
                json!({"concurrency_group": "gpu", "max_attempts": 2}),
                &["a"],
            ),
            &rules,
        )
        .unwrap();
        assert_eq!(options.concurrency_group.as_deref(), Some("gpu"));
        assert_eq!(options.retry.max_attempts, 2);
    }

    #[test]
    fn an_unknown_kind_is_refused_first() {
        let rules = AdmissionRules {
            processor: None,
            groups: vec![],
        };
        assert_eq!(
            check_job(&job(json!({"bad": 1}), &[]), &rules),
            Err(Refusal::NoProcessor("picky".into()))
        );
    }

    #[test]
    fn each_check_names_its_field_in_order() {
        assert_eq!(field(&job(json!({"bad": 1}), &[])), "items");
        assert_eq!(field(&job(json!({"bad": "\u{0}"}), &["a"])), "bad");
        assert_eq!(
            field(&job(json!({"x": "\u{0}", "max_attempts": 0}), &["a"])),
            "options"
        );
        assert_eq!(
            field(&job(json!({"max_attempts": 0}), &["a", "b\u{0}"])),
            "items[1].id"
        );
        assert_eq!(
            field(&job(json!({"max_attempts": 0}), &["a"])),
            "max_attempts"
        );
        assert_eq!(
            field(&job(
                json!({"concurrency_group": "tpu", "deadline": "x"}),
                &["a"]
            )),
            "concurrency_group"
        );
        assert_eq!(field(&job(json!({"deadline": "x"}), &["a"])), "deadline");
    }
}
