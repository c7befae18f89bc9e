//! Prometheus metrics, kept in memory and rendered in the text exposition format by
//! `GET /metrics`. Counters start at zero with each process, as Prometheus expects.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the histogram buckets: from a no-op item to a long test run.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// A cumulative histogram of durations.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&mut self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, bound) in BUCKETS.iter().enumerate() {
            if s <= *bound {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += s;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (bound, n) in BUCKETS.iter().zip(self.counts) {
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.count
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.count);
    }
}

#[derive(Debug, Default)]
struct KindCounters {
    /// Finished items by final status.
    finished: BTreeMap<&'static str, u64>,
    duration: Histogram,
}

/// Metrics the engine updates as it works.
#[derive(Debug, Default)]
pub struct Metrics {
    kinds: Mutex<BTreeMap<String, KindCounters>>,
}

impl Metrics {
    /// An item of `kind` finished with `status` after running for `took`.
    pub fn item_finished(&self, kind: &str, status: &'static str, took: Duration) {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let k = kinds.entry(kind.to_string()).or_default();
        *k.finished.entry(status).or_default() += 1;
        k.duration.observe(took);
    }
}

/// LLM requests per model: answered, refused by a 429, and the tokens answers reported.
#[derive(Debug, Default, Clone, Copy)]
struct ModelCounters {
    answered: u64,
    rate_limited: u64,
    prompt_tokens: u64,
    completion_tokens: u64,
}

/// Per model, for the process: every LLM client of every engine in it counts here (the
/// client knows no engine), which in a server is the one engine.
fn llm_counters() -> &'static Mutex<BTreeMap<String, ModelCounters>> {
    static COUNTERS: std::sync::OnceLock<Mutex<BTreeMap<String, ModelCounters>>> =
        std::sync::OnceLock::new();
    COUNTERS.get_or_init(Default::default)
}

fn with_model(model: &str, f: impl FnOnce(&mut ModelCounters)) {
    let mut map = llm_counters().lock().unwrap_or_else(|p| p.into_inner());
    if let Some(c) = map.get_mut(model) {
        f(c);
    } else {
        f(map.entry(model.to_string()).or_default());
    }
}

/// An LLM answered a request for `model` that used `usage`.
pub fn llm_answered(model: &str, usage: crate::agent::llm::Usage) {
    with_model(model, |c| {
        c.answered += 1;
        c.prompt_tokens += usage.prompt_tokens;
        c.completion_tokens += usage.completion_tokens;
    });
}

/// An LLM refused a request for `model` with a 429.
pub fn llm_rate_limited(model: &str) {
    with_model(model, |c| c.rate_limited += 1);
}

fn render_llm(out: &mut String, help: impl Fn(&mut String, &str, &str, &str)) {
    let counters = llm_counters().lock().unwrap_or_else(|p| p.into_inner());
    type Field = fn(&ModelCounters) -> u64;
    let series: [(&str, &str, Field); 4] = [
        (
            "batchforge_llm_requests_total",
            "LLM requests answered, per model.",
            |c| c.answered,
        ),
        (
            "batchforge_llm_rate_limited_total",
            "LLM requests refused with HTTP 429 (and sent again), per model.",
            |c| c.rate_limited,
        ),
        (
            "batchforge_llm_prompt_tokens_total",
            "Prompt tokens LLM answers reported, per model.",
            |c| c.prompt_tokens,
        ),
        (
            "batchforge_llm_completion_tokens_total",
            "Completion tokens LLM answers reported, per model.",
            |c| c.completion_tokens,
        ),
    ];
    for (name, text, field) in series {
        help(out, name, "counter", text);
        for (model, c) in counters.iter() {
            let _ = writeln!(out, "{name}{{model=\"{}\"}} {}", label(model), field(c));
        }
    }
}

/// Everything `GET /metrics` shows, gathered by the Supervisor.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Jobs per status, from the store.
    pub jobs: Vec<(&'static str, u64)>,
    /// Items waiting to start (queued, or claimed and not started).
    pub queued_items: u64,
    /// Per kind: running items and the kind's limit.
    pub running: Vec<(String, u32, u32)>,
    /// Store write latency.
    pub store_writes: Histogram,
}

/// A label value with `\`, `"` and newlines escaped, as the text format requires.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Renders a snapshot plus the engine's counters in the Prometheus text format.
pub fn render(snapshot: &Snapshot, metrics: &Metrics) -> String {
    let mut out = String::with_capacity(4096);
    let help = |out: &mut String, name: &str, kind: &str, text: &str| {
        let _ = writeln!(out, "# HELP {name} {text}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
    };
    help(&mut out, "batchforge_jobs", "gauge", "Jobs by status.");
    for (status, n) in &snapshot.jobs {
        let _ = writeln!(out, "batchforge_jobs{{status=\"{status}\"}} {n}");
    }
    help(
        &mut out,
        "batchforge_queue_depth",
        "gauge",
        "Items waiting to start.",
    );
    let _ = writeln!(out, "batchforge_queue_depth {}", snapshot.queued_items);
    help(
        &mut out,
        "batchforge_items_running",
        "gauge",
        "Items running, per kind.",
    );
    for (kind, running, _) in &snapshot.running {
        let kind = label(kind);
        let _ = writeln!(out, "batchforge_items_running{{kind=\"{kind}\"}} {running}");
    }
    help(
        &mut out,
        "batchforge_kind_concurrency_limit",
        "gauge",
        "Items of a kind that may run at once.",
    );
    for (kind, _, limit) in &snapshot.running {
        let kind = label(kind);
        let _ = writeln!(
            out,
            "batchforge_kind_concurrency_limit{{kind=\"{kind}\"}} {limit}"
        );
    }
    let kinds = metrics.kinds.lock().unwrap_or_else(|p| p.into_inner());
    help(
        &mut out,
        "batchforge_items_finished_total",
        "counter",
        "Items finished since start, per kind and final status.",
    );
    for (kind, k) in kinds.iter() {
        let kind = label(kind);
        for (status, n) in &k.finished {
            let _ = writeln!(
                out,
                "batchforge_items_finished_total{{kind=\"{kind}\",status=\"{status}\"}} {n}"
            );
        }
    }
    help(
        &mut out,
        "batchforge_item_duration_seconds",
        "histogram",
        "Time an item spent in its processor, per kind.",
    );
    for (kind, k) in kinds.iter() {
        let kind = label(kind);
        k.duration.render(
            &mut out,
            "batchforge_item_duration_seconds",
            &format!("kind=\"{kind}\""),
        );
    }
    help(
        &mut out,
        "batchforge_store_write_seconds",
        "histogram",
        "Store write transactions, from waiting for the writer to commit.",
    );
    snapshot
        .store_writes
        .render(&mut out, "batchforge_store_write_seconds", "");
    render_llm(&mut out, help);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_rendered_with_inf() {
        let mut h = Histogram::default();
        h.observe(Duration::from_millis(2));
        h.observe(Duration::from_secs(2));
        let mut out = String::new();
        h.render(&mut out, "x", "kind=\"k\"");
        assert!(out.contains("x_bucket{kind=\"k\",le=\"0.001\"} 0"));
        assert!(out.contains("x_bucket{kind=\"k\",le=\"0.005\"} 1"));
        assert!(out.contains("x_bucket{kind=\"k\",le=\"5\"} 2"));
        assert!(out.contains("x_bucket{kind=\"k\",le=\"+Inf\"} 2"));
        assert!(out.contains("x_count{kind=\"k\"} 2"));
    }

    #[test]
    fn llm_counters_are_rendered_per_model() {
        let model = "metrics-test-model\"x";
        llm_answered(
            model,
            crate::agent::llm::Usage {
                prompt_tokens: 7,
                completion_tokens: 3,
            },
        );
        llm_rate_limited(model);
        let out = render(&Snapshot::default(), &Metrics::default());
        assert!(out.contains("# TYPE batchforge_llm_prompt_tokens_total counter"));
        assert!(
            out.contains("batchforge_llm_prompt_tokens_total{model=\"metrics-test-model\\\"x\"} 7"),
            "{out}"
        );
        assert!(out.contains(
            "batchforge_llm_completion_tokens_total{model=\"metrics-test-model\\\"x\"} 3"
        ));
        assert!(
            out.contains("batchforge_llm_rate_limited_total{model=\"metrics-test-model\\\"x\"} 1")
        );
        assert!(out.contains("batchforge_llm_requests_total{model=\"metrics-test-model\\\"x\"} 1"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
