//! The library as an embedder uses it: a custom processor, registered through the builder,
//! reached over REST (`POST /batch/jobs`) and through the `Engine` handle.

use crate::helpers::*;
use batchforge::{
    EngineBuilder, EngineConfig, Item, ItemContext, ItemOutcome, NewItem, NewJob, Processor,
};
use serde_json::{json, Value};
use std::time::Duration;

struct Doubler;

#[async_trait::async_trait(?Send)]
impl Processor for Doubler {
    fn kind(&self) -> &str {
        "double"
    }

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        ctx.progress.current(format!("doubling {}", item.key));
        match item.payload["n"].as_i64() {
            Some(13) => panic!("unlucky number"),
            Some(7) => ItemOutcome {
                status: batchforge::ItemStatus::Running,
                result: json!({"id": item.key}),
                error: None,
                retryable: false,
            },
            Some(n) => ItemOutcome::succeeded(
                json!({"id": item.key, "doubled": n * 2, "factor": ctx.options["factor"]}),
            ),
            None => ItemOutcome::failed(json!({"id": item.key}), "n is not an integer"),
        }
    }
}

#[actix_web::test]
async fn a_custom_processor_runs_over_rest_and_a_panic_fails_only_its_item() {
    let app = spawn_app_with(AppOptions::default(), |b| b.processor(Doubler)).await;
    let id = app
        .submit(
            "/batch/jobs",
            &json!({
                "type": "double",
                "items": [{"id": "a", "n": 2}, {"id": "b", "n": 13}, {"id": "c", "n": "x"}, {"id": 4, "n": 5}, {"id": "e", "n": 7}],
                "options": {"k": 1},
                "factor": 2
            }),
        )
        .await;
    assert!(id.starts_with("double-"));
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed");
    let results = job["result"]["results"].as_array().unwrap();
    assert_eq!(results[0], json!({"id": "a", "doubled": 4, "factor": 2}));
    assert!(results[1]["error"]
        .as_str()
        .unwrap()
        .contains("processor panicked: unlucky number"));
    assert_eq!(results[3]["doubled"], 10);
    assert_eq!(job["result"]["summary"]["successful"], 2);
    assert_eq!(job["result"]["summary"]["failed"], 3);
    let (_, failed) = app
        .get(&format!("/batch/jobs/{id}/items?status=failed"))
        .await;
    let keys: Vec<&str> = failed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["id"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["b", "c", "e"]);
    assert_eq!(failed["items"][1]["error"], "n is not an integer");
    assert!(failed["items"][2]["error"]
        .as_str()
        .unwrap()
        .contains("non-final status 'running'"));
}

#[actix_web::test]
async fn an_embedder_submits_and_reads_jobs_through_the_engine_handle() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "e.db");
    let engine = EngineBuilder::new(EngineConfig {
        database_url: db.url.clone(),
        workspace: dir.path().to_path_buf(),
        builtin_processors: false,
        ..EngineConfig::default()
    })
    .processor(Doubler)
    .start()
    .await
    .unwrap();
    let view = engine
        .submit(NewJob {
            kind: "double".into(),
            spec: json!({"factor": 3}),
            parallel: 2,
            metadata: json!({"who": "embedder"}),
            items: (0..10)
                .map(|n| NewItem::new(format!("k{n}"), json!({"n": n * 2})))
                .collect(),
            schedule: Default::default(),
        })
        .await
        .unwrap();
    let id = view.record.id.clone();
    let done = wait_for(Duration::from_secs(30), "the embedded job", || {
        let engine = engine.clone();
        let id = id.clone();
        async move {
            let job = engine.job(&id).await.unwrap().unwrap();
            job.record.status.is_terminal().then_some(job)
        }
    })
    .await;
    assert_eq!(done.record.succeeded, 10);
    let result: Value = done.record.result_value().unwrap();
    assert_eq!(result["results"][9]["doubled"], 36);
    assert_eq!(done.record.metadata["who"], "embedder");
    let err = engine
        .submit(NewJob {
            kind: "batch_validation".into(),
            spec: json!({}),
            parallel: 1,
            metadata: json!({}),
            items: vec![],
            schedule: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("batch_validation"), "{err}");
    let err = engine
        .submit(NewJob {
            kind: "double".into(),
            spec: json!({}),
            parallel: 1,
            metadata: json!({}),
            items: vec![],
            schedule: Default::default(),
        })
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("items: a job needs at least one item"),
        "{err}"
    );
    assert_eq!(engine.stats().await.unwrap().completed, 1);
}

/// Fails by a retryable error the first time it sees an item, succeeds after.
struct FlakyOnce(std::sync::Mutex<std::collections::HashSet<String>>);

#[async_trait::async_trait(?Send)]
impl Processor for FlakyOnce {
    fn kind(&self) -> &str {
        "flaky"
    }

    async fn process(&self, item: Item, _ctx: ItemContext) -> ItemOutcome {
        if self.0.lock().unwrap().insert(item.key.clone()) {
            ItemOutcome::error(json!({"id": item.key}), "transient")
        } else {
            ItemOutcome::succeeded(json!({"id": item.key}))
        }
    }
}

#[actix_web::test]
async fn a_retry_waiting_out_its_delay_across_a_restart_still_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = TestDb::create(dir.path(), "r.db");
    let config = || EngineConfig {
        database_url: db.url.clone(),
        workspace: dir.path().to_path_buf(),
        builtin_processors: false,
        ..EngineConfig::default()
    };
    let first = EngineBuilder::new(config())
        .processor(FlakyOnce(Default::default()))
        .start()
        .await
        .unwrap();
    let view = first
        .submit(NewJob {
            kind: "flaky".into(),
            spec: json!({"max_attempts": 3, "retry_delay_seconds": 1.5, "retry_max_delay_seconds": 1.5}),
            parallel: 1,
            metadata: json!({}),
            items: vec![NewItem::new("a", json!({}))],
            schedule: Default::default(),
        })
        .await
        .unwrap();
    let id = view.record.id.clone();
    // The first attempt failed and the retry waits out its delay: stop the engine now.
    let page = || {
        first
            .supervisor()
            .send(batchforge::queue::messages::ListItems {
                job_id: id.clone(),
                status: None,
                limit: 10,
                offset: 0,
            })
    };
    crate::helpers::wait_for(Duration::from_secs(30), "the first attempt", || async {
        let items = page().await.unwrap().unwrap().unwrap().items;
        (items[0].attempt_errors == ["transient"]).then_some(())
    })
    .await;
    first.shutdown(Duration::from_secs(1)).await;
    drop(first);
    let second = EngineBuilder::new(config())
        .processor(FlakyOnce(std::sync::Mutex::new(
            ["a".to_string()].into_iter().collect(),
        )))
        .start()
        .await
        .unwrap();
    let done = crate::helpers::wait_for(Duration::from_secs(30), "the retried item", || async {
        let job = second.job(&id).await.unwrap().unwrap();
        (job.record.status == batchforge::JobStatus::Completed && job.record.result.is_some())
            .then_some(job)
    })
    .await;
    assert_eq!(done.record.succeeded, 1);
    second.shutdown(Duration::from_secs(1)).await;
}
