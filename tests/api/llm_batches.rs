//! `batch_llm` (`POST /batch/llm`): one chat completion per request against the scripted
//! LLM server of [`crate::fake_llm`], over both protocols.

use crate::fake_llm::{FakeLlm, Reply};
use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::agent::{AgentConfig, LlmApi};
use serde_json::{json, Value};
use std::time::Duration;

async fn llm_app(url: &str, api: LlmApi) -> TestApp {
    let agent = AgentConfig {
        llm_url: url.to_string(),
        api,
        retry_backoff: Duration::from_millis(20),
        max_retries: 1,
        max_concurrent_requests_per_endpoint: 8,
        ..Default::default()
    };
    spawn_app_with_agent(AppOptions::default(), Vec::new(), agent, |b| b).await
}

fn request(id: &str, text: &str) -> Value {
    json!({"custom_id": id, "body": {"model": "llama3.2", "max_tokens": 16,
        "response_format": {"type": "json_object"},
        "messages": [{"role": "user", "content": text}]}})
}

fn by_id(items: &[Value]) -> std::collections::HashMap<String, Value> {
    items
        .iter()
        .map(|i| (i["id"].as_str().unwrap().to_string(), i.clone()))
        .collect()
}

#[actix_web::test]
async fn each_request_is_one_chat_completion_passed_through_to_an_openai_endpoint() {
    let fake = FakeLlm::start(|chat| Reply::Text(format!("echo: {}", chat.last_text())));
    let app = llm_app(&fake.url, LlmApi::OpenAi).await;
    let body = json!({"requests": [request("a", "one"), request("b", "two"), request("c", "three")],
                      "parallel": 3});
    let id = app.submit("/batch/llm", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["type"], "batch_llm", "{job}");
    let items = by_id(&app.all_items(&id, 10).await);
    assert_eq!(items.len(), 3);
    let a = &items["a"]["result"];
    assert_eq!(a["custom_id"], "a");
    assert_eq!(a["status_code"], 200);
    assert_eq!(a["api"], "openai");
    assert_eq!(a["response"]["object"], "chat.completion");
    assert_eq!(
        a["response"]["choices"][0]["message"]["content"],
        "echo: one"
    );
    assert_eq!(
        a["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5})
    );
    assert_eq!(
        items["c"]["result"]["response"]["choices"][0]["message"]["content"],
        "echo: three"
    );
    // The body reached the upstream as it was sent, fields the engine does not read too.
    let requests = fake.requests();
    assert_eq!(requests.len(), 3);
    assert!(requests.iter().all(|(p, _)| p == "/v1/chat/completions"));
    let sent = requests
        .iter()
        .find(|(_, b)| b["messages"][0]["content"] == "two")
        .unwrap();
    assert_eq!(sent.1["response_format"], json!({"type": "json_object"}));
    assert_eq!(sent.1["max_tokens"], 16);
}

#[actix_web::test]
async fn an_ollama_endpoint_gets_api_chat_and_its_counts_are_the_usage() {
    let fake = FakeLlm::start(|_| Reply::Text("{\"ok\": true}".into()));
    let app = llm_app(&fake.url, LlmApi::Ollama).await;
    let id = app
        .submit("/batch/llm", &json!({"requests": [request("only", "hi")]}))
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let items = app.all_items(&id, 10).await;
    let result = &items[0]["result"];
    assert_eq!(result["api"], "ollama");
    assert_eq!(result["response"]["message"]["content"], "{\"ok\": true}");
    assert_eq!(
        result["usage"],
        json!({"prompt_tokens": 10, "completion_tokens": 5})
    );
    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let (path, sent) = &requests[0];
    assert_eq!(path, "/api/chat");
    assert_eq!(sent["stream"], false);
    assert_eq!(sent["format"], "json");
    assert_eq!(sent["options"]["num_predict"], 16);
    assert!(sent.get("max_tokens").is_none(), "{sent}");
}

#[actix_web::test]
async fn a_jsonl_batch_file_of_openai_lines_is_accepted_with_query_options() {
    let fake = FakeLlm::start(|_| Reply::Text("fine".into()));
    let app = llm_app("http://127.0.0.1:9", LlmApi::Ollama).await;
    let lines: String = ["x", "y"]
        .iter()
        .map(|id| {
            let mut line = request(id, "q");
            line["method"] = json!("POST");
            line["url"] = json!("/v1/chat/completions");
            format!("{line}\n")
        })
        .collect();
    let url = format!(
        "{}/batch/llm?api=openai&llm_url={}&parallel=2",
        app.address, fake.url
    );
    let mut resp = client()
        .post(url)
        .insert_header(("content-type", "application/x-ndjson"))
        .send_body(lines)
        .await
        .unwrap();
    let job: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{job}");
    assert_eq!(job["options"]["api"], "openai");
    let id = job["job_id"].as_str().unwrap();
    let job = app.wait_finished(id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let items = by_id(&app.all_items(id, 10).await);
    assert_eq!(items["y"]["result"]["custom_id"], "y");
    assert_eq!(fake.requests().len(), 2);
}

#[actix_web::test]
async fn upstream_errors_fail_their_request_only_naming_the_status() {
    let fake = FakeLlm::start(|chat| {
        if chat.last_text() == "bad" {
            Reply::Error(
                400,
                json!({"error": {"message": "max_tokens is too large"}}),
            )
        } else {
            Reply::Text("ok".into())
        }
    });
    let app = llm_app(&fake.url, LlmApi::OpenAi).await;
    let body = json!({"requests": [request("good", "fine"), request("bad", "bad")]});
    let id = app.submit("/batch/llm", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    // A job whose items ran to an end completes, failed items and all.
    assert_eq!(job["status"], "completed", "{job}");
    assert_eq!(job["result"]["summary"]["failed"], 1, "{job}");
    let items = by_id(&app.all_items(&id, 10).await);
    assert_eq!(items["good"]["status"], "succeeded");
    let bad = &items["bad"];
    assert_eq!(bad["status"], "failed");
    assert_eq!(bad["result"]["status_code"], 400);
    assert_eq!(bad["result"]["error"]["code"], "upstream_error");
    assert!(
        bad["error"]
            .as_str()
            .unwrap()
            .contains("max_tokens is too large"),
        "{bad}"
    );
}

#[actix_web::test]
async fn bad_requests_are_refused_naming_the_field_and_store_nothing() {
    let app = llm_app("http://127.0.0.1:9", LlmApi::OpenAi).await;
    let cases = [
        (json!({"requests": []}), "requests"),
        (
            json!({"requests": [{"custom_id": "a", "body": {"messages": [{"role": "user", "content": "x"}]}}]}),
            "requests[0].body.model",
        ),
        (
            json!({"requests": [request("a", "x"), {"custom_id": "b", "body": {"model": "m"}}]}),
            "requests[1].body.messages",
        ),
        (
            json!({"requests": [request("a", "x"), request("a", "y")]}),
            "requests[1].custom_id",
        ),
        (
            json!({"requests": [{"custom_id": "a", "method": "GET", "body": request("a", "x")["body"]}]}),
            "requests[0].method",
        ),
        (
            json!({"requests": [{"custom_id": "a", "url": "/v1/embeddings", "body": request("a", "x")["body"]}]}),
            "requests[0].url",
        ),
        (
            json!({"requests": [request("a", "x")], "api": "grpc"}),
            "api",
        ),
        (
            json!({"requests": [request("a", "x")], "llm_url": "ftp://host"}),
            "llm_url",
        ),
        (
            json!({"requests": [request("a", "x")], "modle": "m"}),
            "modle",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/batch/llm", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
    }
    let mut streamed = request("a", "x");
    streamed["body"]["stream"] = json!(true);
    let (status, answer) = app
        .post("/batch/llm", &json!({"requests": [streamed]}))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(answer["field"], "requests[0].body.stream");
    let (_, jobs) = app.get("/batch/jobs").await;
    assert_eq!(jobs["total"], 0, "{jobs}");
}
