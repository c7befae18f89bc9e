//! Server-Sent Events: a job's stream to its final state, reconnection, all jobs.

use crate::helpers::*;
use awc::http::StatusCode;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::time::Duration;

/// `(event, id, data)` of every event in an SSE body; comments are skipped.
fn parse_sse(text: &str) -> Vec<(String, Option<u64>, Value)> {
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let (mut event, mut id, mut data) = (String::new(), None, Value::Null);
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event: ") {
                    event = v.to_string();
                } else if let Some(v) = line.strip_prefix("id: ") {
                    id = v.parse().ok();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data = serde_json::from_str(v).unwrap();
                }
            }
            (event, id, data)
        })
        .collect()
}

async fn read_stream(
    app: &TestApp,
    path: &str,
    last_event_id: Option<&str>,
) -> (StatusCode, String) {
    let mut req = client().get(format!("{}{path}", app.address));
    if let Some(id) = last_event_id {
        req = req.insert_header(("last-event-id", id));
    }
    let mut resp = req.send().await.unwrap();
    let body = tokio::time::timeout(Duration::from_secs(60), resp.body().limit(16 << 20))
        .await
        .expect("the stream ends")
        .unwrap();
    (resp.status(), String::from_utf8(body.to_vec()).unwrap())
}

#[actix_web::test]
async fn a_jobs_event_stream_runs_to_the_final_state_and_ends() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let targets: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": "sh -c 'sleep 0.3'", "parallel": 2}),
        )
        .await;
    let (status, text) = read_stream(&app, &format!("/batch/jobs/{id}/events"), None).await;
    assert_eq!(status, StatusCode::OK);
    let events = parse_sse(&text);
    assert_eq!(events.first().unwrap().0, "state", "{text}");
    let progress: Vec<_> = events.iter().filter(|e| e.0 == "progress").collect();
    assert!(!progress.is_empty(), "{text}");
    assert_eq!(progress.last().unwrap().2["progress"]["total"], 5);
    let mut items: Vec<u64> = events
        .iter()
        .filter(|e| e.0 == "item")
        .map(|e| e.2["index"].as_u64().unwrap())
        .collect();
    items.sort_unstable();
    assert_eq!(items, [0, 1, 2, 3, 4], "{text}");
    let (event, end_id, last) = events.last().unwrap();
    assert_eq!(event, "end");
    assert_eq!(last["status"], "completed");
    assert_eq!(last["result"]["summary"]["successful"], 5);
    let ids: Vec<u64> = events.iter().filter_map(|e| e.1).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "event ids increase: {ids:?}"
    );

    // Reconnecting after the end loses nothing: the final state comes at once.
    let (status, text) = read_stream(
        &app,
        &format!("/batch/jobs/{id}/events"),
        Some(&end_id.unwrap().to_string()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let again = parse_sse(&text);
    assert_eq!(again.len(), 1, "{text}");
    assert_eq!(again[0].0, "end");
    assert_eq!(again[0].2["status"], "completed");
}

#[actix_web::test]
async fn an_unknown_jobs_event_stream_is_a_404() {
    let app = spawn_app().await;
    let (status, body) = app
        .get("/batch/jobs/batch_validation-000000000000/events")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["detail"].as_str().unwrap().contains("not found"));
}

#[actix_web::test]
async fn the_all_jobs_stream_reports_a_new_jobs_items_and_end() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let mut resp = client()
        .get(format!("{}/batch/events", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}, {"id": "b", "path": "f"}], "check_command": "true"}),
        )
        .await;
    let mut text = String::new();
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(chunk) = resp.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            let events = parse_sse(&text);
            if events
                .iter()
                .any(|e| e.0 == "end" && e.2["job_id"] == id.as_str())
            {
                return events;
            }
        }
        panic!("the stream closed: {text}");
    })
    .await
    .expect("an end event for the job");
    let items = ended
        .iter()
        .filter(|e| e.0 == "item" && e.2["job_id"] == id.as_str())
        .count();
    assert_eq!(items, 2);
}

#[actix_web::test]
async fn cancelling_a_job_with_claimed_items_ends_its_stream_with_the_final_job() {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 1)].into(),
        },
        |b| b,
    )
    .await;
    app.write_file("f", "");
    let blocker = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "sh -c 'sleep 2'"}),
        )
        .await;
    app.wait_job(&blocker, Duration::from_secs(10), |j| {
        j["status"] == "running"
    })
    .await;
    let targets: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("b{i}"), "path": "f"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": "true"}),
        )
        .await;
    // Its items get claimed into the ready buffer, but the only slot is busy.
    app.wait_job(&id, Duration::from_secs(10), |j| j["status"] == "running")
        .await;
    let path = format!("/batch/jobs/{id}/events");
    let reader = read_stream(&app, &path, None);
    let cancel = async {
        actix_web::rt::time::sleep(Duration::from_millis(200)).await;
        app.delete(&format!("/batch/jobs/{id}")).await
    };
    let ((status, text), (cancelled, _)) = tokio::join!(reader, cancel);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(cancelled, StatusCode::OK);
    let events = parse_sse(&text);
    let (event, _, last) = events.last().unwrap();
    assert_eq!(event, "end", "{text}");
    assert_eq!(last["status"], "cancelled", "{text}");
    assert_eq!(last["result"]["summary"]["cancelled"], 3, "{text}");
}
