//! The API's guard through real HTTP: foreign origins, rebound hosts and form or text
//! bodies are refused before anything is stored or run; tokens by kind on reads, writes,
//! cancels, metrics, event streams and exports; every mounted route needs a token; and a
//! server on a non-loopback address without one refuses to start.

use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::api::guard::SecurityConfig;
use batchforge::{Application, EngineConfig, ServeConfig};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::Duration;
use tempfile::TempDir;

/// A server started with `security`.
pub struct SecuredApp {
    pub address: String,
    pub port: u16,
    pub workspace: PathBuf,
    /// Held so a PostgreSQL database lives as long as the app.
    #[allow(dead_code)]
    pub db: TestDb,
    pub dir: TempDir,
}

/// Starts the app on 127.0.0.1:0 with `security`.
pub async fn spawn_secured(security: SecurityConfig) -> SecuredApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let db = TestDb::create(dir.path(), "jobs.db");
    let config = ServeConfig {
        engine: EngineConfig {
            database_url: db.url.clone(),
            workspace: workspace.clone(),
            builtin_processors: true,
            ..EngineConfig::default()
        },
        bind: "127.0.0.1:0".into(),
        shutdown_grace: Duration::from_secs(1),
        http_workers: Some(2),
    };
    let app = Application::build_secured(config, security, |b| b)
        .await
        .expect("app starts");
    let port = app.port();
    actix_web::rt::spawn(app.run_until_stopped());
    SecuredApp {
        address: format!("http://127.0.0.1:{port}"),
        port,
        workspace: workspace.canonicalize().unwrap(),
        db,
        dir,
    }
}

/// What came back: status, headers, body text.
struct Answer {
    status: StatusCode,
    headers: awc::http::header::HeaderMap,
    body: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    fn detail(&self) -> String {
        self.json()["detail"].as_str().unwrap_or("").to_string()
    }
}

/// Sends `method url` with `headers` and an optional body; a stream's body is not read.
async fn call(method: &str, url: &str, headers: &[(&str, &str)], body: Option<&str>) -> Answer {
    let c = client();
    let mut req = match method {
        "GET" => c.get(url),
        "POST" => c.post(url),
        "DELETE" => c.delete(url),
        "PUT" => c.put(url),
        other => panic!("method {other}"),
    };
    for (k, v) in headers {
        req = req.insert_header((*k, *v));
    }
    let mut resp = match body {
        Some(b) => req.send_body(b.to_string()).await,
        None => req.send().await,
    }
    .expect("request");
    let stream = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    let body = if stream {
        String::new()
    } else {
        let bytes = resp.body().limit(64 << 20).await.expect("body");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body,
    }
}

/// A validation job whose command would create `marker`.
fn touching(marker: &std::path::Path) -> String {
    json!({
        "targets": [{"id": "x", "path": "."}],
        "check_command": format!("touch {}", marker.display()),
    })
    .to_string()
}

async fn job_total(address: &str) -> u64 {
    let (status, stats) = send(&client(), "GET", &format!("{address}/batch/stats"), None).await;
    assert_eq!(status, StatusCode::OK, "{stats}");
    stats["stats"]["total"].as_u64().unwrap()
}

/// Whether `marker` appears within a second (a started command would have made it).
async fn appears(marker: &std::path::Path) -> bool {
    for _ in 0..20 {
        if marker.exists() {
            return true;
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[actix_web::test]
async fn a_foreign_origin_is_refused_with_every_content_type_and_nothing_runs() {
    let app = spawn_secured(SecurityConfig::default()).await;
    let marker = app.workspace.join("pwned");
    let url = format!("{}/batch/validation", app.address);
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
        "application/json",
        "application/x-ndjson",
    ] {
        let answer = call(
            "POST",
            &url,
            &[
                ("origin", "http://evil.example"),
                ("content-type", content_type),
            ],
            Some(&touching(&marker)),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{content_type}");
        assert!(
            answer.detail().contains("http://evil.example"),
            "{content_type}: {}",
            answer.body
        );
        assert!(
            !answer.headers.contains_key("access-control-allow-origin"),
            "{content_type}"
        );
    }
    // Reads too, and the `null` origin of sandboxed frames and files.
    for origin in ["http://evil.example", "null", "http://127.0.0.1:1"] {
        let answer = call(
            "GET",
            &format!("{}/batch/jobs", app.address),
            &[("origin", origin)],
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{origin}");
        assert!(!answer.headers.contains_key("access-control-allow-origin"));
    }
    assert!(!appears(&marker).await, "a refused request ran its command");
    assert_eq!(
        job_total(&app.address).await,
        0,
        "a refused request stored a job"
    );

    // The server's own origin (the dashboard's) passes, and then the command does run.
    let own = app.address.clone();
    let answer = call(
        "POST",
        &url,
        &[
            ("origin", own.as_str()),
            ("content-type", "application/json"),
        ],
        Some(&touching(&marker)),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert!(!answer.headers.contains_key("access-control-allow-origin"));
    assert!(appears(&marker).await, "the accepted job ran its command");
    assert_eq!(job_total(&app.address).await, 1);
}

#[actix_web::test]
async fn an_allowed_origin_gets_cors_headers_and_its_preflight_is_answered() {
    let app = spawn_secured(SecurityConfig {
        allowed_origins: vec!["https://app.example".into()],
        ..Default::default()
    })
    .await;
    let url = format!("{}/batch/jobs", app.address);
    let answer = call("GET", &url, &[("origin", "https://app.example")], None).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    assert_eq!(
        answer.headers.get("access-control-allow-origin").unwrap(),
        "https://app.example"
    );
    let client = client();
    let resp = client
        .request(awc::http::Method::OPTIONS, &url)
        .insert_header(("origin", "https://app.example"))
        .insert_header(("access-control-request-method", "POST"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let allowed = resp.headers().get("access-control-allow-headers").unwrap();
    assert!(allowed.to_str().unwrap().contains("authorization"));
    let answer = call("GET", &url, &[("origin", "https://other.example")], None).await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
}

#[actix_web::test]
async fn a_rebound_host_is_refused_on_reads_and_writes() {
    let app = spawn_secured(SecurityConfig {
        allowed_hosts: vec!["build.example".into()],
        ..Default::default()
    })
    .await;
    let marker = app.dir.path().join("rebound");
    let evil = format!("rebind.evil.example:{}", app.port);
    for (method, path, body) in [
        ("GET", "/batch/jobs", None),
        ("GET", "/health", None),
        ("GET", "/", None),
        ("POST", "/batch/validation", Some(touching(&marker))),
    ] {
        let answer = call(
            method,
            &format!("{}{path}", app.address),
            &[
                ("host", evil.as_str()),
                ("content-type", "application/json"),
            ],
            body.as_deref(),
        )
        .await;
        assert_eq!(answer.status, StatusCode::FORBIDDEN, "{method} {path}");
        assert!(
            answer.detail().contains("rebind.evil.example"),
            "{method} {path}: {}",
            answer.body
        );
    }
    // X-Forwarded-Host is not believed: a rebound page may set it.
    let answer = call(
        "GET",
        &format!("{}/batch/jobs", app.address),
        &[("host", evil.as_str()), ("x-forwarded-host", "localhost")],
        None,
    )
    .await;
    assert_eq!(answer.status, StatusCode::FORBIDDEN);
    assert!(!appears(&marker).await);
    assert_eq!(job_total(&app.address).await, 0);
    for host in ["localhost:1", "[::1]:8000", "build.example:8000"] {
        let answer = call(
            "GET",
            &format!("{}/batch/jobs", app.address),
            &[("host", host)],
            None,
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{host}: {}", answer.body);
    }
}

#[actix_web::test]
async fn form_and_text_bodies_are_415_naming_the_type_to_send() {
    let app = spawn_secured(SecurityConfig::default()).await;
    let marker = app.dir.path().join("form");
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let headers: Vec<(&str, &str)> = content_type
            .map(|t| ("content-type", t))
            .into_iter()
            .collect();
        let answer = call(
            "POST",
            &format!("{}/batch/validation", app.address),
            &headers,
            Some(&touching(&marker)),
        )
        .await;
        assert_eq!(
            answer.status,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "{content_type:?}: {}",
            answer.body
        );
        assert!(
            answer.detail().contains("application/json"),
            "{}",
            answer.body
        );
    }
    assert!(!appears(&marker).await);
    assert_eq!(job_total(&app.address).await, 0);
    // A JSONL submission in its own type still goes through.
    let answer = call(
        "POST",
        &format!("{}/batch/validation?check_command=true", app.address),
        &[("content-type", "application/x-ndjson")],
        Some("{\"custom_id\": \"a\", \"path\": \".\"}\n"),
    )
    .await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
}

#[actix_web::test]
async fn the_guard_applies_under_an_embedders_scope() {
    use actix_web::{test, web, App};
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "scope.db");
    let engine = batchforge::EngineBuilder::new(EngineConfig {
        database_url: db.url.clone(),
        workspace: dir.path().to_path_buf(),
        ..EngineConfig::default()
    })
    .start()
    .await
    .unwrap();
    let svc = test::init_service(
        App::new()
            .service(web::scope("/engine").configure(batchforge::api::routes(engine.clone()))),
    )
    .await;
    let req = test::TestRequest::post()
        .uri("/engine/batch/validation")
        .insert_header(("origin", "http://evil.example"))
        .insert_header(("content-type", "text/plain"))
        .set_payload("{}")
        .to_request();
    assert_eq!(
        test::call_service(&svc, req).await.status(),
        StatusCode::FORBIDDEN
    );
    let req = test::TestRequest::get().uri("/engine/").to_request();
    assert_eq!(test::call_service(&svc, req).await.status(), StatusCode::OK);
    let req = test::TestRequest::get()
        .uri("/engine/batch/stats")
        .to_request();
    assert_eq!(test::call_service(&svc, req).await.status(), StatusCode::OK);
    engine.shutdown(Duration::from_secs(1)).await;
}

const FULL: &str = "full-token-5f0c2d";
const READ: &str = "read-token-9a41be";

async fn spawn_tokened() -> SecuredApp {
    spawn_secured(SecurityConfig {
        tokens: vec![FULL.into()],
        read_tokens: vec![READ.into()],
        ..Default::default()
    })
    .await
}

fn auth(token: Option<&str>) -> Vec<(&'static str, String)> {
    token
        .map(|t| vec![("authorization", format!("Bearer {t}"))])
        .unwrap_or_default()
}

/// `call` with an optional token and a JSON content type.
async fn call_as(token: Option<&str>, method: &str, url: &str, body: Option<&str>) -> Answer {
    let auth = auth(token);
    let mut headers: Vec<(&str, &str)> = auth.iter().map(|(k, v)| (*k, v.as_str())).collect();
    headers.push(("content-type", "application/json"));
    call(method, url, &headers, body).await
}

#[actix_web::test]
async fn each_token_kind_on_reads_writes_cancels_metrics_streams_and_exports() {
    let app = spawn_tokened().await;
    let a = &app.address;
    let submit = |body: String| async move {
        let answer = call_as(
            Some(FULL),
            "POST",
            &format!("{a}/batch/validation"),
            Some(&body),
        )
        .await;
        assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
        answer.json()["job_id"].as_str().unwrap().to_string()
    };
    let done =
        submit(json!({"targets": [{"id": "a", "path": "."}], "check_command": "true"}).to_string())
            .await;
    let slow = submit(
        json!({"targets": [{"id": "s", "path": "."}], "check_command": "sh -c 'sleep 30'"})
            .to_string(),
    )
    .await;
    wait_for(Duration::from_secs(30), "the quick job", || async {
        let answer = call_as(Some(FULL), "GET", &format!("{a}/batch/jobs/{done}"), None).await;
        (answer.json()["status"] == "completed").then_some(())
    })
    .await;

    // (token, what reads answer, what writes answer)
    let cases = [
        (None, StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED),
        (
            Some("not-a-token"),
            StatusCode::UNAUTHORIZED,
            StatusCode::UNAUTHORIZED,
        ),
        (Some(READ), StatusCode::OK, StatusCode::FORBIDDEN),
        (Some(FULL), StatusCode::OK, StatusCode::OK),
    ];
    for (case, (token, read, write)) in cases.into_iter().enumerate() {
        let who = token.unwrap_or("no token");
        let marker = app.workspace.join(format!("ran-{case}"));
        let before = {
            let answer = call_as(Some(FULL), "GET", &format!("{a}/batch/stats"), None).await;
            answer.json()["stats"]["total"].as_u64().unwrap()
        };
        let mut answers = Vec::new();
        for (method, path, body, expected) in [
            ("GET", format!("/batch/jobs/{done}"), None, read),
            ("GET", "/metrics".to_string(), None, read),
            ("GET", format!("/batch/jobs/{done}/events"), None, read),
            ("GET", "/batch/events".to_string(), None, read),
            (
                "GET",
                format!("/batch/jobs/{done}/results.jsonl"),
                None,
                read,
            ),
            (
                "POST",
                "/batch/validation".to_string(),
                Some(touching(&marker)),
                write,
            ),
            ("DELETE", format!("/batch/jobs/{slow}"), None, write),
        ] {
            let answer = call_as(token, method, &format!("{a}{path}"), body.as_deref()).await;
            assert_eq!(
                answer.status, expected,
                "{who}: {method} {path}: {}",
                answer.body
            );
            if answer.status == StatusCode::UNAUTHORIZED {
                let challenge = answer.headers.get("www-authenticate").unwrap();
                assert!(
                    challenge.to_str().unwrap().starts_with("Bearer"),
                    "{challenge:?}"
                );
            }
            answers.push(answer);
        }
        for answer in &answers {
            assert!(
                !answer.body.contains(FULL) && !answer.body.contains(READ),
                "a token echoed: {}",
                answer.body
            );
        }
        if write != StatusCode::OK {
            assert!(
                !appears(&marker).await,
                "{who}: a refused write ran its command"
            );
            let answer = call_as(Some(FULL), "GET", &format!("{a}/batch/stats"), None).await;
            assert_eq!(
                answer.json()["stats"]["total"].as_u64().unwrap(),
                before,
                "{who}"
            );
            let answer = call_as(Some(FULL), "GET", &format!("{a}/batch/jobs/{slow}"), None).await;
            assert_ne!(
                answer.json()["status"],
                "cancelled",
                "{who} cancelled the job"
            );
        } else {
            assert!(appears(&marker).await, "the full token's job ran");
            let answer = call_as(Some(FULL), "GET", &format!("{a}/batch/jobs/{slow}"), None).await;
            assert_eq!(answer.json()["status"], "cancelled");
        }
    }
}

/// A concrete path for a route pattern.
fn concrete(path: &str) -> String {
    path.replace("{id}", "job-x")
        .replace("{kind}", "batch_validation")
}

#[actix_web::test]
async fn with_a_token_every_mounted_route_but_health_needs_it() {
    let app = spawn_tokened().await;
    let mut walked = 0;
    for (method, path) in batchforge::api::ROUTES {
        let method = method.to_ascii_uppercase();
        let url = format!("{}{}", app.address, concrete(path));
        let body = (method == "POST").then_some("{}");
        for token in [None, Some("wrong")] {
            let answer = call_as(token, &method, &url, body).await;
            let expected = if (method.as_str(), *path) == ("GET", "/health") {
                StatusCode::OK
            } else {
                StatusCode::UNAUTHORIZED
            };
            assert_eq!(
                answer.status, expected,
                "{method} {path} with {token:?}: {}",
                answer.body
            );
        }
        walked += 1;
    }
    assert_eq!(walked, batchforge::api::ROUTES.len());
    // The API's documents too; only the dashboard's page and assets, which hold no data,
    // load without one.
    for path in ["/docs/", "/docs", "/openapi.json", "/nowhere"] {
        let answer = call_as(None, "GET", &format!("{}{path}", app.address), None).await;
        assert_eq!(answer.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    for path in ["/", "/ui/app.js", "/ui/style.css"] {
        let answer = call_as(None, "GET", &format!("{}{path}", app.address), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
    }
    // No way around through the public paths' prefix.
    for path in [
        "/ui/../batch/stats",
        "/ui/%2E%2E/batch/stats",
        "//batch/stats",
        "/health/../batch/stats",
    ] {
        let answer = call_as(None, "GET", &format!("{}{path}", app.address), None).await;
        assert_ne!(answer.status, StatusCode::OK, "{path}: {}", answer.body);
        assert!(
            !answer.body.contains("\"stats\""),
            "{path}: {}",
            answer.body
        );
    }
}

async fn cli_with(address: &str, token: Option<&str>, args: &[&str]) -> std::process::Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"));
    cmd.env_remove("BATCHFORGE_TOKEN")
        .arg("--server")
        .arg(address)
        .args(args);
    if let Some(token) = token {
        cmd.env("BATCHFORGE_TOKEN", token);
    }
    cmd.output().await.expect("the CLI runs")
}

#[actix_web::test]
async fn the_cli_sends_its_token_and_says_how_to_pass_one_on_a_401() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{FULL}\n")).unwrap();
    let db = dir.path().join("cli.db");
    let db_arg = format!("sqlite://{}", db.display());
    let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
    let (_child, address) = spawn_serve(
        &[
            "--database-url".as_ref(),
            db_arg.as_ref(),
            "--token-file".as_ref(),
            token_file.as_os_str(),
            "--read-token".as_ref(),
            READ.as_ref(),
        ],
        log,
    )
    .await;
    let out = cli_with(&address, None, &["jobs"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("needs a token")
            && stderr.contains("BATCHFORGE_TOKEN")
            && stderr.contains("--token"),
        "{stderr}"
    );
    let out = cli_with(&address, Some("wrong"), &["stats"]).await;
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("wrong"),
        "{out:?}"
    );
    let out = cli_with(&address, Some(READ), &["stats"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = cli_with(&address, None, &["--token", FULL, "--json", "jobs"]).await;
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap();
    assert!(
        !log.contains(FULL) && !log.contains(READ),
        "a token in the log: {log}"
    );
}

#[actix_web::test]
async fn a_non_loopback_address_without_a_token_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .env_remove("BATCHFORGE_TOKEN")
        .env_remove("BATCHFORGE_READ_TOKEN")
        .current_dir(dir.path())
        .args(["serve", "--bind", "0.0.0.0:0", "--database-url"])
        .arg(format!("sqlite://{}", dir.path().join("x.db").display()))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), out)
        .await
        .expect("it exits at once")
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--token") && stderr.contains("0.0.0.0"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "it announced an address: {out:?}");
}

#[actix_web::test]
async fn the_dashboard_in_a_browser_works_with_a_token() {
    let app = spawn_tokened().await;
    crate::dashboard::run_browser_test(&app.address, &app.workspace, Some(FULL)).await;
}

#[actix_web::test]
async fn secrets_among_a_jobs_options_are_masked_in_answers_and_events() {
    // An embedder's kind: its options are its own (the built-in kinds refuse unknown ones).
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Echo)).await;
    let a = &app.address;
    let secret = "tok-abc-123-do-not-show";
    let body = json!({
        "type": "echo",
        "items": [{"id": "a"}],
        "deploy_token": secret,
        "llm_api_key": secret,
        "max_tokens": 5,
    })
    .to_string();
    let answer = call_as(None, "POST", &format!("{a}/batch/jobs"), Some(&body)).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.body);
    let job = answer.json();
    assert_eq!(job["options"]["deploy_token"], "***", "{job}");
    assert_eq!(job["options"]["llm_api_key"], "***", "{job}");
    assert_eq!(job["options"]["max_tokens"], 5, "{job}");
    let id = job["job_id"].as_str().unwrap().to_string();
    wait_for(Duration::from_secs(30), "the job", || async {
        let answer = call_as(None, "GET", &format!("{a}/batch/jobs/{id}"), None).await;
        (answer.json()["status"] == "completed").then_some(())
    })
    .await;
    for path in [
        format!("/batch/jobs/{id}"),
        "/batch/jobs".to_string(),
        format!("/batch/jobs/{id}/items"),
        format!("/batch/jobs/{id}/results.jsonl"),
    ] {
        let answer = call_as(None, "GET", &format!("{a}{path}"), None).await;
        assert_eq!(answer.status, StatusCode::OK, "{path}");
        assert!(!answer.body.contains(secret), "{path}: {}", answer.body);
    }
    // The stream of a finished job: its `end` event, then it closes.
    let mut resp = client()
        .get(format!("{a}/batch/jobs/{id}/events"))
        .send()
        .await
        .unwrap();
    let events = resp.body().limit(1 << 20).await.unwrap();
    let events = String::from_utf8_lossy(&events);
    assert!(events.contains("event: end"), "{events}");
    assert!(
        !events.contains(secret) && events.contains("***"),
        "{events}"
    );
}

/// A kind that succeeds with its item's input, whatever its options.
struct Echo;

#[async_trait::async_trait(?Send)]
impl batchforge::Processor for Echo {
    fn kind(&self) -> &str {
        "echo"
    }

    async fn process(
        &self,
        item: batchforge::Item,
        _: batchforge::ItemContext,
    ) -> batchforge::ItemOutcome {
        batchforge::ItemOutcome::succeeded(json!({"id": item.key}))
    }
}
