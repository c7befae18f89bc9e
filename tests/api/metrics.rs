//! `GET /metrics` in the Prometheus text format.

use crate::helpers::*;
use serde_json::{json, Value};
use std::time::Duration;

async fn metrics_text(app: &TestApp) -> String {
    let mut resp = client()
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success());
    let ct = resp
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    String::from_utf8(resp.body().await.unwrap().to_vec()).unwrap()
}

fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[actix_web::test]
async fn metrics_count_jobs_items_durations_depth_and_store_writes() {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 3)].into(),
        },
        |b| b,
    )
    .await;
    app.write_file("ok", "");
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "ok"}, {"id": "b", "path": "ok"}, {"id": "c", "path": "../missing"}], "check_command": "true"}),
        )
        .await;
    app.wait_finished(&id, Duration::from_secs(30)).await;
    let slow: Vec<Value> = (0..10)
        .map(|i| json!({"id": format!("s{i}"), "path": "ok"}))
        .collect();
    let slow_id = app
        .submit(
            "/batch/validation",
            &json!({"targets": slow, "check_command": "sh -c 'sleep 5'", "parallel": 1}),
        )
        .await;
    app.wait_job(&slow_id, Duration::from_secs(30), |j| {
        j["status"] == "running"
    })
    .await;

    let text = metrics_text(&app).await;
    assert_eq!(value(&text, "batchforge_jobs{status=\"completed\"}"), 1.0);
    assert_eq!(value(&text, "batchforge_jobs{status=\"running\"}"), 1.0);
    assert_eq!(
        value(
            &text,
            "batchforge_items_finished_total{kind=\"batch_validation\",status=\"succeeded\"}"
        ),
        2.0
    );
    assert_eq!(
        value(
            &text,
            "batchforge_items_finished_total{kind=\"batch_validation\",status=\"failed\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            "batchforge_item_duration_seconds_count{kind=\"batch_validation\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "batchforge_item_duration_seconds_bucket{kind=\"batch_validation\",le=\"+Inf\"}"
        ),
        3.0
    );
    assert_eq!(
        value(
            &text,
            "batchforge_kind_concurrency_limit{kind=\"batch_validation\"}"
        ),
        3.0
    );
    assert_eq!(
        value(&text, "batchforge_items_running{kind=\"batch_validation\"}"),
        1.0
    );
    assert_eq!(value(&text, "batchforge_queue_depth"), 9.0);
    assert!(value(&text, "batchforge_store_write_seconds_count") >= 2.0);
    assert!(text.contains("# TYPE batchforge_item_duration_seconds histogram"));
    app.delete(&format!("/batch/jobs/{slow_id}")).await;
}
