//! The OpenAPI document and Swagger UI: the document covers every mounted route, its
//! examples are accepted, and what the server answers has the documented shape.

use crate::helpers::{client, spawn_app, TestApp};
use awc::http::StatusCode;
use serde_json::{json, Value};
use std::time::Duration;

async fn spec(app: &TestApp) -> Value {
    let (status, spec) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3."),
        "{spec}"
    );
    spec
}

/// Sends `method path` and returns the status and body text.
async fn raw(app: &TestApp, method: &str, path: &str) -> (StatusCode, String) {
    let url = format!("{}{path}", app.address);
    let c = client();
    let req = match method {
        "get" => c.get(&url),
        "post" => c
            .post(&url)
            .insert_header(("content-type", "application/json")),
        "delete" => c
            .delete(&url)
            .insert_header(("content-type", "application/json")),
        "put" => c
            .put(&url)
            .insert_header(("content-type", "application/json")),
        other => panic!("method {other}"),
    };
    let mut resp = req.send_body("{}").await.expect("request");
    let status = resp.status();
    // Event streams of unfinished jobs never end; their status line is enough.
    let is_stream = resp
        .headers()
        .get("content-type")
        .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
    let body = if is_stream {
        String::new()
    } else {
        let bytes = resp.body().limit(64 << 20).await.expect("body");
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (status, body)
}

#[actix_web::test]
async fn the_document_lists_every_mounted_route_and_each_is_really_mounted() {
    let app = spawn_app().await;
    let spec = spec(&app).await;
    let job = app
        .submit(
            "/batch/validation",
            &json!({"targets": [{"id": "a", "path": "a"}], "check_command": "true"}),
        )
        .await;
    app.wait_finished(&job, Duration::from_secs(30)).await;

    let paths = spec["paths"].as_object().unwrap();
    let mut documented = 0;
    for (path, ops) in paths {
        documented += ops.as_object().unwrap().len();
        for method in ops.as_object().unwrap().keys() {
            assert!(
                batchforge::api::ROUTES.contains(&(method.as_str(), path.as_str())),
                "the document lists {method} {path}, which the server does not mount"
            );
        }
    }
    assert_eq!(documented, batchforge::api::ROUTES.len());
    for (method, path) in batchforge::api::ROUTES {
        assert!(
            spec["paths"][path][method].is_object(),
            "{method} {path} is mounted but not documented"
        );
        assert!(
            spec["paths"][path][method]["responses"]["200"].is_object(),
            "{method} {path} documents no 200 answer"
        );
        // Mounted: the answer is never the router's "no route" 404.
        let concrete = path.replace("{id}", &job);
        let (status, body) = raw(&app, method, &concrete).await;
        assert!(
            !body.contains("no route for"),
            "{method} {concrete} is documented but not mounted: {status} {body}"
        );
    }
}

#[actix_web::test]
async fn other_methods_on_known_paths_are_405_with_allow() {
    let app = spawn_app().await;
    let resp = client()
        .put(format!("{}/batch/jobs", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let allow = resp.headers().get("allow").unwrap().to_str().unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let (status, body) = raw(&app, "put", "/batch/jobs").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert!(body["detail"].as_str().unwrap().contains("PUT"), "{body}");
    // An unknown path stays a 404.
    let (status, _) = raw(&app, "put", "/nowhere").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn swagger_ui_is_served_from_the_binary() {
    let app = spawn_app().await;
    let resp = awc::Client::builder()
        .disable_redirects()
        .finish()
        .get(format!("{}/docs", app.address))
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_redirection(), "{}", resp.status());
    assert_eq!(resp.headers().get("location").unwrap(), "docs/");
    let (status, html) = raw(&app, "get", "/docs/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(html.contains("swagger-ui-bundle.js"), "{html}");
    let (status, bundle) = raw(&app, "get", "/docs/swagger-ui-bundle.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        bundle.len() > 100_000,
        "the bundle is embedded, not fetched"
    );
    let (status, init) = raw(&app, "get", "/docs/swagger-initializer.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(init.contains("../openapi.json"), "{init}");
}

#[actix_web::test]
async fn documented_examples_are_accepted_and_answers_match_their_schemas() {
    let app = spawn_app().await;
    app.write_file("README.md", "hello\n");
    let spec = spec(&app).await;
    let schemas = &spec["components"]["schemas"];
    let mut jobs = Vec::new();
    for path in [
        "/batch/validation",
        "/batch/tests",
        "/batch/mcp-operations",
        "/batch/agent-tasks",
    ] {
        let body = &spec["paths"][path]["post"]["requestBody"]["content"]["application/json"];
        let schema_ref = body["schema"]["$ref"].as_str().unwrap();
        let name = schema_ref.rsplit('/').next().unwrap();
        let example = &schemas[name]["example"];
        assert!(example.is_object(), "{name} has no example");
        let (status, answer) = app.post(path, example).await;
        if path == "/batch/agent-tasks" && status == StatusCode::NOT_IMPLEMENTED {
            // The agent processor is not part of every build; the answer is documented.
            assert!(spec["paths"][path]["post"]["responses"]["501"].is_object());
            continue;
        }
        assert_eq!(
            status,
            StatusCode::OK,
            "{path} refused its example: {answer}"
        );
        assert_conforms(&answer, "JobResponse", schemas);
        jobs.push(answer["job_id"].as_str().unwrap().to_string());
    }
    for job in &jobs {
        let done = app.wait_finished(job, Duration::from_secs(60)).await;
        assert_conforms(&done, "JobResponse", schemas);
        let (_, items) = app.get(&format!("/batch/jobs/{job}/items")).await;
        assert_conforms(&items, "ItemList", schemas);
        for item in items["items"].as_array().unwrap() {
            assert_conforms(item, "ItemResponse", schemas);
        }
    }
    let (_, list) = app.get("/batch/jobs").await;
    assert_conforms(&list, "JobList", schemas);
    let (_, stats) = app.get("/batch/stats").await;
    assert_conforms(&stats, "StatsResponse", schemas);
    let (_, health) = app.get("/health").await;
    assert_conforms(&health, "HealthResponse", schemas);
    let (status, error) = app.get("/batch/jobs?limit=0").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_conforms(&error, "ErrorBody", schemas);
}

/// The answer has every required property of the named schema and no property the schema
/// does not list.
fn assert_conforms(value: &Value, schema: &str, schemas: &Value) {
    let s = &schemas[schema];
    let props = s["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("schema {schema} has no properties"));
    let obj = value
        .as_object()
        .unwrap_or_else(|| panic!("{schema}: not an object: {value}"));
    for key in obj.keys() {
        assert!(
            props.contains_key(key),
            "{schema}: the server answers '{key}', which the document does not list"
        );
    }
    for req in s["required"].as_array().into_iter().flatten() {
        let req = req.as_str().unwrap();
        assert!(
            obj.contains_key(req),
            "{schema}: required '{req}' missing from {value}"
        );
    }
}

/// Issue 18, item 8: the document says what the server refuses and accepts.
#[actix_web::test]
async fn the_document_matches_what_the_server_accepts_and_refuses() {
    use batchforge::submission::fields::*;
    let app = spawn_app().await;
    let spec = spec(&app).await;
    let schemas = &spec["components"]["schemas"];
    for path in [
        "/batch/validation",
        "/batch/tests",
        "/batch/mcp-operations",
        "/batch/agent-tasks",
        "/batch/jobs",
    ] {
        let responses = &spec["paths"][path]["post"]["responses"];
        for status in ["409", "413", "422"] {
            assert!(
                responses[status].is_object(),
                "{path} documents no {status}"
            );
        }
    }
    assert!(spec["paths"]["/batch/jobs/{id}/retry"]["post"]["responses"]["400"].is_object());

    // Each submission body is one closed object whose fields are exactly the known ones.
    for (name, own, options) in [
        ("ValidationRequest", "targets", VALIDATION_OPTIONS),
        ("TestsRequest", "modules", TESTS_OPTIONS),
        ("AgentTasksRequest", "tasks", AGENT_OPTIONS),
        ("McpRequest", "operations", MCP_OPTIONS),
    ] {
        let schema = &schemas[name];
        assert_eq!(schema["additionalProperties"], false, "{name}");
        let mut documented: Vec<&str> = schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut known: Vec<&str> = ENGINE_FIELDS
            .iter()
            .chain(COMPAT_FIELDS)
            .chain(options)
            .copied()
            .chain([own])
            .collect();
        documented.sort_unstable();
        known.sort_unstable();
        known.dedup();
        assert_eq!(
            documented, known,
            "{name}: documented fields ≠ accepted fields"
        );
    }
    assert_eq!(schemas["GenericJobRequest"]["additionalProperties"], true);

    // A schedule's job documents no run_at/idempotency_key, which the server refuses.
    let job = &schemas["ScheduleRequest"]["properties"]["job"]["$ref"];
    assert_eq!(job, "#/components/schemas/ScheduleJob");
    for refused in ["run_at", "idempotency_key"] {
        assert!(schemas["ScheduleJob"]["properties"][refused].is_null());
    }
    app.write_file("README.md", "hello\n");
    let (status, body) = app
        .post("/batch/schedules", &schemas["ScheduleRequest"]["example"])
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A retry's status: null is documented and accepted.
    let status_schema = &schemas["RetryRequest"]["properties"]["status"];
    assert!(status_schema["oneOf"]
        .as_array()
        .unwrap()
        .contains(&json!({"type": "null"})));

    // Each MCP operation type documents its required fields; the server agrees.
    let variants = schemas["McpOperation"]["oneOf"].as_array().unwrap();
    let variant = |op: &str| {
        variants
            .iter()
            .find(|v| v["properties"]["type"]["enum"] == json!([op]))
            .unwrap_or_else(|| panic!("no {op} variant"))
            .clone()
    };
    assert_eq!(
        variant("write")["required"],
        json!(["type", "path", "content"])
    );
    assert_eq!(variant("write")["properties"]["content"]["type"], "string");
    assert_eq!(
        variant("call")["properties"]["arguments"]["type"],
        json!(["object", "null"])
    );
    for (op, field) in [
        (
            json!({"type": "write", "path": "a", "content": null}),
            "operations[0].content",
        ),
        (
            json!({"type": "call", "tool": "t", "arguments": [null, null]}),
            "operations[0].arguments",
        ),
    ] {
        let (status, body) = app
            .post("/batch/mcp-operations", &json!({"operations": [op]}))
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{op}: {body}");
        assert_eq!(body["field"], field, "{op}: {body}");
    }

    // Event streams are described as such.
    for path in ["/batch/jobs/{id}/events", "/batch/events"] {
        let content = &spec["paths"][path]["get"]["responses"]["200"]["content"];
        assert_eq!(
            content["text/event-stream"]["schema"]["format"], "event-stream",
            "{path}"
        );
    }
    // No operation carries a `null` where the format wants a list or an object.
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            assert!(
                !op.get("parameters").is_some_and(Value::is_null),
                "{method} {path}"
            );
            for (status, r) in op["responses"].as_object().unwrap() {
                assert!(
                    !r.get("content").is_some_and(Value::is_null),
                    "{method} {path} {status}"
                );
            }
        }
    }
    assert_eq!(
        app.get("/batch/jobs").await.1["total"],
        0,
        "nothing was submitted"
    );
}
