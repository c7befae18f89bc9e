//! The engine's own job options (retries, dependencies, deadline, item timeout,
//! concurrency group), read from a job's options object in one place.
//!
//! A submission is checked strictly by [`JobOptions::parse`], whose errors name the option;
//! a stored job's options were checked when it was submitted, so [`JobOptions::stored`]
//! reads them leniently (an option it cannot read takes its default). Kind-specific options
//! (`check_command`, `server` …) stay in the JSON for the processors to read.

use super::FieldError;
use serde_json::Value;
use std::time::Duration;

/// Most attempts a job may ask for.
pub const MAX_ATTEMPTS: u32 = 50;
/// Most jobs one job may depend on.
pub const MAX_DEPENDENCIES: usize = 1000;
/// Longest `item_timeout_seconds` a job may set (a week).
pub const MAX_ITEM_TIMEOUT_SECONDS: f64 = 7.0 * 86_400.0;

/// The engine's options of one job, typed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobOptions {
    /// `max_attempts`, `retry_delay_seconds`, `retry_max_delay_seconds`.
    pub retry: RetryPolicy,
    /// `depends_on`, `run_on_failure`.
    pub dependencies: Dependencies,
    /// `deadline`: when it passes, the job's unfinished items are cancelled and the job
    /// ends `expired`, its finished results kept (Unix seconds).
    pub deadline: Option<f64>,
    /// `item_timeout_seconds`: a bound on every item of any kind, enforced by the engine
    /// around the processor (kinds may have their own, finer timeouts).
    pub item_timeout: Option<Duration>,
    /// `concurrency_group`: the group whose limit the job's items count against.
    pub concurrency_group: Option<String>,
    /// `max_total_tokens`: once the prompt and completion tokens its items' results report
    /// (`usage`, written by the LLM kinds) reach this, the job is cancelled: nothing new
    /// starts, running items are stopped, the rest cancelled with the budget as reason.
    pub max_total_tokens: Option<u64>,
}

impl JobOptions {
    /// Reads and checks the options of a submitted job; `groups` are the names of the
    /// configured concurrency groups. The error names the first bad option.
    pub fn parse(options: &Value, groups: &[&str]) -> Result<JobOptions, FieldError> {
        let retry = RetryPolicy::from_options(options)?;
        let concurrency_group = match options.get("concurrency_group") {
            None | Some(Value::Null) => None,
            Some(Value::String(g)) if groups.contains(&g.as_str()) => Some(g.clone()),
            Some(v) => return Err(unknown_group(v, groups)),
        };
        let dependencies = Dependencies::from_options(options)?;
        let item_timeout = item_timeout(options)?;
        let deadline = deadline(options)?;
        let max_total_tokens = max_total_tokens(options)?;
        Ok(JobOptions {
            retry,
            dependencies,
            deadline,
            item_timeout,
            concurrency_group,
            max_total_tokens,
        })
    }

    /// Reads the options of a stored job, which were checked at submission: an option it
    /// cannot read (a job stored by an older version) takes its default, the others stay.
    pub fn stored(options: &Value) -> JobOptions {
        JobOptions {
            retry: RetryPolicy::from_options(options).unwrap_or_default(),
            dependencies: Dependencies::from_options(options).unwrap_or_default(),
            deadline: deadline(options).ok().flatten(),
            item_timeout: item_timeout(options).ok().flatten(),
            concurrency_group: options
                .get("concurrency_group")
                .and_then(Value::as_str)
                .map(str::to_string),
            max_total_tokens: max_total_tokens(options).ok().flatten(),
        }
    }
}

/// The option `max_total_tokens`, checked: a positive integer.
fn max_total_tokens(options: &Value) -> Result<Option<u64>, FieldError> {
    match options.get("max_total_tokens") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_u64() {
            Some(n) if n > 0 => Ok(Some(n)),
            _ => Err(FieldError::new(
                "max_total_tokens",
                format!("must be a positive integer (tokens), got {v}"),
            )),
        },
    }
}

/// The error of a `concurrency_group` that is not configured, listing those that are.
fn unknown_group(v: &Value, groups: &[&str]) -> FieldError {
    let mut names = groups.to_vec();
    names.sort_unstable();
    FieldError::new(
        "concurrency_group",
        format!(
            "{v} is not a configured concurrency group (configured: {})",
            if names.is_empty() {
                "none; see --concurrency-group".to_string()
            } else {
                names.join(", ")
            }
        ),
    )
}

/// The option `name` as a number of seconds in (0, `max`]; `None` when absent or null.
/// Every "seconds" option of the engine and of the built-in kinds is checked by it, so
/// they all refuse the same way.
pub fn seconds(options: &Value, name: &str, max: f64) -> Result<Option<f64>, FieldError> {
    match options.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(s) if s > 0.0 && s <= max => Ok(Some(s)),
            _ => Err(FieldError::new(
                name,
                format!("must be a number of seconds in (0, {max}], got {v}"),
            )),
        },
    }
}

/// How a job retries items that fail by an error ([`super::ItemOutcome::retryable`]): job
/// options `max_attempts` (1–50, default 1: no retry), `retry_delay_seconds` (the first
/// delay, default 1) and `retry_max_delay_seconds` (the cap, default 300). The delay before
/// attempt n+1 is `min(delay × 2^(n−1), cap)`, scaled by a random factor in [0.5, 1] so
/// that items failing together do not come back together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Most attempts an item gets, the first included.
    pub max_attempts: u32,
    /// Delay before the second attempt, in seconds.
    pub delay: f64,
    /// Longest delay, in seconds.
    pub max_delay: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 1,
            delay: 1.0,
            max_delay: 300.0,
        }
    }
}

impl RetryPolicy {
    /// The policy in a job's options, checked: the error names the option.
    fn from_options(options: &Value) -> Result<RetryPolicy, FieldError> {
        let mut p = RetryPolicy::default();
        match options.get("max_attempts") {
            None | Some(Value::Null) => {}
            Some(v) => match v.as_u64() {
                Some(n) if (1..=u64::from(MAX_ATTEMPTS)).contains(&n) => p.max_attempts = n as u32,
                _ => {
                    return Err(FieldError::new(
                        "max_attempts",
                        format!("must be an integer between 1 and {MAX_ATTEMPTS}, got {v}"),
                    ))
                }
            },
        }
        if let Some(d) = seconds(options, "retry_delay_seconds", 3600.0)? {
            p.delay = d;
        }
        if let Some(d) = seconds(options, "retry_max_delay_seconds", 86_400.0)? {
            p.max_delay = d;
        }
        if p.max_delay < p.delay {
            return Err(FieldError::new(
                "retry_max_delay_seconds",
                format!(
                    "must not be below retry_delay_seconds ({} < {})",
                    p.max_delay, p.delay
                ),
            ));
        }
        Ok(p)
    }

    /// Seconds to wait after failed attempt `attempt` (1-based); `jitter` in [0, 1].
    pub fn backoff(&self, attempt: u32, jitter: f64) -> f64 {
        let exp = 2f64.powi(attempt.saturating_sub(1).min(60) as i32);
        (self.delay * exp).min(self.max_delay) * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))
    }
}

/// A job's dependencies: job option `depends_on` (ids of jobs that must complete first)
/// and `run_on_failure` (run even when one of them failed or was cancelled).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dependencies {
    /// The jobs waited for.
    pub jobs: Vec<String>,
    /// Run anyway when one of them did not complete.
    pub run_on_failure: bool,
}

impl Dependencies {
    /// The dependencies in a job's options, checked for shape (existence is checked when
    /// the job is stored); the error names the option.
    fn from_options(options: &Value) -> Result<Dependencies, FieldError> {
        let mut deps = Dependencies::default();
        match options.get("depends_on") {
            None | Some(Value::Null) => {}
            Some(Value::Array(ids)) if ids.len() <= MAX_DEPENDENCIES => {
                for (i, id) in ids.iter().enumerate() {
                    match id.as_str() {
                        Some(s) if !s.trim().is_empty() => {
                            if !deps.jobs.iter().any(|d| d == s) {
                                deps.jobs.push(s.to_string());
                            }
                        }
                        _ => {
                            return Err(FieldError::new(
                                format!("depends_on[{i}]"),
                                format!("must be a job id, got {id}"),
                            ))
                        }
                    }
                }
            }
            Some(v) => {
                return Err(FieldError::new(
                    "depends_on",
                    format!("must be a list of at most {MAX_DEPENDENCIES} job ids, got {v}"),
                ))
            }
        }
        match options.get("run_on_failure") {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => deps.run_on_failure = *b,
            Some(v) => {
                return Err(FieldError::new(
                    "run_on_failure",
                    format!("must be true or false, got {v}"),
                ))
            }
        }
        Ok(deps)
    }
}

/// A time given as an RFC 3339 timestamp (`2026-11-26T18:00:00Z`, any offset) or as Unix
/// seconds, between 1970 and 9999; `None` when it is neither.
pub fn parse_timestamp(v: &Value) -> Option<f64> {
    let t = match v {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => match s.trim().parse::<f64>() {
            // Unix seconds written as text (a query string has nothing else).
            Ok(t) => t,
            Err(_) => {
                let dt = chrono::DateTime::parse_from_rfc3339(s.trim()).ok()?;
                dt.timestamp() as f64 + f64::from(dt.timestamp_subsec_micros()) / 1e6
            }
        },
        _ => return None,
    };
    (t.is_finite() && (0.0..=253_402_300_799.0).contains(&t)).then_some(t)
}

/// The option `deadline`, checked.
fn deadline(options: &Value) -> Result<Option<f64>, FieldError> {
    match options.get("deadline") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => parse_timestamp(v).map(Some).ok_or_else(|| {
            FieldError::new(
                "deadline",
                format!(
                    "cannot read {v} as a time: expected an RFC 3339 timestamp such as \
                     \"2026-11-26T18:00:00Z\" or Unix seconds"
                ),
            )
        }),
    }
}

/// The option `item_timeout_seconds`, checked.
fn item_timeout(options: &Value) -> Result<Option<Duration>, FieldError> {
    Ok(
        seconds(options, "item_timeout_seconds", MAX_ITEM_TIMEOUT_SECONDS)?
            .map(Duration::from_secs_f64),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(options: Value, groups: &[&str]) -> FieldError {
        JobOptions::parse(&options, groups).unwrap_err()
    }

    #[test]
    fn absent_options_take_their_defaults() {
        assert_eq!(
            JobOptions::parse(&json!({}), &[]).unwrap(),
            JobOptions::default()
        );
        assert_eq!(JobOptions::stored(&json!({})), JobOptions::default());
    }

    #[test]
    fn every_option_is_read_typed() {
        let o = JobOptions::parse(
            &json!({
                "max_attempts": 3, "retry_delay_seconds": 2, "retry_max_delay_seconds": 10,
                "depends_on": ["a", "b", "a"], "run_on_failure": true,
                "deadline": "1970-01-01T00:01:40Z", "item_timeout_seconds": 1.5,
                "concurrency_group": "gpu", "max_total_tokens": 5000,
            }),
            &["gpu"],
        )
        .unwrap();
        assert_eq!(
            o.retry,
            RetryPolicy {
                max_attempts: 3,
                delay: 2.0,
                max_delay: 10.0
            }
        );
        assert_eq!(o.dependencies.jobs, ["a", "b"]);
        assert!(o.dependencies.run_on_failure);
        assert_eq!(o.deadline, Some(100.0));
        assert_eq!(o.item_timeout, Some(Duration::from_millis(1500)));
        assert_eq!(o.concurrency_group.as_deref(), Some("gpu"));
        assert_eq!(o.max_total_tokens, Some(5000));
    }

    #[test]
    fn bad_options_are_refused_naming_the_option() {
        for (options, field) in [
            (json!({"max_attempts": 0}), "max_attempts"),
            (json!({"max_attempts": 51}), "max_attempts"),
            (json!({"retry_delay_seconds": 0}), "retry_delay_seconds"),
            (
                json!({"retry_delay_seconds": 5, "retry_max_delay_seconds": 2}),
                "retry_max_delay_seconds",
            ),
            (json!({"depends_on": "a"}), "depends_on"),
            (json!({"depends_on": ["a", ""]}), "depends_on[1]"),
            (json!({"run_on_failure": "yes"}), "run_on_failure"),
            (
                json!({"item_timeout_seconds": 604_801}),
                "item_timeout_seconds",
            ),
            (json!({"deadline": "tomorrow"}), "deadline"),
            (json!({"concurrency_group": 5}), "concurrency_group"),
            (json!({"max_total_tokens": 0}), "max_total_tokens"),
            (json!({"max_total_tokens": -5}), "max_total_tokens"),
            (json!({"max_total_tokens": 1.5}), "max_total_tokens"),
            (json!({"max_total_tokens": "100"}), "max_total_tokens"),
        ] {
            assert_eq!(refused(options.clone(), &["gpu"]).field, field, "{options}");
        }
    }

    #[test]
    fn an_unknown_group_lists_the_configured_ones() {
        let e = refused(json!({"concurrency_group": "tpu"}), &["gpu", "db"]);
        assert_eq!(
            e.message,
            "\"tpu\" is not a configured concurrency group (configured: db, gpu)"
        );
        let e = refused(json!({"concurrency_group": "tpu"}), &[]);
        assert!(e
            .message
            .ends_with("(configured: none; see --concurrency-group)"));
    }

    #[test]
    fn seconds_are_bounded_on_both_sides() {
        let o = json!({"t": 5, "zero": 0, "big": 11, "text": "5", "null": null});
        assert_eq!(seconds(&o, "t", 10.0).unwrap(), Some(5.0));
        assert_eq!(seconds(&o, "absent", 10.0).unwrap(), None);
        assert_eq!(seconds(&o, "null", 10.0).unwrap(), None);
        for name in ["zero", "big", "text"] {
            let e = seconds(&o, name, 10.0).unwrap_err();
            assert_eq!(e.field, name);
            assert!(e
                .message
                .starts_with("must be a number of seconds in (0, 10]"));
        }
    }

    #[test]
    fn stored_options_keep_what_they_can_read() {
        let o = JobOptions::stored(
            &json!({"max_attempts": 0, "deadline": 100, "concurrency_group": "x"}),
        );
        assert_eq!(o.retry, RetryPolicy::default());
        assert_eq!(o.deadline, Some(100.0));
        assert_eq!(o.concurrency_group.as_deref(), Some("x"));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            max_attempts: 5,
            delay: 1.0,
            max_delay: 3.0,
        };
        assert_eq!(p.backoff(1, 1.0), 1.0);
        assert_eq!(p.backoff(2, 1.0), 2.0);
        assert_eq!(p.backoff(3, 1.0), 3.0);
        assert_eq!(p.backoff(3, 0.0), 1.5);
    }
}
