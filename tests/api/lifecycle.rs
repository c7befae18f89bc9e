//! Jobs run to completion with seed-shaped results, limits hold, jobs share fairly.

use crate::helpers::*;
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::time::Duration;

#[actix_web::test]
async fn a_validation_batch_completes_with_seed_shaped_results_in_submission_order() {
    let app = spawn_app().await;
    app.write_file("src/a.py", "print('a')\n");
    app.write_file("src/b.py", "print('b')\n");
    let id = app
        .submit(
            "/batch/validation",
            &json!({
                "targets": [
                    {"id": "t1", "path": "src/a.py"},
                    {"id": "t2", "path": "src/b.py"},
                    {"id": "t3", "path": "src/a.py"}
                ],
                "check_command": "cat",
                "parallel": 2
            }),
        )
        .await;
    assert!(id.starts_with("batch_validation-"));
    let hex = id.trim_start_matches("batch_validation-");
    assert_eq!(hex.len(), 12);

    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["type"], "batch_validation");
    assert_eq!(job["progress"], 100.0);
    assert!(job["created_at"].as_f64().unwrap() <= job["started_at"].as_f64().unwrap());
    assert!(job["started_at"].as_f64().unwrap() <= job["completed_at"].as_f64().unwrap());
    let result = &job["result"];
    assert_eq!(result["summary"]["total"], 3);
    assert_eq!(result["summary"]["successful"], 3);
    assert_eq!(result["summary"]["failed"], 0);
    assert!(result["elapsed_seconds"].as_f64().unwrap() >= 0.0);
    let results = result["results"].as_array().unwrap();
    let ids: Vec<&str> = results
        .iter()
        .map(|r| r["target_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["t1", "t2", "t3"]);
    assert_eq!(results[1]["path"], "src/b.py");
    assert_eq!(results[1]["status"], "passed");
    assert_eq!(results[1]["exit_code"], 0);
    assert_eq!(results[1]["stdout"], "print('b')\n");
    assert_eq!(results[1]["stderr"], "");
    assert_eq!(results[1]["truncated"], false);
    assert_eq!(job["metadata"]["progress"]["processed"], 3);
    assert_eq!(job["metadata"]["progress"]["successful"], 3);

    let (_, stats) = app.get("/batch/stats").await;
    assert_eq!(stats["stats"]["total"], 1);
    assert_eq!(stats["stats"]["completed"], 1);
}

#[actix_web::test]
async fn validation_passes_exit_codes_0_and_5_while_tests_pass_only_0() {
    let app = spawn_app().await;
    app.write_file("m.py", "");
    let exits = |codes: &[i32]| -> Vec<Value> {
        codes
            .iter()
            .map(|c| json!({"id": format!("exit{c}"), "path": "m.py"}))
            .collect()
    };
    let mut codes = Vec::new();
    for (endpoint, field, cmd_field) in [
        ("/batch/validation", "targets", "check_command"),
        ("/batch/tests", "modules", "test_command"),
    ] {
        let mut job_codes = Vec::new();
        for code in [0, 5, 1] {
            let id = app
                .submit(
                    endpoint,
                    &json!({field: exits(&[code]), cmd_field: format!("sh -c 'exit {code}'")}),
                )
                .await;
            let job = app.wait_finished(&id, Duration::from_secs(30)).await;
            let r = &job["result"]["results"][0];
            assert_eq!(r["exit_code"], code, "{r}");
            job_codes.push(r["status"].as_str().unwrap().to_string());
        }
        codes.push(job_codes);
    }
    assert_eq!(codes[0], ["passed", "passed", "failed"], "validation");
    assert_eq!(codes[1], ["passed", "failed", "failed"], "tests");
}

#[actix_web::test]
async fn a_tests_batch_reports_module_ids_and_failures_in_its_summary() {
    let app = spawn_app().await;
    app.write_file("tests/ok.sh", "exit 0\n");
    app.write_file("tests/bad.sh", "echo boom >&2; exit 3\n");
    let id = app
        .submit(
            "/batch/tests",
            &json!({
                "modules": [{"id": "ok", "path": "tests/ok.sh"}, {"id": "bad", "path": "tests/bad.sh"}],
                "test_command": "sh"
            }),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(
        job["status"], "completed",
        "a job whose items failed is still completed"
    );
    assert_eq!(job["result"]["summary"]["successful"], 1);
    assert_eq!(job["result"]["summary"]["failed"], 1);
    let bad = &job["result"]["results"][1];
    assert_eq!(bad["module_id"], "bad");
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["exit_code"], 3);
    assert_eq!(bad["stderr"], "boom\n");
    let (_, failed) = app
        .get(&format!("/batch/jobs/{id}/items?status=failed"))
        .await;
    assert_eq!(failed["total"], 1);
    assert_eq!(failed["items"][0]["id"], "bad");
    assert_eq!(failed["items"][0]["error"], "exit code 3");
}

#[actix_web::test]
async fn a_5000_target_batch_keeps_every_result_and_pages_through_items() {
    let app = spawn_app().await;
    app.write_file("f.txt", "");
    let targets: Vec<Value> = (0..5000)
        .map(|i| json!({"id": format!("t{i}"), "path": "f.txt"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": "true", "parallel": 16}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(300)).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["summary"]["successful"], 5000);
    assert_eq!(job["result"]["results"].as_array().unwrap().len(), 5000);

    let items = app.all_items(&id, 1000).await;
    assert_eq!(items.len(), 5000);
    let keys: HashSet<&str> = items.iter().map(|i| i["id"].as_str().unwrap()).collect();
    assert_eq!(keys.len(), 5000);
    for (n, item) in items.iter().enumerate() {
        assert_eq!(item["index"], n);
        assert_eq!(item["status"], "succeeded");
        assert_eq!(item["attempts"], 1);
        assert_eq!(item["result"]["target_id"], format!("t{n}"));
    }
    let (_, page) = app
        .get(&format!(
            "/batch/jobs/{id}/items?status=succeeded&limit=10&offset=4995"
        ))
        .await;
    assert_eq!(page["total"], 5000);
    assert_eq!(page["items"].as_array().unwrap().len(), 5);
}

#[actix_web::test]
async fn a_running_job_shows_live_progress() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let targets: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": "sh -c 'sleep 0.3'", "parallel": 2}),
        )
        .await;
    let job = app
        .wait_job(&id, Duration::from_secs(30), |j| {
            j["status"] == "running" && j["metadata"]["progress"]["processed"].as_u64() >= Some(1)
        })
        .await;
    let p = &job["metadata"]["progress"];
    assert_eq!(p["total"], 8);
    assert!(p["percentage"].as_f64().unwrap() > 0.0);
    assert!(p["percentage"].as_f64().unwrap() < 100.0);
    assert!(p["elapsed_seconds"].as_f64().unwrap() > 0.0);
    assert!(p["items_per_second"].as_f64().unwrap() > 0.0);
    assert!(p["estimated_remaining_seconds"].as_f64().unwrap() > 0.0);
    assert!(p["current_item"].as_str().unwrap().starts_with('t'));
    assert_eq!(job["progress"], p["percentage"]);
    app.wait_finished(&id, Duration::from_secs(30)).await;
}

/// Items record how many items are running at their start: never more than the limit.
fn concurrency_probe(app: &TestApp) -> String {
    app.write_file("f", "");
    std::fs::create_dir_all(app.workspace.join("running")).unwrap();
    "sh -c 'f=$(mktemp running/item.XXXXXX); ls running | wc -l >> counts; sleep 0.15; rm $f'"
        .into()
}

fn max_count(app: &TestApp) -> usize {
    lines(&app.workspace.join("counts"))
        .iter()
        .map(|l| l.trim().parse::<usize>().unwrap())
        .max()
        .unwrap()
}

#[actix_web::test]
async fn a_jobs_parallel_limit_holds() {
    let app = spawn_app().await;
    let cmd = concurrency_probe(&app);
    let targets: Vec<Value> = (0..12)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": cmd, "parallel": 3}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["result"]["summary"]["successful"], 12, "{job}");
    let max = max_count(&app);
    assert!(max <= 3, "{max} items ran at once with parallel 3");
    assert!(max >= 2, "items never overlapped (max {max})");
}

#[actix_web::test]
async fn a_kinds_concurrency_limit_holds_across_jobs() {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 2)].into(),
        },
        |b| b,
    )
    .await;
    let cmd = concurrency_probe(&app);
    let mut ids = Vec::new();
    for _ in 0..3 {
        let targets: Vec<Value> = (0..5)
            .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
            .collect();
        ids.push(
            app.submit(
                "/batch/validation",
                &json!({"targets": targets, "check_command": cmd, "parallel": 5}),
            )
            .await,
        );
    }
    for id in &ids {
        app.wait_finished(id, Duration::from_secs(60)).await;
    }
    let max = max_count(&app);
    assert!(
        max <= 2,
        "{max} validation items ran at once with a kind limit of 2"
    );
}

#[actix_web::test]
async fn a_huge_job_does_not_starve_a_small_job_submitted_after_it() {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 2)].into(),
        },
        |b| b,
    )
    .await;
    app.write_file("f", "");
    let big: Vec<Value> = (0..200)
        .map(|i| json!({"id": format!("b{i}"), "path": "f"}))
        .collect();
    let big_id = app
        .submit(
            "/batch/validation",
            &json!({"targets": big, "check_command": "sh -c 'sleep 0.1'", "parallel": 2}),
        )
        .await;
    app.wait_job(&big_id, Duration::from_secs(30), |j| {
        j["status"] == "running"
    })
    .await;
    let small_id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "s1", "path": "f"}, {"id": "s2", "path": "f"}], "check_command": "true"}),
        )
        .await;
    let small = app.wait_finished(&small_id, Duration::from_secs(30)).await;
    assert_eq!(small["status"], "completed");
    assert_eq!(small["result"]["summary"]["successful"], 2);
    let big = app.job(&big_id).await;
    assert_eq!(
        big["status"], "running",
        "the small job had to wait for the big one to finish"
    );
    let big_progress = &big["metadata"]["progress"];
    assert_eq!(big_progress["failed"], 0, "{big}");
    assert!(big_progress["processed"].as_u64().unwrap() < 150);
    let (status, _) = app.delete(&format!("/batch/jobs/{big_id}")).await;
    assert_eq!(status, StatusCode::OK);
}

#[actix_web::test]
async fn jobs_list_filters_by_status_and_type_newest_first() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let a = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "f"}], "check_command": "true"}),
        )
        .await;
    let b = app
        .submit(
            "/batch/tests",
            &json!({"modules": [{"id": "b", "path": "f"}], "test_command": "true"}),
        )
        .await;
    app.wait_finished(&a, Duration::from_secs(30)).await;
    app.wait_finished(&b, Duration::from_secs(30)).await;
    let (status, list) = app.get("/batch/jobs").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["total"], 2);
    assert_eq!(list["jobs"][0]["job_id"], b.as_str());
    let (_, list) = app
        .get("/batch/jobs?job_type=batch_validation&status=completed")
        .await;
    assert_eq!(list["total"], 1);
    assert_eq!(list["jobs"][0]["job_id"], a.as_str());
    let (_, list) = app.get("/batch/jobs?status=cancelled").await;
    assert_eq!(list["total"], 0);
    let (_, list) = app.get("/batch/jobs?limit=1&offset=1").await;
    assert_eq!(list["total"], 2);
    assert_eq!(list["jobs"].as_array().unwrap().len(), 1);
    assert_eq!(list["jobs"][0]["job_id"], a.as_str());
    let (status, health) = app.get("/health").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(health["status"], "ok");
}

/// Issue 18: a list entry carries its job's summary and where to read the results, not
/// every item's result; `GET /batch/jobs/{id}` still carries them all.
#[actix_web::test]
async fn jobs_list_entries_carry_a_summary_not_every_result() {
    let app = spawn_app().await;
    app.write_file("f", "");
    let targets: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("t{i}"), "path": "f"}))
        .collect();
    let id = app
        .submit(
            "/batch/validation",
            &json!({"targets": targets, "check_command": "true"}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    let full = &job["result"];
    assert_eq!(full["results"].as_array().map(Vec::len), Some(3), "{job}");
    assert_eq!(full["results"][1]["target_id"], "t1", "{job}");
    let (status, list) = app.get("/batch/jobs").await;
    assert_eq!(status, StatusCode::OK);
    let entry = &list["jobs"][0];
    assert_eq!(entry["job_id"], id.as_str());
    let brief = &entry["result"];
    assert!(
        brief.get("results").is_none(),
        "a list carries no results: {brief}"
    );
    assert_eq!(brief["summary"], full["summary"], "{brief}");
    assert_eq!(brief["summary"]["successful"], 3, "{brief}");
    assert_eq!(brief["results_count"], 3, "{brief}");
    assert_eq!(brief["results_url"], format!("/batch/jobs/{id}"));
    assert_eq!(brief["items_url"], format!("/batch/jobs/{id}/items"));
    let (status, page) = app.get(brief["items_url"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(page["total"], 3, "{page}");
    assert!(brief["elapsed_seconds"].as_f64().unwrap() >= 0.0, "{brief}");
}

#[actix_web::test]
async fn many_short_jobs_in_a_row_never_stall_their_kind() {
    // One fast-failing item per job (a refused escape: nothing is spawned): each job is
    // finalized while the next claim for it may still be in flight. The claim room must
    // come back every time.
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), 2)].into(),
        },
        |b| b,
    )
    .await;
    for round in 0..400 {
        let id = app
            .submit(
                "/batch/validation",
                &json!({"targets": [{"id": "x", "path": "../missing.py"}], "check_command": "true", "parallel": 1}),
            )
            .await;
        let job = app.wait_finished(&id, Duration::from_secs(10)).await;
        assert_eq!(
            job["result"]["summary"]["failed"], 1,
            "round {round}: {job}"
        );
    }
}

/// Submits a big job of slow items, then a small one, and returns how long the small one
/// took to finish.
async fn small_job_wait(limit: usize, big_parallel: u32, item_seconds: f64) -> Duration {
    let app = spawn_app_with(
        AppOptions {
            kind_concurrency: [("batch_validation".to_string(), limit)].into(),
        },
        |b| b,
    )
    .await;
    app.write_file("f", "");
    let big: Vec<Value> = (0..100)
        .map(|i| json!({"id": format!("b{i}"), "path": "f"}))
        .collect();
    let big_id = app
        .submit(
            "/batch/validation",
            &json!({"targets": big, "check_command": format!("sh -c 'sleep {item_seconds}'"), "parallel": big_parallel}),
        )
        .await;
    app.wait_job(&big_id, Duration::from_secs(30), |j| {
        j["status"] == "running"
    })
    .await;
    let t0 = std::time::Instant::now();
    let small_id = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "s1", "path": "f"}, {"id": "s2", "path": "f"}], "check_command": "true"}),
        )
        .await;
    let small = app.wait_finished(&small_id, Duration::from_secs(60)).await;
    assert_eq!(small["result"]["summary"]["successful"], 2);
    let waited = t0.elapsed();
    app.delete(&format!("/batch/jobs/{big_id}")).await;
    waited
}

#[actix_web::test]
async fn a_small_job_uses_idle_slots_next_to_a_narrow_big_job() {
    // The big job may run one item at a time; the kind has three more slots.
    let waited = small_job_wait(4, 1, 0.5).await;
    assert!(
        waited < Duration::from_secs(2),
        "small job waited {waited:?} beside idle slots"
    );
}

#[actix_web::test]
async fn a_small_job_gets_the_next_free_slot_behind_a_big_job() {
    // The big job fills every slot with 0.5 s items: the small one must take the next slot
    // that frees up, not wait for the big job's claimed buffer to drain first.
    let waited = small_job_wait(2, 2, 0.5).await;
    assert!(
        waited < Duration::from_secs(2),
        "small job waited {waited:?}"
    );
}
