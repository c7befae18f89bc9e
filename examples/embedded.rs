//! A host actix-web application that embeds batchforge: it registers its own processor
//! kind (`word_count`), mounts the batchforge REST routes under `/engine`, keeps a route of
//! its own, and talks to the engine directly through its `Engine` handle.
//!
//! ```text
//! cargo run --example embedded                # serve on 127.0.0.1:8080 until Ctrl-C
//! cargo run --example embedded -- --once      # submit one job, print its result, exit
//! ```
//!
//! With the server running:
//! ```text
//! curl -s -X POST -H 'content-type: application/json' http://127.0.0.1:8080/engine/batch/jobs \
//!   -d '{"type": "word_count", "items": [{"id": "a", "text": "one two"}, {"id": "b", "text": "three"}]}'
//! ```

use actix_web::{web, App, HttpResponse, HttpServer};
use batchforge::{
    EngineBuilder, EngineConfig, Item, ItemContext, ItemOutcome, NewItem, NewJob, Processor,
};
use serde_json::json;
use std::time::Duration;

/// Counts the words of each item's `text`.
struct WordCount;

#[async_trait::async_trait(?Send)]
impl Processor for WordCount {
    fn kind(&self) -> &str {
        "word_count"
    }

    fn default_concurrency(&self) -> usize {
        64
    }

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        ctx.progress.current(format!("counting {}", item.key));
        // Honour cancellation even in a short item: a real processor would select on it
        // around its long awaits.
        if ctx.cancel.is_cancelled() {
            return ItemOutcome::cancelled(json!({"id": item.key}));
        }
        match item.payload["text"].as_str() {
            Some(text) => ItemOutcome::succeeded(json!({
                "id": item.key,
                "words": text.split_whitespace().count(),
            })),
            None => ItemOutcome::failed(json!({"id": item.key}), "item has no string `text`"),
        }
    }
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let once = std::env::args().any(|a| a == "--once");
    let data = std::env::temp_dir().join("batchforge-example");
    let engine = EngineBuilder::new(EngineConfig {
        database_url: format!("sqlite://{}", data.join("example.db").display()),
        ..EngineConfig::default()
    })
    .processor(WordCount)
    .start()
    .await
    .map_err(std::io::Error::other)?;

    if once {
        let job = engine
            .submit(NewJob {
                kind: "word_count".into(),
                spec: json!({}),
                parallel: 4,
                metadata: json!({"source": "example"}),
                items: ["one two three", "four five", "six"]
                    .iter()
                    .enumerate()
                    .map(|(i, text)| NewItem::new(format!("line{i}"), json!({ "text": text })))
                    .collect(),
                schedule: Default::default(),
            })
            .await
            .map_err(std::io::Error::other)?;
        let id = job.record.id;
        for _ in 0..200 {
            let view = engine
                .job(&id)
                .await
                .map_err(std::io::Error::other)?
                .expect("the job exists");
            if view.record.status.is_terminal() {
                let result = view.record.result_value().unwrap_or_default();
                println!("{}", serde_json::to_string_pretty(&result)?);
                let words: u64 = result["results"]
                    .as_array()
                    .map(|r| r.iter().filter_map(|x| x["words"].as_u64()).sum())
                    .unwrap_or(0);
                assert_eq!(words, 6, "the example counts six words");
                engine.shutdown(Duration::from_secs(1)).await;
                return Ok(());
            }
            actix_web::rt::time::sleep(Duration::from_millis(50)).await;
        }
        return Err(std::io::Error::other("the job did not finish in 10 s"));
    }

    let for_http = engine.clone();
    println!("host app on http://127.0.0.1:8080 (batchforge under /engine)");
    HttpServer::new(move || {
        App::new()
            .route(
                "/",
                web::get().to(|| async { HttpResponse::Ok().body("the host application\n") }),
            )
            .service(web::scope("/engine").configure(batchforge::api::routes(for_http.clone())))
    })
    .bind("127.0.0.1:8080")?
    .run()
    .await?;
    engine.shutdown(Duration::from_secs(5)).await;
    Ok(())
}
