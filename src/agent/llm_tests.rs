//! Unit tests of the LLM client: request shapes, replies, retries.

use super::*;

#[test]
fn backoff_doubles_with_jitter_and_is_capped() {
    let p = RetryPolicy {
        max_retries: 5,
        base: Duration::from_millis(500),
        cap: Duration::from_secs(4),
    };
    assert_eq!(p.delay(0, 0.5), Duration::from_millis(500));
    assert_eq!(p.delay(1, 0.5), Duration::from_millis(1000));
    assert_eq!(p.delay(2, 0.5), Duration::from_millis(2000));
    assert_eq!(p.delay(3, 0.5), Duration::from_secs(4));
    assert_eq!(
        p.delay(30, 0.99),
        Duration::from_secs(4),
        "never past the cap"
    );
    assert_eq!(p.delay(0, 0.0), Duration::from_millis(375));
    assert!(p.delay(0, 0.999) < Duration::from_millis(625));
    for a in 0..4 {
        assert!(p.delay(a, 0.0) <= p.delay(a + 1, 0.0));
    }
}

#[test]
fn errors_are_classified_by_what_the_server_said() {
    let e = classify_message(
        "http://h",
        "nope:1b",
        404,
        "model \"nope:1b\" not found, try pulling it first",
    );
    assert!(matches!(e, LlmError::UnknownModel { .. }), "{e:?}");
    assert!(e
        .to_string()
        .contains("model 'nope:1b' is not available at http://h"));
    let e = classify_message(
        "http://h",
        "gemma",
        400,
        "registry.ollama.ai/library/gemma does not support tools",
    );
    assert!(matches!(e, LlmError::ToolsUnsupported { .. }));
    let e = classify_message("http://h", "m", 503, "busy");
    assert!(e.is_transient());
    let e = classify_message("http://h", "m", 404, "File Not Found");
    assert!(matches!(e, LlmError::Status { status: 404, .. }));
    assert!(!e.is_transient());
    assert_eq!(
        error_message(&json!({"error": {"message": "m"}})),
        Some("m")
    );
    assert_eq!(
        error_message(&json!({"object": "error", "message": "v"})),
        Some("v")
    );
}

#[test]
fn both_protocols_round_trip_tool_calls() {
    let call = ToolCall {
        id: "call_7".into(),
        name: "read_file".into(),
        arguments: json!({"path": "a.py"}),
    };
    let messages = vec![
        Message::text(Role::System, "sys"),
        Message {
            role: Role::Assistant,
            content: String::new(),
            tool_calls: vec![call.clone()],
            answers: None,
        },
        Message::tool_result(&call, "print(1)"),
    ];
    let options = Map::from_iter([("num_ctx".to_string(), json!(8192))]);
    let keep = json!("10m");
    let req = ChatRequest {
        model: "m",
        messages: &messages,
        tools: &[],
        temperature: Some(0.1),
        options: &options,
        keep_alive: Some(&keep),
    };
    let o = ollama_body(&req);
    assert_eq!(
        o["messages"][1]["tool_calls"][0]["function"]["arguments"]["path"],
        "a.py"
    );
    assert_eq!(o["messages"][2]["tool_name"], "read_file");
    assert_eq!(o["options"], json!({"num_ctx": 8192, "temperature": 0.1}));
    assert_eq!(o["keep_alive"], "10m");
    assert_eq!(o["stream"], false);
    assert!(o.get("tools").is_none());
    let a = openai_body(&req);
    assert_eq!(
        a["messages"][1]["tool_calls"][0]["function"]["arguments"],
        "{\"path\":\"a.py\"}"
    );
    assert_eq!(a["messages"][2]["tool_call_id"], "call_7");
    assert_eq!(a["num_ctx"], 8192);
    assert_eq!(a["temperature"], 0.1);

    let r = parse_ollama(&json!({"message": {"role": "assistant", "content": "",
        "tool_calls": [{"function": {"name": "write_file", "arguments": {"path": "x"}}}]},
        "prompt_eval_count": 12, "eval_count": 5}))
    .unwrap();
    assert_eq!(r.message.tool_calls[0].name, "write_file");
    assert_eq!(r.message.tool_calls[0].id, "call_0");
    assert_eq!(
        r.usage,
        Usage {
            prompt_tokens: 12,
            completion_tokens: 5
        }
    );
    let r = parse_openai(&json!({"choices": [{"message": {"role": "assistant", "content": null,
        "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "finish", "arguments": "{\"summary\":\"ok\"}"}}]}}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4}})).unwrap();
    assert_eq!(r.message.tool_calls[0].arguments, json!({"summary": "ok"}));
    assert_eq!(r.message.content, "");
    assert!(parse_openai(&json!({"choices": []})).is_err());
    assert!(parse_ollama(&json!({"model": "m"})).is_err());
}
