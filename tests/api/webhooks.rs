//! `callback_url` webhooks: a real receiver on port 0 records what the engine POSTs.

use crate::helpers::{spawn_app_configured, wait_for, AppOptions, TestApp, TestDb};
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use awc::http::StatusCode;
use batchforge::model::{JobSchedule, NewItem, NewJob};
use batchforge::store::{self, outbox::WebhookDelivery};
use batchforge::store::{DatabaseUrl, Store};
use batchforge::EngineConfig;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SECRET: &str = "test-secret";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: String,
    at: std::time::Instant,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("webhook body is JSON")
    }
}

/// An HTTP server on 127.0.0.1:0 that records every request and answers with the scripted
/// statuses in turn, then 200.
struct Receiver {
    url: String,
    seen: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    async fn start(answers: &[u16]) -> Receiver {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(answers.iter().copied().collect::<VecDeque<_>>()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (s, sc) = (seen.clone(), script.clone());
        let server = HttpServer::new(move || {
            let (s, sc) = (s.clone(), sc.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (s, sc) = (s.clone(), sc.clone());
                async move {
                    let headers = req
                        .headers()
                        .iter()
                        .map(|(k, v)| {
                            (k.as_str().to_string(), v.to_str().unwrap_or("").to_string())
                        })
                        .collect();
                    s.lock().unwrap().push(Received {
                        method: req.method().to_string(),
                        path: req.path().to_string(),
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                        at: std::time::Instant::now(),
                    });
                    let code = sc.lock().unwrap().pop_front().unwrap_or(200);
                    HttpResponse::build(StatusCode::from_u16(code).unwrap()).body("ok")
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Receiver {
            url: format!("http://127.0.0.1:{port}/hooks/batch?token=abc"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Received> {
        self.seen.lock().unwrap().clone()
    }

    async fn wait_requests(&self, n: usize) -> Vec<Received> {
        wait_for(
            Duration::from_secs(20),
            &format!("{n} webhook requests"),
            || {
                let got = self.seen();
                async move { (got.len() >= n).then_some(got) }
            },
        )
        .await
    }
}

/// Fast retries and polls, and optionally a signing secret. The receivers listen on
/// loopback, so private addresses are allowed.
fn fast(secret: Option<&str>, max_attempts: u32) -> impl FnOnce(&mut EngineConfig) {
    let secret = secret.map(str::to_string);
    move |c: &mut EngineConfig| {
        c.webhooks.allow_private = true;
        c.webhooks.secret = secret;
        c.webhooks.poll_interval = Duration::from_millis(50);
        c.webhooks.backoff_base = Duration::from_millis(50);
        c.webhooks.backoff_max = Duration::from_millis(200);
        c.webhooks.timeout = Duration::from_secs(5);
        c.webhooks.max_attempts = max_attempts;
    }
}

async fn spawn(configure: impl FnOnce(&mut EngineConfig)) -> TestApp {
    spawn_app_configured(
        AppOptions::default(),
        Vec::new(),
        Default::default(),
        configure,
        |b| b,
    )
    .await
}

fn open_store(app: &TestApp) -> Store {
    Store::open(&DatabaseUrl::parse(&app.db.url).unwrap()).unwrap()
}

async fn delivery(store: &Store, job_id: &str) -> Option<WebhookDelivery> {
    let id = job_id.to_string();
    store
        .read(move |c| store::outbox::webhook_delivery(c, &id))
        .await
        .unwrap()
}

/// Waits until the job's delivery is delivered or given up.
async fn settled(store: &Store, job_id: &str) -> WebhookDelivery {
    wait_for(
        Duration::from_secs(20),
        &format!("the webhook of {job_id} to settle"),
        || async {
            delivery(store, job_id)
                .await
                .filter(|d| d.delivered_at.is_some() || d.given_up_at.is_some())
        },
    )
    .await
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn validation(callback_url: &str) -> Value {
    json!({
        "targets": [{"id": "full", "path": "full.txt"}, {"id": "empty", "path": "empty.txt"}],
        "check_command": "test -s",
        "callback_url": callback_url,
    })
}

#[actix_web::test]
async fn a_finished_job_posts_one_signed_summary_to_its_callback_url() {
    let receiver = Receiver::start(&[]).await;
    let app = spawn(fast(Some(SECRET), 8)).await;
    app.write_file("full.txt", "data\n");
    app.write_file("empty.txt", "");
    let id = app
        .submit("/batch/validation", &validation(&receiver.url))
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "completed");
    // The receiver's `?token=` is a credential: shown masked (issue 20 part 5).
    assert_eq!(
        job["options"]["callback_url"],
        receiver.url.replace("token=abc", "token=***")
    );

    let store = open_store(&app);
    let d = settled(&store, &id).await;
    assert!(d.delivered_at.is_some(), "{d:?}");
    assert_eq!(d.attempts, 1);
    let seen = receiver.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let req = &seen[0];
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/hooks/batch");
    assert_eq!(req.headers["content-type"], "application/json");
    assert_eq!(
        req.headers["user-agent"],
        format!("batchforge/{}", env!("CARGO_PKG_VERSION"))
    );
    assert_eq!(req.headers["x-batchforge-event"], "job.finished");
    assert!(req.headers.contains_key("x-batchforge-delivery"));

    // The signature verifies as the README says:
    // HMAC-SHA256(secret, "<timestamp>.<delivery id>.<body>").
    let timestamp = &req.headers["x-batchforge-timestamp"];
    let delivery_id = &req.headers["x-batchforge-delivery"];
    assert_eq!(delivery_id, &d.id.to_string());
    let ts: u64 = timestamp.parse().unwrap();
    let unix = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(unix.abs_diff(ts) < 300, "timestamp {ts} vs now {unix}");
    assert_eq!(
        req.headers["x-batchforge-signature"],
        format!(
            "sha256={}",
            hmac_hex(SECRET, &format!("{timestamp}.{delivery_id}.{}", req.body))
        )
    );
    assert_ne!(
        req.headers["x-batchforge-signature"],
        format!(
            "sha256={}",
            hmac_hex("other", &format!("{timestamp}.{delivery_id}.{}", req.body))
        )
    );
    // The delivery id is signed: the old "<timestamp>.<body>" form no longer verifies.
    assert_ne!(
        req.headers["x-batchforge-signature"],
        format!(
            "sha256={}",
            hmac_hex(SECRET, &format!("{timestamp}.{}", req.body))
        )
    );

    let body = req.json();
    assert_eq!(body["event"], "job.finished");
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["type"], "batch_validation");
    assert_eq!(body["status"], "completed");
    assert_eq!(body["summary"], job["result"]["summary"]);
    assert_eq!(
        body["summary"],
        json!({"total": 2, "successful": 1, "failed": 1, "skipped": 0, "cancelled": 0})
    );
    assert_eq!(body["error"], Value::Null);
    for field in ["created_at", "started_at", "completed_at"] {
        assert_eq!(body[field], job[field], "{field}");
    }
}

#[actix_web::test]
async fn a_failing_webhook_receiver_is_retried_with_backoff_and_the_job_is_unaffected() {
    let receiver = Receiver::start(&[500, 500]).await;
    // No secret: no signature headers.
    let app = spawn(fast(None, 8)).await;
    app.write_file("full.txt", "data\n");
    app.write_file("empty.txt", "");
    let id = app
        .submit("/batch/validation", &validation(&receiver.url))
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(20)).await;
    let store = open_store(&app);
    let d = settled(&store, &id).await;
    assert!(d.delivered_at.is_some(), "{d:?}");
    assert_eq!(d.attempts, 3, "{d:?}");
    assert!(
        d.last_error.as_deref().unwrap_or("").contains("500"),
        "{d:?}"
    );
    let seen = receiver.seen();
    assert_eq!(seen.len(), 3, "{seen:?}");
    assert!(seen.iter().all(|r| r.body == seen[0].body));
    assert!(seen
        .iter()
        .all(|r| !r.headers.contains_key("x-batchforge-signature")));
    // Retries were spaced by the backoff (50 ms, then 100 ms, each ±20 %), not sent at once.
    let gaps: Vec<_> = seen.windows(2).map(|w| w[1].at - w[0].at).collect();
    assert!(gaps[0] >= Duration::from_millis(40), "{gaps:?}");
    assert!(gaps[1] >= Duration::from_millis(80), "{gaps:?}");
    let after = app.job(&id).await;
    assert_eq!(after["status"], "completed");
    assert_eq!(after["result"], job["result"]);
    assert_eq!(after["completed_at"], job["completed_at"]);
    assert_eq!(after["error"], Value::Null);
}

#[actix_web::test]
async fn a_cancelled_job_posts_its_webhook_with_status_cancelled() {
    let receiver = Receiver::start(&[]).await;
    let app = spawn(fast(Some(SECRET), 8)).await;
    app.write_file("f", "x");
    let id = app
        .submit(
            "/batch/validation",
            &json!({
                "targets": [{"id": "a", "path": "f"}, {"id": "b", "path": "f"}, {"id": "c", "path": "f"}],
                "check_command": "sh -c 'sleep 30'",
                "parallel": 1,
                "callback_url": receiver.url,
            }),
        )
        .await;
    app.wait_job(&id, Duration::from_secs(10), |j| j["status"] == "running")
        .await;
    let (status, body) = app.delete(&format!("/batch/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let job = app.wait_finished(&id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "cancelled");
    let seen = receiver.wait_requests(1).await;
    let body = seen[0].json();
    assert_eq!(body["status"], "cancelled");
    assert_eq!(body["job_id"], id.as_str());
    assert_eq!(body["summary"], job["result"]["summary"]);
    assert_eq!(body["summary"]["total"], 3);
    assert_eq!(body["summary"]["cancelled"], 3, "{body}");
    let store = open_store(&app);
    assert!(settled(&store, &id).await.delivered_at.is_some());
    assert_eq!(receiver.seen().len(), 1);
}

#[actix_web::test]
async fn an_unreachable_webhook_is_retried_then_given_up_and_the_job_completes() {
    // A port nothing listens on: bound, then closed.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let app = spawn(fast(None, 3)).await;
    app.write_file("full.txt", "data\n");
    app.write_file("empty.txt", "");
    let id = app
        .submit(
            "/batch/validation",
            &validation(&format!("http://127.0.0.1:{closed}/hook")),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(20)).await;
    assert_eq!(job["status"], "completed");
    let store = open_store(&app);
    let d = settled(&store, &id).await;
    assert!(d.given_up_at.is_some(), "{d:?}");
    assert!(d.delivered_at.is_none());
    assert_eq!(d.next_attempt_at, None);
    assert_eq!(d.attempts, 3, "{d:?}");
    assert!(d.last_error.is_some(), "{d:?}");
    assert_eq!(app.job(&id).await["status"], "completed");
}

#[actix_web::test]
async fn bad_callback_urls_are_refused_with_422_and_nothing_is_stored() {
    let app = spawn(fast(None, 8)).await;
    app.write_file("f", "x");
    for bad in [
        json!("not a url"),
        json!("ftp://example.com/hook"),
        json!(""),
        json!("http://"),
        json!(42),
    ] {
        let (status, body) = app
            .post(
                "/batch/validation",
                &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "test -s",
                        "callback_url": bad}),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
        assert_eq!(body["field"], "callback_url", "{body}");
    }
    let (status, body) = app
        .post(
            "/batch/tests",
            &json!({"modules": [{"id": "a", "path": "f"}], "test_command": "test -s",
                    "callback_url": "file:///etc/passwd"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["field"], "callback_url");
    // JSONL submissions take it in the query string.
    let resp = crate::helpers::client()
        .post(format!(
            "{}/batch/validation?check_command=test%20-s&callback_url=ftp%3A%2F%2Fx%2Fy",
            app.address
        ))
        .insert_header(("content-type", "application/x-ndjson"))
        .send_body("{\"custom_id\": \"a\", \"path\": \"f\"}\n")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let (_, list) = app.get("/batch/jobs").await;
    assert_eq!(list["total"], 0, "{list}");
}

#[actix_web::test]
async fn a_tests_webhook_carries_the_same_summary_as_the_result_passed_included() {
    let receiver = Receiver::start(&[]).await;
    let app = spawn(fast(None, 8)).await;
    app.write_file("full.txt", "data\n");
    app.write_file("empty.txt", "");
    let id = app
        .submit(
            "/batch/tests",
            &json!({"modules": [{"id": "full", "path": "full.txt"}, {"id": "empty", "path": "empty.txt"}],
                    "test_command": "test -s", "callback_url": receiver.url}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(20)).await;
    let body = receiver.wait_requests(1).await[0].json();
    assert_eq!(body["summary"], job["result"]["summary"]);
    assert_eq!(
        body["summary"],
        json!({"total": 2, "passed": 1, "successful": 1, "failed": 1, "skipped": 0, "cancelled": 0})
    );
}

/// A one-item validation job with a callback, as the store-level tests insert and fail.
fn failing_job(callback_url: &str) -> NewJob {
    NewJob {
        kind: "batch_validation".into(),
        spec: json!({"check_command": "test -s", "callback_url": callback_url}),
        parallel: 1,
        metadata: json!({}),
        items: vec![NewItem::new("a", json!({"id": "a", "path": "f"}))],
        schedule: JobSchedule::default(),
    }
}

#[actix_web::test]
async fn a_webhook_committed_before_a_crash_is_delivered_after_the_restart() {
    let receiver = Receiver::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "crashed.db");
    // What a crash leaves: the job failed and its delivery committed, never sent.
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    let url = receiver.url.clone();
    store
        .write_blocking(move |c| {
            let job = failing_job(&url);
            store::jobs::insert_job(c, "batch_validation-crashed00001", &job, 1000.0)?;
            store::job_control::fail_job(c, "batch_validation-crashed00001", "boom", 1001.0)
        })
        .unwrap();
    let pending = store
        .read(|c| store::outbox::webhook_delivery(c, "batch_validation-crashed00001"))
        .await
        .unwrap()
        .expect("the outbox row is written with the transition");
    assert_eq!(pending.attempts, 0);
    drop(store);

    let database_url = db.url.clone();
    let _app = spawn(move |c: &mut EngineConfig| {
        fast(None, 8)(c);
        c.database_url = database_url;
    })
    .await;
    let seen = receiver.wait_requests(1).await;
    let body = seen[0].json();
    assert_eq!(body["job_id"], "batch_validation-crashed00001");
    assert_eq!(body["status"], "failed");
    assert_eq!(body["error"], "boom");
    assert_eq!(body["summary"]["failed"], 1);
    assert_eq!(body["created_at"], 1000.0);
    assert_eq!(body["completed_at"], 1001.0);
}

#[actix_web::test]
async fn by_default_a_webhook_to_a_loopback_address_is_refused_and_the_job_is_unaffected() {
    let receiver = Receiver::start(&[]).await;
    let app = spawn(|c: &mut EngineConfig| {
        fast(None, 8)(c);
        c.webhooks.allow_private = false;
    })
    .await;
    app.write_file("full.txt", "data\n");
    app.write_file("empty.txt", "");
    let localhost = receiver.url.replace("127.0.0.1", "localhost");
    let mut ids = Vec::new();
    for url in [receiver.url.clone(), localhost, "http://[::1]:9/h".into()] {
        ids.push(app.submit("/batch/validation", &validation(&url)).await);
    }
    let store = open_store(&app);
    for id in &ids {
        let job = app.wait_finished(id, Duration::from_secs(20)).await;
        assert_eq!(job["status"], "completed");
        let d = settled(&store, id).await;
        assert!(d.given_up_at.is_some(), "{d:?}");
        assert!(d.delivered_at.is_none(), "{d:?}");
        // Given up at once: refusing is not worth a retry.
        assert_eq!(d.attempts, 1, "{d:?}");
        let error = d.last_error.clone().unwrap_or_default();
        assert!(error.contains("refused"), "{d:?}");
        assert!(error.contains("loopback"), "{d:?}");
        assert!(error.contains("--webhook-allow-private"), "{d:?}");
        let after = app.job(id).await;
        assert_eq!(after["status"], "completed");
        assert_eq!(after["result"], job["result"]);
    }
    assert!(receiver.seen().is_empty(), "{:?}", receiver.seen());
}

#[actix_web::test]
async fn a_backlog_of_webhooks_is_sent_faster_than_one_lease_per_poll_interval() {
    let receiver = Receiver::start(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "backlog.db");
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    // 80 finished jobs, each with a delivery due: five leases of 16.
    const JOBS: usize = 80;
    let url = receiver.url.clone();
    store
        .write_blocking(move |c| {
            for n in 0..JOBS {
                let job = failing_job(&url);
                let id = format!("batch_validation-backlog{n:05}");
                store::jobs::insert_job(c, &id, &job, 1000.0)?;
                store::job_control::fail_job(c, &id, "boom", 1001.0)?;
            }
            Ok(())
        })
        .unwrap();
    drop(store);
    let database_url = db.url.clone();
    let started = std::time::Instant::now();
    let _app = spawn(move |c: &mut EngineConfig| {
        fast(None, 8)(c);
        // One poll every 2 s: at 16 per poll the backlog would take 8 s.
        c.webhooks.poll_interval = Duration::from_secs(2);
        c.database_url = database_url;
    })
    .await;
    receiver.wait_requests(JOBS).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(4),
        "{JOBS} webhooks took {took:?}"
    );
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    for n in [0, JOBS / 2, JOBS - 1] {
        let d = settled(&store, &format!("batch_validation-backlog{n:05}")).await;
        assert!(d.delivered_at.is_some(), "{d:?}");
        assert_eq!(d.attempts, 1, "{d:?}");
    }
}

#[actix_web::test]
async fn a_late_dispatcher_cannot_overwrite_the_outcome_of_a_later_lease() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "lease.db");
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    let (first, second, late, current, settled) = store
        .write_blocking(|c| {
            let job = failing_job("https://example.com/h");
            store::jobs::insert_job(c, "batch_validation-leased000001", &job, 1000.0)?;
            store::job_control::fail_job(c, "batch_validation-leased000001", "boom", 1001.0)?;
            // Dispatcher A leases it until 1040; its POST hangs past the lease.
            let first = store::outbox::lease_webhooks(c, 1010.0, 30.0, 16)?;
            // Dispatcher B takes it again once the lease ran out, and it is delivered.
            let second = store::outbox::lease_webhooks(c, 1050.0, 30.0, 16)?;
            let current = store::outbox::record_webhook_attempt(
                c,
                second[0].id,
                second[0].lease_until,
                &store::outbox::WebhookAttempt::Delivered,
                1051.0,
            )?;
            // A's outcome arrives late: it must not turn the delivery back into a retry.
            let late = store::outbox::record_webhook_attempt(
                c,
                first[0].id,
                first[0].lease_until,
                &store::outbox::WebhookAttempt::Retry {
                    at: 1100.0,
                    error: "timed out".into(),
                },
                1052.0,
            )?;
            let settled = store::outbox::webhook_delivery(c, "batch_validation-leased000001")?;
            Ok((first, second, late, current, settled))
        })
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].lease_until, 1040.0);
    assert_eq!(second.len(), 1);
    assert_eq!(second[0].lease_until, 1080.0);
    assert!(current);
    assert!(!late);
    let d = settled.unwrap();
    assert_eq!(d.delivered_at, Some(1051.0), "{d:?}");
    assert_eq!(d.next_attempt_at, None, "{d:?}");
    assert_eq!(d.last_error, None, "{d:?}");
    assert_eq!(d.attempts, 2, "{d:?}");
}
