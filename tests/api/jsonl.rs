//! JSONL in (`application/x-ndjson` submissions) and out (`results.jsonl`).

use crate::helpers::*;
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn post_ndjson(app: &TestApp, path: &str, body: &str) -> (StatusCode, Value) {
    let mut resp = client()
        .post(format!("{}{path}", app.address))
        .insert_header(("content-type", "application/x-ndjson"))
        .send_body(body.to_string())
        .await
        .unwrap();
    let bytes = resp.body().await.unwrap();
    (resp.status(), serde_json::from_slice(&bytes).unwrap())
}

async fn results_jsonl(app: &TestApp, id: &str) -> (StatusCode, String) {
    let mut resp = client()
        .get(format!("{}/batch/jobs/{id}/results.jsonl", app.address))
        .send()
        .await
        .unwrap();
    let bytes = resp.body().limit(64 * 1024 * 1024).await.unwrap();
    (resp.status(), String::from_utf8(bytes.to_vec()).unwrap())
}

#[actix_web::test]
async fn a_jsonl_submission_runs_and_its_results_stream_back_as_jsonl() {
    let app = spawn_app().await;
    app.write_file("a.txt", "alpha\n");
    app.write_file("b.txt", "beta\n");
    // A byte-order mark and CRLF line ends, as some Windows tools write them.
    let body = "\u{feff}{\"custom_id\": \"first\", \"path\": \"a.txt\"}\r\n\r\n{\"custom_id\": \"second\", \"path\": \"b.txt\"}\r\n";
    let (status, job) =
        post_ndjson(&app, "/batch/validation?check_command=cat&parallel=2", body).await;
    assert_eq!(status, StatusCode::OK, "{job}");
    assert_eq!(job["options"]["check_command"], "cat");
    assert_eq!(job["options"]["parallel"], 2);
    let id = job["job_id"].as_str().unwrap().to_string();
    app.wait_finished(&id, Duration::from_secs(30)).await;

    let (status, text) = results_jsonl(&app, &id).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["custom_id"], "first");
    assert_eq!(lines[0]["index"], 0);
    assert_eq!(lines[0]["status"], "succeeded");
    assert_eq!(lines[0]["result"]["stdout"], "alpha\n");
    assert_eq!(lines[1]["custom_id"], "second");
    assert_eq!(lines[1]["result"]["stdout"], "beta\n");
    assert_eq!(lines[1]["error"], Value::Null);
}

#[actix_web::test]
async fn results_jsonl_pages_through_a_large_job_in_order() {
    let app = spawn_app_with(AppOptions::default(), |b| {
        b.processor(batchforge::processors::noop::Noop)
    })
    .await;
    let items: Vec<Value> = (0..2500).map(|i| json!({"id": format!("k{i}")})).collect();
    let id = app
        .submit(
            "/batch/jobs",
            &json!({"type": "noop", "items": items, "parallel": 64}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(60)).await;
    let (status, text) = results_jsonl(&app, &id).await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2500);
    for (n, line) in lines.iter().enumerate() {
        assert_eq!(line["index"], n);
        assert_eq!(line["custom_id"], format!("k{n}"));
        assert_eq!(line["status"], "succeeded");
    }
}

#[actix_web::test]
async fn bad_jsonl_is_refused_with_its_line_number_and_nothing_is_stored() {
    let app = spawn_app().await;
    app.write_file("a.txt", "");
    let cases = [
        (
            "/batch/validation?check_command=cat",
            "{\"custom_id\": \"a\", \"path\": \"a.txt\"}\n{oops\n",
            StatusCode::BAD_REQUEST,
            "line 2",
        ),
        (
            "/batch/validation?check_command=cat",
            "{\"custom_id\": \"a\", \"path\": \"a.txt\"}\n\n[1, 2]\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "line 3",
        ),
        (
            "/batch/validation?check_command=cat&parallel=many",
            "{\"custom_id\": \"a\", \"path\": \"a.txt\"}\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "parallel",
        ),
        (
            "/batch/validation?check_command=cat",
            "{\"custom_id\": \"a\"}\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "targets[0].path",
        ),
        (
            "/batch/validation?check_command=cat",
            "\n\n",
            StatusCode::UNPROCESSABLE_ENTITY,
            "targets",
        ),
    ];
    for (path, body, status, needle) in cases {
        let (got, answer) = post_ndjson(&app, path, body).await;
        assert_eq!(got, status, "{path} {body:?}: {answer}");
        assert!(
            answer["detail"].as_str().unwrap().contains(needle),
            "{path} {body:?}: {answer}"
        );
    }
    assert_eq!(app.get("/batch/stats").await.1["stats"]["total"], 0);
    let (status, _) = results_jsonl(&app, "batch_validation-000000000000").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
