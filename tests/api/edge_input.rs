//! Bad input refused at the edge (issue 18, items 2 and 6): a NUL character anywhere a
//! request's text reaches the store (path parameters, query filters, idempotency keys,
//! metadata, schedule names) answers 4xx naming the field on either backend, never 5xx;
//! an unknown top-level field answers 422 naming it, with the field it was probably meant
//! to be; nothing refused is stored.

use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::{Item, ItemContext, ItemOutcome, Processor};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::time::Duration;

/// Sends raw bytes over one connection and returns the status line's code and the answer.
fn raw_http(address: &str, request: &[u8]) -> (u16, String) {
    let host = address.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(host).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request).expect("write");
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    // Read until the head and a little of the body are in, or the server closes.
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
        let text = String::from_utf8_lossy(&answer);
        if let Some(head_end) = text.find("\r\n\r\n") {
            let length = text[..head_end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length: ")
                        .map(str::to_string)
                })
                .and_then(|n| n.trim().parse::<usize>().ok());
            if length.is_some_and(|n| answer.len() >= head_end + 4 + n) {
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    (code, text)
}

async fn send_method(app: &TestApp, method: &str, path: &str) -> (StatusCode, Value) {
    let body: Option<&[u8]> = (method == "post").then_some(b"{}");
    send(
        &client(),
        &method.to_ascii_uppercase(),
        &format!("{}{path}", app.address),
        body,
    )
    .await
}

/// Everything stored that a request could change.
async fn stored(app: &TestApp) -> (Value, Value) {
    (
        app.get("/batch/jobs").await.1,
        app.get("/batch/schedules").await.1,
    )
}

#[actix_web::test]
async fn a_nul_in_any_path_or_query_parameter_or_stored_text_is_refused_and_nothing_stored() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true"}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(30)).await;
    let (status, schedule) = app
        .post(
            "/batch/schedules",
            &json!({"cron": "0 0 1 1 *", "job": {"type": "batch_validation",
                    "items": [{"id": "a", "path": "f"}], "check_command": "true"}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{schedule}");
    let before = stored(&app).await;

    // Every path parameter of every mounted route.
    let mut checked = 0;
    for (method, path) in batchforge::api::ROUTES {
        let Some(start) = path.find('{') else {
            continue;
        };
        let name = &path[start + 1..path.find('}').unwrap()];
        let bad = path.replace(&format!("{{{name}}}"), "a%00b");
        let (status, body) = send_method(&app, method, &bad).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{method} {bad}: {body}"
        );
        assert_eq!(body["field"], *name, "{method} {bad}: {body}");
        checked += 1;
    }
    assert!(checked >= 14, "only {checked} routes have a path parameter");

    // Every documented query parameter, on a path that exists.
    let doc = serde_json::to_value(batchforge::api::openapi::served()).unwrap();
    let mut queries = 0;
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            for param in op["parameters"].as_array().into_iter().flatten() {
                if param["in"] != "query" {
                    continue;
                }
                let name = param["name"].as_str().unwrap();
                let url = format!(
                    "{}?{name}=a%00b",
                    path.replace("{id}", &id)
                        .replace("{kind}", "batch_validation")
                );
                let (status, body) = send_method(&app, method, &url).await;
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{method} {url}: {body}"
                );
                assert_eq!(body["field"], name, "{method} {url}: {body}");
                queries += 1;
            }
        }
    }
    assert!(queries >= 6, "only {queries} query parameters documented");

    // Body text that is stored as a column of its own, on every submission endpoint.
    let bodies = [
        (
            "/batch/validation",
            json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true"}),
        ),
        (
            "/batch/tests",
            json!({"modules": [{"id": "a", "path": "f"}], "test_command": "true"}),
        ),
        (
            "/batch/mcp-operations",
            json!({"operations": [{"type": "list", "path": "."}]}),
        ),
        (
            "/batch/agent-tasks",
            json!({"tasks": [{"id": "t", "description": "d"}], "check_command": "true"}),
        ),
        (
            "/batch/jobs",
            json!({"type": "batch_validation", "items": [{"id": "a", "path": "f"}],
                   "check_command": "true"}),
        ),
    ];
    for (path, body) in &bodies {
        for (field, value, named) in [
            ("idempotency_key", json!("k\u{0}"), "idempotency_key"),
            ("metadata", json!({"note": "a\u{0}b"}), "metadata.note"),
        ] {
            let mut body = body.clone();
            body[field] = value;
            let (status, answer) = app.post(path, &body).await;
            assert_eq!(
                status,
                StatusCode::UNPROCESSABLE_ENTITY,
                "{path} {body}: {answer}"
            );
            assert_eq!(answer["field"], named, "{path} {body}: {answer}");
        }
        // The same key through the header: HTTP itself forbids the byte; never a 5xx.
        let body = body.to_string();
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Idempotency-Key: k\0k\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        let address = app.address.clone();
        let (code, answer) =
            tokio::task::spawn_blocking(move || raw_http(&address, request.as_bytes()))
                .await
                .unwrap();
        assert!(
            (400..500).contains(&code),
            "{path} with a NUL header: {answer}"
        );
    }
    // A JSONL submission's query options are body fields.
    let (status, answer) = send_jsonl(
        &app,
        "/batch/validation?check_command=true&idempotency_key=k%00",
        "{\"custom_id\":\"a\",\"path\":\"f\"}\n",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "idempotency_key", "{answer}");

    // A schedule's own text columns.
    let template = json!({"type": "batch_validation", "items": [{"id": "a", "path": "f"}],
                          "check_command": "true"});
    for (field, body) in [
        (
            "name",
            json!({"name": "n\u{0}", "cron": "0 0 1 1 *", "job": template}),
        ),
        ("cron", json!({"cron": "0 0 1 1 *\u{0}", "job": template})),
        (
            "timezone",
            json!({"cron": "0 0 1 1 *", "timezone": "UTC\u{0}", "job": template}),
        ),
        (
            "job.metadata.x",
            json!({"cron": "0 0 1 1 *", "job": {"type": "batch_validation",
            "items": [{"id": "a", "path": "f"}], "check_command": "true", "metadata": {"x": "\u{0}"}}}),
        ),
    ] {
        let (status, answer) = app.post("/batch/schedules", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{body}: {answer}");
    }

    assert_eq!(
        stored(&app).await,
        before,
        "a refused request changed what is stored"
    );
    assert_eq!(app.get("/health").await.0, StatusCode::OK);
}

async fn send_jsonl(app: &TestApp, path: &str, body: &str) -> (StatusCode, Value) {
    let mut resp = client()
        .post(format!("{}{path}", app.address))
        .insert_header(("content-type", "application/x-ndjson"))
        .send_body(body.to_string())
        .await
        .expect("request");
    let bytes = resp.body().await.expect("body");
    (resp.status(), serde_json::from_slice(&bytes).expect("JSON"))
}

/// An embedder's kind, whose options the engine cannot know: it echoes them.
struct Echo;

#[async_trait::async_trait(?Send)]
impl Processor for Echo {
    fn kind(&self) -> &str {
        "echo"
    }

    async fn process(&self, _: Item, ctx: ItemContext) -> ItemOutcome {
        ItemOutcome::succeeded(json!({"model": ctx.options["model"]}))
    }
}

#[actix_web::test]
async fn unknown_fields_are_refused_by_name_with_the_field_meant_and_nothing_stored() {
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Echo)).await;
    app.write_file("f", "");
    let target = json!([{"id": "a", "path": "f"}]);
    let cases = [
        (
            "/batch/validation",
            json!({"targets": target, "check_command": "true", "paralel": 3}),
            "paralel",
            Some("parallel"),
        ),
        (
            "/batch/validation",
            json!({"targets": target, "check_comand": "true"}),
            "check_comand",
            Some("check_command"),
        ),
        (
            "/batch/validation",
            json!({"targets": target, "check_command": "true", "test_command": "true"}),
            "test_command",
            None,
        ),
        (
            "/batch/tests",
            json!({"modules": target, "test_command": "true", "max_attempt": 2}),
            "max_attempt",
            Some("max_attempts"),
        ),
        (
            "/batch/mcp-operations",
            json!({"operations": [{"type": "list", "path": "."}], "sever": "x"}),
            "sever",
            Some("server"),
        ),
        (
            "/batch/agent-tasks",
            json!({"tasks": [{"id": "t", "description": "d"}], "max_loop": 2}),
            "max_loop",
            Some("max_loops"),
        ),
        (
            "/batch/jobs",
            json!({"type": "batch_validation", "items": target, "check_command": "true", "priorty": 1}),
            "priorty",
            Some("priority"),
        ),
        (
            "/batch/jobs",
            json!({"type": "echo", "items": [1], "model": "m", "paralel": 2}),
            "paralel",
            Some("parallel"),
        ),
        (
            "/batch/jobs/x/retry",
            json!({"stauts": ["failed"]}),
            "stauts",
            Some("status"),
        ),
        (
            "/batch/schedules",
            json!({"cron": "* * * * *", "crn": "x", "job": {"type": "echo", "items": [1]}}),
            "crn",
            None,
        ),
        (
            "/batch/schedules",
            json!({"cron": "* * * * *", "job": {"type": "batch_validation", "items": target, "check_command": "true", "deadlin": 5}}),
            "job.deadlin",
            Some("deadline"),
        ),
    ];
    for (path, body, field, meant) in cases {
        let (status, answer) = app.post(path, &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{path} {body}: {answer}"
        );
        assert_eq!(answer["field"], field, "{path} {body}: {answer}");
        let detail = answer["detail"].as_str().unwrap();
        if let Some(meant) = meant {
            assert!(
                detail.contains(&format!("`{meant}`")),
                "{path} {body}: {detail}"
            );
        }
    }
    // A JSONL submission's query options follow the same rule.
    let (status, answer) = send_jsonl(
        &app,
        "/batch/validation?check_command=true&paralel=2",
        "{\"custom_id\":\"a\",\"path\":\"f\"}\n",
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "paralel", "{answer}");
    assert_eq!(
        stored(&app).await.0["total"],
        0,
        "a refused submission was stored"
    );

    // The original's `chunk_size` is still accepted, and an embedder's options pass.
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": target, "check_command": "true", "chunk_size": 20}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(30)).await;
    let id = app
        .submit(
            "/batch/jobs",
            &json!({"type": "echo", "items": [{"id": "i"}], "model": "m1", "max_attempts": 2}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(30)).await;
    let items = app.all_items(&id, 10).await;
    assert_eq!(items[0]["result"], json!({"model": "m1"}), "{items:?}");
}

#[actix_web::test]
async fn an_oversized_body_answers_413_in_json_and_a_null_retry_body_is_the_default() {
    let app = spawn_app().await;
    let request =
        "POST /batch/validation HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                   Content-Length: 300000000\r\n\r\n{\"targets\": [";
    let address = app.address.clone();
    let (code, answer) =
        tokio::task::spawn_blocking(move || raw_http(&address, request.as_bytes()))
            .await
            .unwrap();
    assert_eq!(code, 413, "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("content-type: application/json"),
        "{answer}"
    );
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"));
    assert!(body["detail"].as_str().unwrap().contains("limit"), "{body}");

    app.write_file("f", "");
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "false"}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(30)).await;
    let (status, answer) = app
        .post_raw(&format!("/batch/jobs/{id}/retry"), b"null")
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["requeued"], 1, "{answer}");
}
