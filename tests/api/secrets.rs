//! Secrets given to jobs (issue 20 part 5): used — the LLM gets its key, the MCP server
//! its headers — and never shown: not in any answer, export, event stream, webhook,
//! schedule, CLI output, nor in the server's log at RUST_LOG=debug.

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::*;
use actix_web::{web, App, HttpRequest, HttpResponse, HttpServer};
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const ENGINE_KEY: &str = "engine-key-0c9f1e77";
const WEBHOOK_SECRET: &str = "hook-signing-5d2a90";
const JOB_KEY: &str = "sk-job-key-7a41b3c2";
const ENV_TOKEN: &str = "env-deploy-token-93e8d1";
const MCP_TOKEN: &str = "mcp-bearer-token-4b7c20";
const CONFIG_HEADER: &str = "mcp-config-header-e61f05";
const HOOK_TOKEN: &str = "hook-query-token-2f8a66";
const SCHEDULE_KEY: &str = "sk-schedule-key-58d0aa";

/// One request a [`Recorder`] got: its path, headers (`name: value` lines) and body.
#[derive(Clone, Debug)]
struct Seen {
    headers: String,
    body: String,
}

/// An HTTP server on loopback that records every request, and forwards it to `upstream`
/// (streaming the answer back) when there is one, else answers 200.
struct Recorder {
    url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    fn start(upstream: Option<String>) -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let s = seen.clone();
        let server = HttpServer::new(move || {
            let (s, upstream) = (s.clone(), upstream.clone());
            App::new().default_service(web::to(move |req: HttpRequest, body: web::Bytes| {
                let (s, upstream) = (s.clone(), upstream.clone());
                async move {
                    let headers: String = req
                        .headers()
                        .iter()
                        .map(|(k, v)| format!("{}: {}\n", k, v.to_str().unwrap_or("")))
                        .collect();
                    s.lock().unwrap().push(Seen {
                        headers,
                        body: String::from_utf8_lossy(&body).into_owned(),
                    });
                    let Some(upstream) = upstream else {
                        return HttpResponse::Ok().body("ok");
                    };
                    let client = awc::Client::builder()
                        .timeout(Duration::from_secs(300))
                        .finish();
                    let mut forward =
                        client.request(req.method().clone(), format!("{upstream}{}", req.uri()));
                    for (k, v) in req.headers() {
                        if k != "host" && k != "content-length" {
                            forward = forward.insert_header((k.clone(), v.clone()));
                        }
                    }
                    match forward.send_body(body).await {
                        Ok(answer) => {
                            let mut reply = HttpResponse::build(answer.status());
                            for (k, v) in answer.headers() {
                                if k != "content-length" && k != "transfer-encoding" {
                                    reply.insert_header((k.clone(), v.clone()));
                                }
                            }
                            reply.streaming(answer)
                        }
                        Err(e) => HttpResponse::BadGateway().body(e.to_string()),
                    }
                }
            }))
        })
        .workers(1)
        .disable_signals()
        .listen(listener)
        .unwrap()
        .run();
        actix_web::rt::spawn(server);
        Recorder {
            url: format!("http://127.0.0.1:{port}"),
            seen,
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// The status and body of `GET url`, with the bearer `token` if given, as text (event
/// streams read until they close or `limit`).
async fn get_text(
    url: &str,
    token: Option<&str>,
    limit: Duration,
) -> (awc::http::StatusCode, String) {
    let mut request = awc::Client::builder().timeout(limit).finish().get(url);
    if let Some(token) = token {
        request = request.insert_header(("authorization", format!("Bearer {token}")));
    }
    let mut answer = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let body = answer.body().limit(64 << 20).await.expect("body");
    (answer.status(), String::from_utf8_lossy(&body).into_owned())
}

/// The body of `GET url` as text.
async fn text(url: &str, limit: Duration) -> String {
    get_text(url, None, limit).await.1
}

/// Appends what the endless stream at `url` sends to `into`, until it ends.
async fn follow(url: String, into: Arc<Mutex<String>>) {
    use futures_util::StreamExt;
    let mut answer = awc::Client::default()
        .get(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    while let Some(Ok(chunk)) = answer.next().await {
        into.lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Every secret of the test: none may appear where `what` was read.
fn assert_clean(what: &str, text: &str) {
    for secret in [
        ENGINE_KEY,
        WEBHOOK_SECRET,
        JOB_KEY,
        ENV_TOKEN,
        MCP_TOKEN,
        CONFIG_HEADER,
        HOOK_TOKEN,
        SCHEDULE_KEY,
    ] {
        assert!(!text.contains(secret), "{what} shows {secret}: {text}");
    }
}

async fn submit(address: &str, path: &str, body: Value) -> String {
    let (status, job) = send(
        &client(),
        "POST",
        &format!("{address}{path}"),
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(status, awc::http::StatusCode::OK, "{path}: {job}");
    assert_clean(&format!("the answer to POST {path}"), &job.to_string());
    job["job_id"].as_str().unwrap().to_string()
}

#[actix_web::test]
async fn secrets_given_to_jobs_are_used_and_appear_on_no_surface_nor_in_the_debug_log() {
    // The LLM echoes the key it was sent, as a careless upstream error message would.
    let llm = FakeLlm::start(|c| match c.model() {
        "echo-key" => Reply::Text(format!("the key was {JOB_KEY}")),
        _ => Reply::Text("hello".into()),
    });
    let other_llm = FakeLlm::start(|_| Reply::Text("hello".into()));
    let hooks = Recorder::start(None);
    let everything = crate::mcp::start_everything_server().await;
    let mcp = everything
        .as_ref()
        .map(|s| Recorder::start(Some(s.url.trim_end_matches("/mcp").to_string())));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a").unwrap();
    let mut config = json!({"mcpServers": {}});
    if let Some(m) = &mcp {
        config["mcpServers"]["remote"] =
            json!({"url": format!("{}/mcp", m.url), "headers": {"X-Config-Key": CONFIG_HEADER}});
    }
    let config_path = dir.path().join("mcp.json");
    std::fs::write(&config_path, config.to_string()).unwrap();
    // The backend under test (BATCHFORGE_TEST_DATABASE).
    let _db = TestDb::create(dir.path(), "s.db");
    let db = database_url(dir.path(), "s.db");
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let ws = dir.path().as_os_str();
    let (_child, a) = spawn_serve_in_env(
        &[
            "--database-url".as_ref(),
            db.as_ref(),
            "--workspace".as_ref(),
            ws,
            "--llm-url".as_ref(),
            llm.url.as_ref(),
            "--llm-api-key".as_ref(),
            ENGINE_KEY.as_ref(),
            "--webhook-secret".as_ref(),
            WEBHOOK_SECRET.as_ref(),
            "--webhook-allow-private".as_ref(),
            "--mcp-config".as_ref(),
            config_path.as_os_str(),
        ],
        log,
        &[("RUST_LOG", "debug".as_ref())],
    )
    .await;
    let events = Arc::new(Mutex::new(String::new()));
    actix_web::rt::spawn(follow(format!("{a}/batch/events"), events.clone()));
    let hook_url = format!("{}/hook?id=7&token={HOOK_TOKEN}", hooks.url);

    let mut jobs = vec![
        // The job's own key, to the engine's endpoint.
        submit(
            &a,
            "/batch/llm",
            json!({"requests": [{"custom_id": "q1", "body": {"model": "echo-key",
                    "messages": [{"role": "user", "content": "hi"}]}}],
                   "llm_api_key": JOB_KEY, "callback_url": hook_url}),
        )
        .await,
        // No key of its own, to the engine's endpoint: the engine's key.
        submit(
            &a,
            "/batch/llm",
            json!({"requests": [{"custom_id": "q2", "body": {"model": "m",
                    "messages": [{"role": "user", "content": "hi"}]}}]}),
        )
        .await,
        // Another server, no key: the engine's key must not go there.
        submit(
            &a,
            "/batch/llm",
            json!({"requests": [{"custom_id": "q3", "body": {"model": "m",
                    "messages": [{"role": "user", "content": "hi"}]}}],
                   "llm_url": other_llm.url}),
        )
        .await,
        // A `*_token` among a command's environment, which the command prints.
        submit(
            &a,
            "/batch/validation",
            json!({"targets": [{"id": "t", "path": "a.txt"}],
                   "check_command": "printenv DEPLOY_TOKEN",
                   "env": {"DEPLOY_TOKEN": ENV_TOKEN}, "callback_url": hook_url}),
        )
        .await,
    ];
    if mcp.is_some() {
        jobs.push(
            submit(
                &a,
                "/batch/mcp-operations",
                json!({"server": "remote",
                       "operations": [{"type": "call", "tool": "echo",
                                       "arguments": {"message": "hello"}}],
                       "headers": {"Authorization": format!("Bearer {MCP_TOKEN}")},
                       "callback_url": hook_url}),
            )
            .await,
        );
    }
    let (status, schedule) = send(
        &client(),
        "POST",
        &format!("{a}/batch/schedules"),
        Some(
            json!({"cron": "* * * * * *", "job": {"type": "batch_llm",
                "items": [{"id": "s", "body": {"model": "m",
                    "messages": [{"role": "user", "content": "hi"}]}}],
                "llm_api_key": SCHEDULE_KEY}})
            .to_string()
            .as_bytes(),
        ),
    )
    .await;
    assert_eq!(status, awc::http::StatusCode::CREATED, "{schedule}");
    assert_eq!(schedule["job"]["llm_api_key"], "***", "{schedule}");
    let schedule_id = schedule["id"].as_str().unwrap().to_string();
    let scheduled = wait_for(Duration::from_secs(30), "a scheduled job", || async {
        let (_, s) = send(
            &client(),
            "GET",
            &format!("{a}/batch/schedules/{schedule_id}"),
            None,
        )
        .await;
        s["last_job_id"].as_str().map(str::to_string)
    })
    .await;
    let (status, _) = send(
        &client(),
        "DELETE",
        &format!("{a}/batch/schedules/{schedule_id}"),
        None,
    )
    .await;
    assert!(status.is_success(), "{status}");
    jobs.push(scheduled);

    for id in &jobs {
        let job = wait_for(Duration::from_secs(60), "the job to finish", || async {
            let (_, job) = send(&client(), "GET", &format!("{a}/batch/jobs/{id}"), None).await;
            job["completed_at"].is_number().then_some(job)
        })
        .await;
        assert_eq!(job["result"]["summary"]["total"], 1, "{job}");
        for path in [
            format!("/batch/jobs/{id}"),
            format!("/batch/jobs/{id}/items"),
            format!("/batch/jobs/{id}/results.jsonl"),
            format!("/batch/jobs/{id}/events"),
            format!("/batch/jobs/{id}/webhooks"),
        ] {
            let body = text(&format!("{a}{path}"), Duration::from_secs(20)).await;
            assert!(body.len() > 2, "{path}: {body}");
            assert_clean(&path, &body);
        }
    }
    // What the secrets were for happened, masked where it is shown.
    let (_, llm_job) = send(
        &client(),
        "GET",
        &format!("{a}/batch/jobs/{}", jobs[0]),
        None,
    )
    .await;
    assert_eq!(llm_job["options"]["llm_api_key"], "***", "{llm_job}");
    assert!(
        llm_job["options"]["callback_url"]
            .as_str()
            .unwrap()
            .ends_with("token=***"),
        "{llm_job}"
    );
    let results = text(
        &format!("{a}/batch/jobs/{}/results.jsonl", jobs[0]),
        Duration::from_secs(20),
    )
    .await;
    assert!(results.contains("the key was ***"), "{results}");
    let auth = llm.authorizations();
    for expected in [JOB_KEY, ENGINE_KEY, SCHEDULE_KEY] {
        assert!(
            auth.contains(&format!("Bearer {expected}")),
            "{expected} not sent: {auth:?}"
        );
    }
    assert_eq!(
        other_llm.authorizations(),
        [""],
        "a foreign server got a key"
    );
    let (_, validation) = send(
        &client(),
        "GET",
        &format!("{a}/batch/jobs/{}", jobs[3]),
        None,
    )
    .await;
    assert_eq!(validation["options"]["env"]["DEPLOY_TOKEN"], "***");
    let stdout = validation["result"]["results"][0]["stdout"]
        .as_str()
        .unwrap();
    assert_eq!(stdout.trim(), "***", "{validation}");
    if let Some(m) = &mcp {
        let (_, job) = send(
            &client(),
            "GET",
            &format!("{a}/batch/jobs/{}", jobs[4]),
            None,
        )
        .await;
        assert_eq!(
            job["result"]["results"][0]["result"], "Echo: hello",
            "{job}"
        );
        assert_eq!(job["options"]["headers"]["Authorization"], "***", "{job}");
        let seen = m.seen();
        assert!(
            seen.iter().all(|s| s
                .headers
                .contains(&format!("authorization: Bearer {MCP_TOKEN}"))
                && s.headers
                    .contains(&format!("x-config-key: {CONFIG_HEADER}"))),
            "the MCP server did not get its headers on every request: {seen:?}"
        );
    }
    // Webhooks: delivered, signed, and clean.
    let n = if mcp.is_some() { 3 } else { 2 };
    let delivered = wait_for(Duration::from_secs(30), "the webhooks", || async {
        let seen = hooks.seen();
        (seen.len() >= n).then_some(seen)
    })
    .await;
    for hook in &delivered {
        assert!(
            hook.headers.contains("x-batchforge-signature: sha256="),
            "{hook:?}"
        );
        assert_clean("a webhook", &format!("{}{}", hook.headers, hook.body));
    }
    for path in [
        "/batch/jobs?limit=100",
        "/batch/schedules",
        "/health",
        "/metrics",
        "/batch/stats",
        "/v1/batches",
        "/batch/kinds",
    ] {
        let body = text(&format!("{a}{path}"), Duration::from_secs(20)).await;
        assert_clean(path, &body);
    }
    let all = events.lock().unwrap().clone();
    assert!(all.contains("event: end"), "{all}");
    assert_clean("/batch/events", &all);
    for args in [&["--json", "jobs"][..], &["--json", "show", &jobs[0]][..]] {
        let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
            .args(["--server", &a])
            .args(args)
            .output()
            .await
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        assert_clean(
            &format!("batchforge {args:?}"),
            &format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        );
    }
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        log.contains("DEBUG"),
        "the log is not at debug level: {log}"
    );
    assert_clean("the server's log at RUST_LOG=debug", &log);
}

/// `GET url` with the bearer `token`, as text; it must succeed.
async fn authorized_text(url: &str, token: &str, limit: Duration) -> String {
    let (status, body) = get_text(url, Some(token), limit).await;
    assert!(status.is_success(), "GET {url}: {status}");
    body
}

#[actix_web::test]
async fn the_engines_own_key_secret_and_tokens_are_scrubbed_when_a_command_prints_them() {
    const TOKEN: &str = "api-full-token-6c1d09";
    const READ_TOKEN: &str = "api-read-token-a83f52";
    const URL_PASSWORD: &str = "llm-url-password-11e4c7";
    let hooks = Recorder::start(None);
    let dir = tempfile::tempdir().unwrap();
    // A credentials file in the workspace, as a careless `.env` would be: the check
    // command prints it whole.
    std::fs::write(
        dir.path().join("creds.txt"),
        format!(
            "llm={ENGINE_KEY}\nhook={WEBHOOK_SECRET}\ntoken={TOKEN}\nread={READ_TOKEN}\nurl={URL_PASSWORD}\nplain=visible\n"
        ),
    )
    .unwrap();
    let _db = TestDb::create(dir.path(), "e.db");
    let db = database_url(dir.path(), "e.db");
    let log_path = dir.path().join("serve.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let llm_url = format!("http://bob:{URL_PASSWORD}@127.0.0.1:9");
    let ws = dir.path().as_os_str();
    let (_child, a) = spawn_serve_in_env(
        &[
            "--database-url".as_ref(),
            db.as_ref(),
            "--workspace".as_ref(),
            ws,
            "--llm-url".as_ref(),
            llm_url.as_ref(),
            "--llm-api-key".as_ref(),
            ENGINE_KEY.as_ref(),
            "--webhook-secret".as_ref(),
            WEBHOOK_SECRET.as_ref(),
            "--webhook-allow-private".as_ref(),
            "--token".as_ref(),
            TOKEN.as_ref(),
            "--read-token".as_ref(),
            READ_TOKEN.as_ref(),
        ],
        log,
        &[("RUST_LOG", "debug".as_ref())],
    )
    .await;
    let events = Arc::new(Mutex::new(String::new()));
    let body = json!({"targets": [{"id": "t", "path": "creds.txt"}],
                      "check_command": "cat creds.txt",
                      "callback_url": format!("{}/hook", hooks.url)});
    let mut answer = client()
        .post(format!("{a}/batch/validation"))
        .insert_header(("authorization", format!("Bearer {TOKEN}")))
        .insert_header(("content-type", "application/json"))
        .send_body(body.to_string())
        .await
        .unwrap();
    assert_eq!(answer.status(), awc::http::StatusCode::OK);
    let job: Value = answer.json().await.unwrap();
    let id = job["job_id"].as_str().unwrap().to_string();
    let stream = {
        let (url, into) = (format!("{a}/batch/jobs/{id}/events"), events.clone());
        async move {
            let text = authorized_text(&url, READ_TOKEN, Duration::from_secs(60)).await;
            into.lock().unwrap().push_str(&text);
        }
    };
    actix_web::rt::spawn(stream);
    let job = wait_for(Duration::from_secs(60), "the job to finish", || async {
        let text = authorized_text(
            &format!("{a}/batch/jobs/{id}"),
            READ_TOKEN,
            Duration::from_secs(20),
        )
        .await;
        let job: Value = serde_json::from_str(&text).unwrap();
        job["completed_at"].is_number().then_some(job)
    })
    .await;
    // The command ran and printed the file: what is not a secret is still there.
    let stdout = job["result"]["results"][0]["stdout"].as_str().unwrap();
    assert!(stdout.contains("plain=visible"), "{job}");
    assert!(
        stdout.contains("llm=***") && stdout.contains("token=***") && stdout.contains("url=***"),
        "{job}"
    );
    let clean = |what: &str, text: &str| {
        for secret in [ENGINE_KEY, WEBHOOK_SECRET, TOKEN, READ_TOKEN, URL_PASSWORD] {
            assert!(!text.contains(secret), "{what} shows {secret}: {text}");
        }
    };
    clean("the job", &job.to_string());
    for path in [
        format!("/batch/jobs/{id}/items"),
        format!("/batch/jobs/{id}/results.jsonl"),
        "/batch/jobs?limit=10".to_string(),
        "/health".to_string(),
    ] {
        let body =
            authorized_text(&format!("{a}{path}"), READ_TOKEN, Duration::from_secs(20)).await;
        assert!(body.len() > 2, "{path}: {body}");
        clean(&path, &body);
    }
    let results = authorized_text(
        &format!("{a}/batch/jobs/{id}/results.jsonl"),
        TOKEN,
        Duration::from_secs(20),
    )
    .await;
    assert!(results.contains("plain=visible"), "{results}");
    let streamed = wait_for(
        Duration::from_secs(60),
        "the job's event stream",
        || async {
            let all = events.lock().unwrap().clone();
            all.contains("event: end").then_some(all)
        },
    )
    .await;
    clean("the job's events", &streamed);
    let delivered = wait_for(Duration::from_secs(30), "the webhook", || async {
        let seen = hooks.seen();
        (!seen.is_empty()).then_some(seen)
    })
    .await;
    clean(
        "the webhook",
        &format!("{}{}", delivered[0].headers, delivered[0].body),
    );
    clean(
        "the debug log",
        &std::fs::read_to_string(&log_path).unwrap(),
    );
}
