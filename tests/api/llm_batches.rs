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
    // Every request's usage, summed into the job's progress.
    assert_eq!(job["metadata"]["progress"]["prompt_tokens"], 30, "{job}");
    assert_eq!(
        job["metadata"]["progress"]["completion_tokens"], 15,
        "{job}"
    );
    // The same totals once finished in the jobs list, and in the CLI's TOKENS column.
    let (_, page) = app.get("/batch/jobs?job_type=batch_llm").await;
    let listed = &page["jobs"][0];
    assert_eq!(listed["job_id"], id.as_str(), "{page}");
    assert_eq!(
        listed["metadata"]["progress"]["prompt_tokens"], 30,
        "{page}"
    );
    assert_eq!(
        listed["metadata"]["progress"]["completion_tokens"], 15,
        "{page}"
    );
    let out = run_cli(&app.address, &["jobs"]).await;
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap_or_default();
    assert!(header.trim_end().ends_with("TOKENS"), "{table}");
    let row = table.lines().find(|l| l.starts_with(id.as_str())).unwrap();
    assert!(row.trim_end().ends_with(" 45"), "{table}");
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

// ------------------------------------------------------------ the OpenAI-compatible `/v1`

/// Uploads `content` as the SDKs do: a multipart form with `purpose` and `file`.
async fn upload(app: &TestApp, content: &str) -> Value {
    upload_to(&app.address, content).await
}

/// [`upload`] to the server at `address`.
async fn upload_to(address: &str, content: &str) -> Value {
    let boundary = "batchforgeTestBoundary";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
         --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"input.jsonl\"\r\n\
         Content-Type: application/octet-stream\r\n\r\n{content}\r\n--{boundary}--\r\n"
    );
    let mut resp = client()
        .post(format!("{address}/v1/files"))
        .insert_header((
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        ))
        .send_body(body)
        .await
        .unwrap();
    let file: Value = serde_json::from_slice(&resp.body().await.unwrap()).unwrap();
    assert_eq!(resp.status(), StatusCode::OK, "{file}");
    file
}

fn line(id: &str, text: &str) -> String {
    json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
           "body": {"model": "llama3.2", "messages": [{"role": "user", "content": text}]}})
    .to_string()
}

async fn content(app: &TestApp, file_id: &str) -> Vec<Value> {
    content_at(&app.address, file_id).await
}

async fn content_at(address: &str, file_id: &str) -> Vec<Value> {
    let mut resp = client()
        .get(format!("{address}/v1/files/{file_id}/content"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.body().limit(64 << 20).await.unwrap();
    String::from_utf8(bytes.to_vec())
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn create_batch(app: &TestApp, file_id: &str) -> Value {
    let (status, batch) = app
        .post(
            "/v1/batches",
            &json!({"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                    "completion_window": "24h", "metadata": {"purpose": "test"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    batch
}

async fn wait_batch(app: &TestApp, id: &str, done: &[&str]) -> Value {
    wait_batch_at(&app.address, id, done).await
}

async fn wait_batch_at(address: &str, id: &str, done: &[&str]) -> Value {
    wait_for(Duration::from_secs(60), &format!("batch {id}"), || async {
        let (_, b) = send(
            &client(),
            "GET",
            &format!("{address}/v1/batches/{id}"),
            None,
        )
        .await;
        done.contains(&b["status"].as_str().unwrap_or_default())
            .then_some(b)
    })
    .await
}

#[actix_web::test]
async fn a_batch_file_runs_as_a_job_and_its_output_and_error_files_read_back() {
    let fake = FakeLlm::start(|chat| match chat.last_text() {
        "refuse" => Reply::Error(400, json!({"error": {"message": "context too long"}})),
        t => Reply::Text(format!("answer to {t}")),
    });
    let app = llm_app(&fake.url, LlmApi::OpenAi).await;
    let input = [line("r1", "one"), line("r2", "refuse"), line("r3", "three")].join("\n");
    let file = upload(&app, &input).await;
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["bytes"], input.len(), "{file}");
    let file_id = file["id"].as_str().unwrap();
    let (_, listed) = app.get("/v1/files").await;
    assert_eq!(listed["data"][0]["id"], file_id);
    assert_eq!(
        app.get(&format!("/v1/files/{file_id}")).await.1["filename"],
        "input.jsonl"
    );

    let batch = create_batch(&app, file_id).await;
    assert_eq!(batch["object"], "batch");
    assert_eq!(batch["metadata"], json!({"purpose": "test"}));
    let id = batch["id"].as_str().unwrap();
    let done = wait_batch(&app, id, &["completed"]).await;
    assert_eq!(
        done["request_counts"],
        json!({"total": 3, "completed": 2, "failed": 1}),
        "{done}"
    );
    assert!(
        done["in_progress_at"].is_i64() && done["completed_at"].is_i64(),
        "{done}"
    );
    // An ordinary job underneath.
    let job_id = done["job_id"].as_str().unwrap();
    let job = app.job(job_id).await;
    assert_eq!(job["type"], "batch_llm");
    assert_eq!(job["metadata"]["openai_batch_id"], id);

    let output = content(&app, done["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), 2);
    let r1 = output.iter().find(|l| l["custom_id"] == "r1").unwrap();
    assert_eq!(r1["response"]["status_code"], 200);
    assert_eq!(
        r1["response"]["body"]["choices"][0]["message"]["content"],
        "answer to one"
    );
    assert!(r1["error"].is_null());
    let errors = content(&app, done["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0]["custom_id"], "r2");
    assert_eq!(errors[0]["response"]["status_code"], 400);
    assert!(errors[0]["response"]["body"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("context too long"));
    let (status, out_file) = app
        .get(&format!(
            "/v1/files/{}",
            done["output_file_id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{out_file}");
    assert_eq!(out_file["purpose"], "batch_output");

    // The input file can be deleted; then it is gone.
    let (status, deleted) = app.delete(&format!("/v1/files/{file_id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(deleted["deleted"], true);
    let (status, gone) = app.get(&format!("/v1/files/{file_id}")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(gone["error"]["message"].is_string(), "{gone}");
}

#[actix_web::test]
async fn malformed_lines_fail_the_batch_with_their_line_numbers_and_batches_page() {
    let app = llm_app("http://127.0.0.1:9", LlmApi::OpenAi).await;
    let good = upload(&app, &line("a", "x")).await;
    let bad = upload(
        &app,
        &[line("a", "x"), "{not json".into(), line("a", "y")].join("\n"),
    )
    .await;
    let failed = create_batch(&app, bad["id"].as_str().unwrap()).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    let errors = failed["errors"]["data"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{failed}");
    assert_eq!(errors[0]["line"], 2);
    assert_eq!(errors[1]["line"], 3);
    assert_eq!(errors[1]["code"], "duplicate_custom_id");
    let (_, jobs) = app.get("/batch/jobs").await;
    assert_eq!(jobs["total"], 0, "a failed validation makes no job");

    let mut ids = vec![failed["id"].as_str().unwrap().to_string()];
    for _ in 0..2 {
        let b = create_batch(&app, good["id"].as_str().unwrap()).await;
        ids.push(b["id"].as_str().unwrap().to_string());
    }
    ids.reverse(); // newest first
    let (_, page1) = app.get("/v1/batches?limit=2").await;
    assert_eq!(page1["has_more"], true, "{page1}");
    let got: Vec<&str> = page1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[0].as_str(), ids[1].as_str()]);
    assert_eq!(page1["last_id"], ids[1]);
    let (_, page2) = app
        .get(&format!("/v1/batches?limit=2&after={}", ids[1]))
        .await;
    assert_eq!(page2["has_more"], false, "{page2}");
    assert_eq!(page2["data"][0]["id"], ids[2]);

    // Bad requests name their field and store nothing.
    for (body, field) in [
        (json!({"endpoint": "/v1/chat/completions"}), "input_file_id"),
        (
            json!({"input_file_id": "file-none", "endpoint": "/v1/chat/completions"}),
            "input_file_id",
        ),
        (
            json!({"input_file_id": good["id"], "endpoint": "/v1/embeddings"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": good["id"], "endpoint": "/v1/chat/completions",
                "completion_window": "forever"}),
            "completion_window",
        ),
        (
            json!({"input_file_id": good["id"], "endpoint": "/v1/chat/completions", "x": 1}),
            "x",
        ),
    ] {
        let (status, answer) = app.post("/v1/batches", &body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {answer}");
        assert_eq!(answer["field"], field, "{answer}");
        assert_eq!(answer["error"]["param"], field, "{answer}");
    }
    let (_, all) = app.get("/v1/batches?limit=100").await;
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    let (status, _) = app.get("/v1/batches?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
}

#[actix_web::test]
async fn an_unreachable_upstream_errors_each_request_and_the_batch_completes_with_an_error_file() {
    let app = llm_app("http://127.0.0.1:9", LlmApi::OpenAi).await;
    let file = upload(&app, &[line("a", "x"), line("b", "y")].join("\n")).await;
    let batch = create_batch(&app, file["id"].as_str().unwrap()).await;
    let done = wait_batch(&app, batch["id"].as_str().unwrap(), &["completed"]).await;
    assert_eq!(done["request_counts"]["failed"], 2, "{done}");
    assert!(done["output_file_id"].is_null(), "{done}");
    let errors = content(&app, done["error_file_id"].as_str().unwrap()).await;
    assert_eq!(errors.len(), 2);
    assert!(
        errors
            .iter()
            .all(|e| e["response"].is_null() && e["error"]["code"] == "upstream_unreachable"),
        "{errors:?}"
    );
}

#[actix_web::test]
async fn a_cancelled_batch_keeps_finished_requests_and_lists_the_rest_as_errors() {
    let fake = FakeLlm::start(|chat| match chat.last_text() {
        "fast" => Reply::Text("done".into()),
        _ => Reply::Delay(
            Duration::from_secs(30),
            Box::new(Reply::Text("late".into())),
        ),
    });
    let app = llm_app(&fake.url, LlmApi::OpenAi).await;
    let input = [line("f", "fast"), line("s1", "slow"), line("s2", "slow")].join("\n");
    let file = upload(&app, &input).await;
    let batch = create_batch(&app, file["id"].as_str().unwrap()).await;
    let id = batch["id"].as_str().unwrap();
    wait_for(
        Duration::from_secs(30),
        "the fast request and two slow ones",
        || async {
            let (_, b) = app.get(&format!("/v1/batches/{id}")).await;
            (b["request_counts"]["completed"] == 1 && fake.requests().len() == 3).then_some(())
        },
    )
    .await;
    let (status, cancelling) = app
        .post(&format!("/v1/batches/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::OK, "{cancelling}");
    assert!(
        ["cancelling", "cancelled"].contains(&cancelling["status"].as_str().unwrap()),
        "{cancelling}"
    );
    let done = wait_batch(&app, id, &["cancelled"]).await;
    let output = content(&app, done["output_file_id"].as_str().unwrap()).await;
    assert_eq!(output.len(), 1);
    assert_eq!(output[0]["custom_id"], "f");
    let errors = content(&app, done["error_file_id"].as_str().unwrap()).await;
    let mut ids: Vec<&str> = errors
        .iter()
        .map(|e| e["custom_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["s1", "s2"]);
}

#[actix_web::test]
async fn models_are_routed_to_their_endpoint_and_the_rest_go_to_the_default() {
    use batchforge::processors::llm_batch::parse_route;
    let coder = FakeLlm::start(|_| Reply::Text("from the coder host".into()));
    let default = FakeLlm::start(|_| Reply::Text("from the default host".into()));
    let agent = AgentConfig {
        llm_url: default.url.clone(),
        api: LlmApi::Ollama,
        routes: vec![parse_route(&format!("qwen2.5-coder:*={},api=openai", coder.url)).unwrap()],
        ..Default::default()
    };
    let app = spawn_app_with_agent(AppOptions::default(), Vec::new(), agent, |b| b).await;
    let mut coder_request = request("c", "x");
    coder_request["body"]["model"] = json!("qwen2.5-coder:7b");
    let body = json!({"requests": [coder_request, request("d", "y")]});
    let id = app.submit("/batch/llm", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["result"]["summary"]["successful"], 2, "{job}");
    let items = by_id(&app.all_items(&id, 10).await);
    assert_eq!(items["c"]["result"]["api"], "openai");
    assert_eq!(items["d"]["result"]["api"], "ollama");
    assert_eq!(coder.requests().len(), 1);
    assert_eq!(coder.requests()[0].0, "/v1/chat/completions");
    assert_eq!(coder.requests()[0].1["model"], "qwen2.5-coder:7b");
    assert_eq!(default.requests().len(), 1);
    assert_eq!(default.requests()[0].0, "/api/chat");
}

#[actix_web::test]
async fn an_upload_takes_the_bearer_token_and_a_foreign_page_cannot_post_a_form() {
    let app = crate::security::spawn_secured(batchforge::api::guard::SecurityConfig {
        tokens: vec!["tok-3b1f".into()],
        ..Default::default()
    })
    .await;
    let form = "--b\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--b\r\n\
                Content-Disposition: form-data; name=\"file\"; filename=\"f.jsonl\"\r\n\r\n{}\r\n--b--\r\n";
    let post = |token: Option<&str>, origin: Option<&str>, path: &str| {
        let mut req = client()
            .post(format!("{}{path}", app.address))
            .insert_header(("content-type", "multipart/form-data; boundary=b"));
        if let Some(t) = token {
            req = req.insert_header(("authorization", format!("Bearer {t}")));
        }
        if let Some(o) = origin {
            req = req.insert_header(("origin", o.to_string()));
        }
        req.send_body(form)
    };
    let resp = post(Some("tok-3b1f"), None, "/v1/files").await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = post(None, None, "/v1/files").await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let resp = post(Some("tok-3b1f"), Some("http://evil.example"), "/v1/files")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    // Other routes still refuse a form.
    let resp = post(Some("tok-3b1f"), None, "/batch/llm").await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[actix_web::test]
async fn the_default_api_finds_an_openai_only_server_once_and_remembers_it() {
    let fake = FakeLlm::start_openai_only(|_| Reply::Text("hello".into()));
    // The engine's default protocol, `auto`.
    let agent = AgentConfig {
        llm_url: fake.url.clone(),
        max_concurrent_requests_per_endpoint: 4,
        ..Default::default()
    };
    assert_eq!(agent.api, LlmApi::Auto);
    let app = spawn_app_with_agent(AppOptions::default(), Vec::new(), agent, |b| b).await;
    let body = json!({"requests": [request("a", "x"), request("b", "y"), request("c", "z")],
                      "parallel": 1});
    let id = app.submit("/batch/llm", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["result"]["summary"]["successful"], 3, "{job}");
    let items = app.all_items(&id, 10).await;
    assert!(
        items.iter().all(|i| i["result"]["api"] == "openai"),
        "{items:?}"
    );
    assert!(fake
        .requests()
        .iter()
        .all(|(p, _)| p == "/v1/chat/completions"));
    // Asked at first contact, then remembered (one item at a time: one question).
    assert_eq!(fake.version_probes(), 1);
    // And an Ollama server is still spoken to natively.
    let ollama = FakeLlm::start(|_| Reply::Text("native".into()));
    let id = app
        .submit(
            "/batch/llm",
            &json!({"requests": [request("n", "x")], "llm_url": ollama.url}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["result"]["summary"]["successful"], 1, "{job}");
    assert_eq!(ollama.requests()[0].0, "/api/chat");
}

/// A Python with the official `openai` SDK: `BATCHFORGE_OPENAI_PYTHON`, else the venv
/// `.ci/run` makes, else `python3` if it has the package.
fn openai_python() -> String {
    if let Ok(p) = std::env::var("BATCHFORGE_OPENAI_PYTHON") {
        return p;
    }
    let venv = std::env::temp_dir().join("batchforge-openai/bin/python");
    if venv.exists() {
        return venv.to_string_lossy().into_owned();
    }
    let has = std::process::Command::new("python3")
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        has,
        "the openai SDK is not installed: run the `openai` step of .ci/run (a venv at \
         $TMPDIR/batchforge-openai) or set BATCHFORGE_OPENAI_PYTHON"
    );
    "python3".into()
}

#[actix_web::test]
async fn the_official_openai_sdk_drives_the_batch_api_unchanged() {
    use batchforge::processors::llm_batch::parse_route;
    let fake = FakeLlm::start(|chat| match chat.last_text() {
        "refuse" => Reply::Error(400, json!({"error": {"message": "context too long"}})),
        "slow" => Reply::Delay(
            Duration::from_secs(30),
            Box::new(Reply::Text("late".into())),
        ),
        t => Reply::Text(format!("answer to {t}")),
    });
    let agent = AgentConfig {
        llm_url: fake.url.clone(),
        api: LlmApi::OpenAi,
        routes: vec![parse_route("dead-*=http://127.0.0.1:9,api=openai").unwrap()],
        retry_backoff: Duration::from_millis(20),
        max_retries: 1,
        max_concurrent_requests_per_endpoint: 8,
        ..Default::default()
    };
    let app = spawn_app_with_agent(AppOptions::default(), Vec::new(), agent, |b| b).await;
    let python = openai_python();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/llm/sdk_batches.py");
    let address = app.address.clone();
    // Off the event loop: the server under test runs on this thread.
    let out = actix_web::rt::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .env("BATCHFORGE_URL", address)
            .output()
            .expect("python runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("sdk ok: 4 batches"), "{stdout}");
    // Every batch is an ordinary job.
    let (_, jobs) = app.get("/batch/jobs?job_type=batch_llm").await;
    assert_eq!(jobs["total"], 3, "{jobs}");
}

/// Starts `batchforge serve` on `dir`'s database with the LLM at `llm_url`.
async fn serve_llm(dir: &std::path::Path, llm_url: &str) -> (tokio::process::Child, String) {
    let ws = dir.join("ws");
    std::fs::create_dir_all(&ws).unwrap();
    serve_in_dir(dir, &ws, &["--llm-url", llm_url, "--llm-concurrency", "8"]).await
}

#[actix_web::test]
async fn after_kill_9_a_restarted_batch_loses_no_finished_request_and_runs_none_twice() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let released = Arc::new(AtomicBool::new(false));
    let gate = released.clone();
    // "hold" requests hang until released (after the kill); the rest answer at once.
    // The fake speaks only OpenAI: the server's default `auto` finds that out.
    let fake = FakeLlm::start_openai_only(move |chat| {
        let text = chat.last_text().to_string();
        if text.starts_with("hold") && !gate.load(Ordering::SeqCst) {
            Reply::Delay(
                Duration::from_secs(120),
                Box::new(Reply::Text("too late".into())),
            )
        } else {
            Reply::Text(format!("answer to {text}"))
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let _db = TestDb::create(dir.path(), "jobs.db");
    let (mut child, address) = serve_llm(dir.path(), &fake.url).await;
    let lines: Vec<String> = (0..4)
        .map(|i| line(&format!("q{i}"), &format!("quick{i}")))
        .chain((0..3).map(|i| line(&format!("h{i}"), &format!("hold{i}"))))
        .collect();
    let file = upload_to(&address, &lines.join("\n")).await;
    let body = json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                      "completion_window": "24h"});
    let (status, batch) = send(
        &client(),
        "POST",
        &format!("{address}/v1/batches"),
        Some(body.to_string().as_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{batch}");
    let id = batch["id"].as_str().unwrap().to_string();
    wait_for(
        Duration::from_secs(30),
        "quick requests done, held ones in flight",
        || async {
            let (_, b) = send(
                &client(),
                "GET",
                &format!("{address}/v1/batches/{id}"),
                None,
            )
            .await;
            (b["request_counts"]["completed"] == 4 && fake.requests().len() == 7).then_some(())
        },
    )
    .await;
    child.start_kill().unwrap(); // SIGKILL
    child.wait().await.unwrap();
    released.store(true, Ordering::SeqCst);

    let (_child, address) = serve_llm(dir.path(), &fake.url).await;
    let done = wait_batch_at(&address, &id, &["completed", "failed"]).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["request_counts"]["completed"], 7, "{done}");
    let output = content_at(&address, done["output_file_id"].as_str().unwrap()).await;
    let mut ids: Vec<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort();
    assert_eq!(ids, ["h0", "h1", "h2", "q0", "q1", "q2", "q3"]);
    // The upstream's calls per request: a finished one never again, an interrupted one
    // once more.
    let calls = |text: &str| {
        fake.requests()
            .iter()
            .filter(|(_, b)| b["messages"][0]["content"] == text)
            .count()
    };
    for i in 0..4 {
        assert_eq!(calls(&format!("quick{i}")), 1, "quick{i} ran again");
    }
    for i in 0..3 {
        assert_eq!(calls(&format!("hold{i}")), 2, "hold{i}");
    }
}

#[actix_web::test]
async fn files_page_in_both_orders_by_purpose_and_refuse_bad_parameters() {
    let app = llm_app("http://127.0.0.1:9", LlmApi::OpenAi).await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            upload(&app, &line(&format!("c{i}"), "x")).await["id"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    let list = |query: String| {
        let address = app.address.clone();
        async move {
            send(
                &client(),
                "GET",
                &format!("{address}/v1/files{query}"),
                None,
            )
            .await
        }
    };
    // Walk the newest-first listing two at a time; then oldest first in one page.
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let (status, page) = list(format!("?limit=2{after}")).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        for f in page["data"].as_array().unwrap() {
            seen.push(f["id"].as_str().unwrap().to_string());
        }
        assert_eq!(page["last_id"].as_str(), seen.last().map(String::as_str));
        if page["has_more"] == false {
            break;
        }
        after = format!("&after={}", page["last_id"].as_str().unwrap());
    }
    // Uploads in one second share created_at; the id breaks ties, so compare as sets
    // and check the order is the reverse of the ascending listing.
    let (_, asc) = list("?order=asc".into()).await;
    let asc: Vec<String> = asc["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_string())
        .collect();
    let mut reversed = asc.clone();
    reversed.reverse();
    assert_eq!(seen, reversed, "pages of 2 walk the whole listing once");
    let mut sorted = seen.clone();
    sorted.sort();
    ids.sort();
    assert_eq!(sorted, ids);
    let (_, other) = list("?purpose=fine-tune".into()).await;
    assert_eq!(other["data"], json!([]), "{other}");
    assert_eq!(other["has_more"], false);
    let (_, batch) = list("?purpose=batch&limit=10000".into()).await;
    assert_eq!(batch["data"].as_array().unwrap().len(), 5, "{batch}");

    for (query, field) in [
        ("?limit=0", "limit"),
        ("?limit=10001", "limit"),
        ("?limit=two", "limit"),
        ("?order=sideways", "order"),
        ("?page=2", "page"),
        ("?after=%00", "after"),
    ] {
        let (status, body) = list(query.into()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{query}: {body}");
        assert!(body.to_string().contains(field), "{query}: {body}");
    }
}
