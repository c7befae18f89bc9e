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
