//! Rate limits (`--llm-limit`), 429 answers and token budgets (`max_total_tokens`) of the
//! LLM kinds, against the scripted upstream of [`crate::fake_llm`].

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::agent::ratelimit::parse_limit;
use batchforge::agent::{AgentConfig, LlmApi};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

async fn limited_app(url: &str, limits: &[&str], max_retries: u32) -> TestApp {
    let agent = AgentConfig {
        llm_url: url.to_string(),
        api: LlmApi::OpenAi,
        retry_backoff: Duration::from_millis(20),
        max_retries,
        max_concurrent_requests_per_endpoint: 16,
        rate_limits: limits.iter().map(|l| parse_limit(l).unwrap()).collect(),
        ..Default::default()
    };
    spawn_app_with_agent(AppOptions::default(), Vec::new(), agent, |b| b).await
}

async fn metrics_text(app: &TestApp) -> String {
    let mut resp = client()
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap()
}

fn requests(job: &str, n: usize, model: &str) -> Value {
    let requests: Vec<Value> = (0..n)
        .map(|i| {
            json!({"custom_id": format!("{job}-{i}"), "body": {"model": model, "max_tokens": 8,
                "messages": [{"role": "user", "content": format!("{job} {i}")}]}})
        })
        .collect();
    json!(requests)
}

/// The most arrivals within any span shorter than `window`.
fn most_in_window(arrivals: &[Instant], window: Duration) -> usize {
    (0..arrivals.len())
        .map(|i| {
            arrivals[i..]
                .iter()
                .take_while(|t| t.duration_since(arrivals[i]) < window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

#[actix_web::test]
async fn a_requests_per_minute_limit_holds_over_two_jobs_and_both_progress() {
    let fake = FakeLlm::start(|chat| Reply::Text(format!("ok {}", chat.last_text())));
    // rpm:120 over 2 s windows: 4 requests per window.
    let app = limited_app(&fake.url, &["llama*=rpm:120,window:2s"], 1).await;
    let a = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("a", 6, "llama3.2"), "parallel": 6}),
        )
        .await;
    let b = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("b", 6, "llama3.2"), "parallel": 6}),
        )
        .await;
    for id in [&a, &b] {
        let job = app.wait_finished(id, Duration::from_secs(60)).await;
        assert_eq!(job["status"], "completed", "{job}");
        assert_eq!(job["metadata"]["progress"]["successful"], 6, "{job}");
    }
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 12);
    // Slack for the time between the limiter's admission and the arrival upstream: on a
    // loaded machine a request admitted late in one window can arrive hundreds of ms
    // later, beside the next window's. A limiter letting through twice the rate (or no
    // limit at all) still puts more than 4 into 1.2 s; the span below checks the rate.
    let most = most_in_window(&arrivals, Duration::from_millis(1200));
    assert!(
        most <= 4,
        "{most} requests reached the upstream within one window"
    );
    // 12 requests at 4 per window take at least two windows after the first four.
    let span = arrivals[11].duration_since(arrivals[0]);
    assert!(span >= Duration::from_millis(3900), "{span:?}");
    // Both jobs had requests among the first two windows' worth: neither waited for
    // the other to finish.
    let first: Vec<String> = fake.requests()[..8]
        .iter()
        .map(|(_, b)| b["messages"][0]["content"].as_str().unwrap().to_string())
        .collect();
    assert!(first.iter().any(|c| c.starts_with("a ")), "{first:?}");
    assert!(first.iter().any(|c| c.starts_with("b ")), "{first:?}");
}

#[actix_web::test]
async fn a_tokens_per_minute_limit_counts_the_reported_usage() {
    // Each answer reports 15 tokens; 30 tokens per 1 s window lets two through.
    let fake = FakeLlm::start(|_| Reply::Text("ok".into()));
    let url = fake.url.clone();
    let app = limited_app(&fake.url, &[&format!("{url}=tpm:1800,window:1s")], 1).await;
    let id = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("t", 6, "m"), "parallel": 6}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["metadata"]["progress"]["successful"], 6, "{job}");
    let arrivals = fake.arrivals();
    // The same slack as above, for the same reason: 60 % of the window.
    let most = most_in_window(&arrivals, Duration::from_millis(600));
    assert!(most <= 2, "{most} requests within one window");
}

#[actix_web::test]
async fn a_429_with_retry_after_slows_the_endpoint_and_nothing_fails() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let fake = FakeLlm::start(move |_| {
        if s.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::TooMany(Some("1".into()))
        } else {
            Reply::Text("ok".into())
        }
    });
    // No retries at all: a 429 that used one would fail its item.
    let app = limited_app(&fake.url, &[], 0).await;
    let id = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("r", 3, "m"), "parallel": 1}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["metadata"]["progress"]["successful"], 3, "{job}");
    assert_eq!(job["metadata"]["progress"]["failed"], 0, "{job}");
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 4, "the refused request was sent again");
    let waited = arrivals[1].duration_since(arrivals[0]);
    assert!(waited >= Duration::from_millis(950), "{waited:?}");
    let items = app.all_items(&id, 10).await;
    assert!(items.iter().all(|i| i["attempts"] == 1), "{items:?}");
    let text = metrics_text(&app).await;
    assert!(
        text.contains("batchforge_llm_rate_limited_total{model=\"m\"} 1"),
        "{text}"
    );
}

#[actix_web::test]
async fn a_429_with_an_http_date_is_waited_out_too() {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = seen.clone();
    let fake = FakeLlm::start(move |_| {
        if s.fetch_add(1, Ordering::SeqCst) == 0 {
            let at = chrono::Utc::now() + chrono::Duration::seconds(2);
            Reply::TooMany(Some(at.format("%a, %d %b %Y %H:%M:%S GMT").to_string()))
        } else {
            Reply::Text("ok".into())
        }
    });
    let app = limited_app(&fake.url, &[], 0).await;
    let id = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("d", 1, "m"), "parallel": 1}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["metadata"]["progress"]["successful"], 1, "{job}");
    let arrivals = fake.arrivals();
    assert_eq!(arrivals.len(), 2);
    // The date has whole seconds: at least one second is left of the two.
    assert!(arrivals[1].duration_since(arrivals[0]) >= Duration::from_millis(950));
}

#[actix_web::test]
async fn bad_llm_limits_refuse_to_start_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("jobs.db");
    for (flag, env, names) in [
        (Some("llama*=rpm:zero"), None, "rpm:zero"),
        (Some("llama*=rpm:5,burst:2"), None, "burst"),
        (Some("llama*=rpm:5,window:0s"), None, "window:0s"),
        (None, Some("m=rpm:5;nothing"), "nothing"),
    ] {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_batchforge"));
        cmd.arg("serve")
            .args(["--bind", "127.0.0.1:0", "--database-url"])
            .arg(&db);
        if let Some(f) = flag {
            cmd.args(["--llm-limit", f]);
        }
        if let Some(e) = env {
            cmd.env("BATCHFORGE_LLM_LIMITS", e);
        }
        let out = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{flag:?} {env:?} started");
        assert!(stderr.contains(names), "{flag:?} {env:?}: {stderr}");
    }
}

#[actix_web::test]
async fn a_token_budget_stops_the_job_once_spent() {
    // Every answer reports 10 prompt + 5 completion tokens.
    let fake = FakeLlm::start(|_| Reply::Text("ok".into()));
    let app = limited_app(&fake.url, &[], 1).await;
    let id = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("budget", 10, "budget-model"), "parallel": 1,
                    "max_total_tokens": 40}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("max_total_tokens 40"), "{job}");
    let p = &job["metadata"]["progress"];
    // The third answer reaches 45 of 40: nothing starts after it.
    assert_eq!(p["successful"], 3, "{job}");
    assert_eq!(p["cancelled"], 7, "{job}");
    assert_eq!(p["prompt_tokens"], 30, "{job}");
    assert_eq!(p["completion_tokens"], 15, "{job}");
    assert_eq!(fake.requests().len(), 3);
    let items = app.all_items(&id, 20).await;
    let cancelled: Vec<&Value> = items
        .iter()
        .filter(|i| i["status"] == "cancelled")
        .collect();
    assert_eq!(cancelled.len(), 7);
    assert!(
        cancelled.iter().all(|i| i["error"]
            .as_str()
            .is_some_and(|e| e.contains("max_total_tokens"))),
        "{cancelled:?}"
    );
    let text = metrics_text(&app).await;
    for line in [
        "batchforge_llm_prompt_tokens_total{model=\"budget-model\"} 30",
        "batchforge_llm_completion_tokens_total{model=\"budget-model\"} 15",
        "batchforge_llm_requests_total{model=\"budget-model\"} 3",
    ] {
        assert!(text.contains(line), "{line} missing in {text}");
    }
}

#[actix_web::test]
async fn token_totals_appear_in_the_job_list_while_the_job_runs() {
    let fake = FakeLlm::start(|chat| {
        if chat.last_text().ends_with(" 0") {
            Reply::Text("quick".into())
        } else {
            Reply::Delay(
                Duration::from_secs(30),
                Box::new(Reply::Text("slow".into())),
            )
        }
    });
    let app = limited_app(&fake.url, &[], 1).await;
    let id = app
        .submit(
            "/batch/llm",
            &json!({"requests": requests("live", 2, "m"), "parallel": 1}),
        )
        .await;
    let listed = wait_for(Duration::from_secs(30), "tokens in the list", || async {
        let (_, page) = app.get("/batch/jobs").await;
        let job = page["jobs"]
            .as_array()?
            .iter()
            .find(|j| j["job_id"] == id.as_str())?
            .clone();
        job["metadata"]["progress"]["prompt_tokens"]
            .as_u64()
            .is_some()
            .then_some(job)
    })
    .await;
    assert_eq!(
        listed["metadata"]["progress"]["prompt_tokens"], 10,
        "{listed}"
    );
    assert_eq!(
        listed["metadata"]["progress"]["completion_tokens"], 5,
        "{listed}"
    );
    app.delete(&format!("/batch/jobs/{id}")).await;
}

#[actix_web::test]
async fn a_bad_token_budget_is_refused_naming_the_field() {
    let fake = FakeLlm::start(|_| Reply::Text("ok".into()));
    let app = limited_app(&fake.url, &[], 1).await;
    for budget in [json!(0), json!(-5), json!(1.5), json!("100")] {
        let body = json!({"requests": requests("x", 1, "m"), "max_total_tokens": budget});
        let (status, answer) = app.post("/batch/llm", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{budget}: {answer}"
        );
        assert_eq!(answer["field"], "max_total_tokens", "{answer}");
    }
    let (_, jobs) = app.get("/batch/jobs").await;
    assert_eq!(jobs["total"], 0, "{jobs}");
    assert!(fake.requests().is_empty());
}
