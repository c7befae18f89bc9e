//! Agent tasks end to end: `POST /batch/agent-tasks` against a scripted LLM server that
//! speaks the Ollama and OpenAI protocols (the client under test is the real one), with
//! real workspaces (git worktrees, copies), real commands and the real guardrail.

use crate::fake_llm::{call, Chat, FakeLlm, Reply, SilentLlm};
use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::agent::AgentConfig;
use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// An app whose task workspaces live in a scratch directory of the test's own.
async fn agent_app_with(config: AgentConfig) -> (TestApp, TempDir) {
    let scratch = tempfile::tempdir().unwrap();
    let config = AgentConfig {
        scratch_dir: Some(scratch.path().to_path_buf()),
        retry_backoff: Duration::from_millis(50),
        ..config
    };
    let app = spawn_app_with_agent(AppOptions::default(), Vec::new(), config, |b| b).await;
    (app, scratch)
}

async fn agent_app() -> (TestApp, TempDir) {
    agent_app_with(AgentConfig::default()).await
}

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args([
            "-c",
            "user.name=test",
            "-c",
            "user.email=test@localhost",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the app's workspace a git repository with one commit.
fn init_repo(app: &TestApp) {
    app.write_file("README.md", "# project\n");
    git(&app.workspace, &["init", "--quiet"]);
    git(&app.workspace, &["add", "-A"]);
    git(&app.workspace, &["commit", "--quiet", "-m", "initial"]);
}

async fn run_job(app: &TestApp, body: Value) -> (Value, Vec<Value>) {
    let id = app.submit("/batch/agent-tasks", &body).await;
    let job = app.wait_finished(&id, Duration::from_secs(30)).await;
    assert_eq!(job["status"], "completed", "{job}");
    let results = job["result"]["results"].as_array().unwrap().clone();
    (job, results)
}

fn scratch_is_empty(scratch: &TempDir) -> bool {
    std::fs::read_dir(scratch.path())
        .map(|d| d.count() == 0)
        .unwrap_or(true)
}

fn tool_entries<'a>(r: &'a Value, name: &str) -> Vec<&'a Value> {
    r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool" && m["name"] == name)
        .collect()
}

#[actix_web::test]
async fn an_agent_task_writes_a_file_and_passes_validation_on_the_first_loop() {
    let (app, scratch) = agent_app().await;
    init_repo(&app);
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => call(
            "write_file",
            json!({"path": "hello.py", "content": "print('hello')\n"}),
        ),
        _ => call("finish", json!({"summary": "added hello.py"})),
    });
    let (job, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "t1", "description": "Create hello.py that prints hello"}],
            "llm_url": llm.url, "coder_model": "coder:1b", "check_command": "python3 hello.py",
            "temperature": 0.1, "keep_alive": "1m", "options": {"num_ctx": 2048}
        }),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 1, "{job}");
    let r = &results[0];
    assert_eq!(r["task_id"], "t1");
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["validator_ok"], true);
    assert_eq!(r["loops"], 1);
    assert_eq!(r["blocked"], 0);
    assert_eq!(r["workspace_mode"], "worktree");
    assert_eq!(r["files_changed"], json!(["hello.py"]));
    let patch = r["patch"].as_str().unwrap();
    assert!(
        patch.contains("+++ b/hello.py\n@@ -0,0 +1 @@\n+print('hello')\n"),
        "{patch}"
    );
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": 20, "completion_tokens": 10})
    );
    assert!(r["duration_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(
        r["validator"]["output"],
        "exit code 0\n--- stdout ---\nhello"
    );
    assert!(r.get("error").is_none(), "{r}");
    let writes = tool_entries(r, "write_file");
    assert_eq!(writes[0]["content"], "wrote 15 bytes to hello.py");

    // The request was a real Ollama chat: tools, options, keep_alive; the tool result
    // went back into the conversation.
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    let (path, first) = &requests[0];
    assert_eq!(path, "/api/chat");
    assert_eq!(first["model"], "coder:1b");
    assert_eq!(first["stream"], false);
    assert_eq!(first["keep_alive"], "1m");
    assert_eq!(
        first["options"],
        json!({"num_ctx": 2048, "temperature": 0.1})
    );
    let tools: Vec<&str> = first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "list_files",
            "read_file",
            "write_file",
            "run_command",
            "finish"
        ]
    );
    assert_eq!(first["messages"][0]["role"], "system");
    assert!(first["messages"][0]["content"]
        .as_str()
        .unwrap()
        .contains("python3 hello.py"));
    assert_eq!(
        first["messages"][1]["content"],
        "Task t1: Create hello.py that prints hello"
    );
    let second = &requests[1].1["messages"];
    let last = second.as_array().unwrap().last().unwrap();
    assert_eq!(last["role"], "tool");
    assert_eq!(last["tool_name"], "write_file");
    assert_eq!(last["content"], "wrote 15 bytes to hello.py");

    // The work happened in a worktree: the base is untouched, the worktree is gone,
    // and the patch applies to the base.
    assert!(!app.workspace.join("hello.py").exists());
    assert_eq!(
        git(&app.workspace, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1
    );
    assert!(scratch_is_empty(&scratch));
    let patch_file = app.dir.path().join("t1.patch");
    std::fs::write(&patch_file, patch).unwrap();
    git(&app.workspace, &["apply", patch_file.to_str().unwrap()]);
    assert_eq!(
        std::fs::read_to_string(app.workspace.join("hello.py")).unwrap(),
        "print('hello')\n"
    );
}

#[actix_web::test]
async fn a_failed_check_goes_back_to_the_model_and_the_reviewer_fixes_it_over_openai() {
    let (app, scratch) = agent_app().await;
    app.write_file("calc_test.txt", "the check greps calc.py\n");
    let llm = FakeLlm::start(|chat: &Chat| {
        if chat.last()["role"] == "tool" {
            return call("finish", json!({}));
        }
        match chat.model() {
            "coder-m" => call(
                "write_file",
                json!({"path": "calc.py", "content": "def add(a, b):\n    return a - b\n"}),
            ),
            "reviewer-m"
                if chat
                    .last_text()
                    .contains("The check `grep -q 'return a + b' calc.py` failed after loop 1") =>
            {
                call(
                    "write_file",
                    json!({"path": "calc.py", "content": "def add(a, b):\n    return a + b\n"}),
                )
            }
            other => Reply::Text(format!("unexpected model {other} or conversation")),
        }
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "add", "description": "Write add(a, b) in calc.py"}],
            "llm_url": llm.url, "api": "openai",
            "coder_model": "coder-m", "reviewer_model": "reviewer-m",
            "check_command": "grep -q 'return a + b' calc.py"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["loops"], 2);
    assert_eq!(r["validator_ok"], true);
    assert_eq!(
        r["workspace_mode"], "copy",
        "the workspace is not a git repository"
    );
    assert_eq!(r["files_changed"], json!(["calc.py"]));
    let patch = r["patch"].as_str().unwrap();
    assert!(
        patch.contains("+++ b/calc.py\n@@ -0,0 +1,2 @@\n+def add(a, b):\n+    return a + b\n"),
        "{patch}"
    );
    assert!(!patch.contains("a - b"), "{patch}");
    assert_eq!(
        r["usage"],
        json!({"prompt_tokens": 40, "completion_tokens": 20})
    );
    let checks: Vec<&Value> = r["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "validator")
        .collect();
    assert_eq!(checks.len(), 2);
    assert_eq!(
        (checks[0]["passed"].clone(), checks[1]["passed"].clone()),
        (json!(false), json!(true))
    );
    assert_eq!(checks[0]["exit_code"], 1);

    let requests = llm.requests();
    let models: Vec<&str> = requests
        .iter()
        .map(|(_, b)| b["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["coder-m", "coder-m", "reviewer-m", "reviewer-m"]);
    assert!(requests.iter().all(|(p, _)| p == "/v1/chat/completions"));
    // OpenAI shapes: the assistant's call and the tool result tied by its id.
    let second = requests[1].1["messages"].as_array().unwrap();
    let assistant = &second[second.len() - 2];
    let id = assistant["tool_calls"][0]["id"].as_str().unwrap();
    assert_eq!(assistant["tool_calls"][0]["function"]["name"], "write_file");
    assert!(assistant["tool_calls"][0]["function"]["arguments"].is_string());
    assert_eq!(second.last().unwrap()["tool_call_id"], id);
    // The reviewer has its own system prompt.
    let reviewer_system = requests[2].1["messages"][0]["content"].as_str().unwrap();
    assert!(
        reviewer_system.starts_with("You are the Reviewer"),
        "{reviewer_system}"
    );
    assert!(
        !app.workspace.join("calc.py").exists(),
        "the copy was changed, not the root"
    );
    assert!(scratch_is_empty(&scratch));
}

#[actix_web::test]
async fn tool_calls_written_as_json_in_the_text_are_understood() {
    let (app, _scratch) = agent_app().await;
    let llm = FakeLlm::start(|chat: &Chat| {
        // This model takes no native tools, like many small local ones.
        if chat.has_tools() {
            return Reply::Error(
                400,
                json!({"error": "registry.ollama.ai/library/tiny:1b does not support tools"}),
            );
        }
        match chat.replies() {
            0 => Reply::Text(
                "I'll create the file.\n```json\n{\"name\": \"write_file\", \"arguments\": {\"path\": \"notes/todo.md\", \"content\": \"- one\\n\"}}\n```".into(),
            ),
            1 => Reply::Text(r#"{"name": "read_file", "arguments": {"path": "notes/todo.md"}}"#.into()),
            _ => Reply::Text("<tool_call>\n{\"name\": \"finish\", \"arguments\": {\"summary\": \"done\"}}\n</tool_call>".into()),
        }
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "notes", "description": "Start notes/todo.md"}],
            "llm_url": llm.url, "check_command": "test -s notes/todo.md"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["files_changed"], json!(["notes/todo.md"]));
    assert_eq!(tool_entries(r, "read_file")[0]["content"], "- one\n");
    let requests = llm.requests();
    assert!(requests[0].1["tools"].is_array());
    assert!(requests[1..].iter().all(|(_, b)| b.get("tools").is_none()));
    // Results of text calls come back as text, and the prompt explains the JSON form.
    let third = Chat {
        api: "ollama",
        body: requests[3].1.clone(),
    };
    assert!(
        third.last_text().starts_with("Result of read_file:\n- one"),
        "{}",
        third.last_text()
    );
    assert!(third.messages()[0]["content"]
        .as_str()
        .unwrap()
        .contains("answer with only a JSON object"));
}

#[actix_web::test]
async fn shared_mode_works_in_the_root_itself_and_lists_what_it_wrote() {
    let (app, scratch) = agent_app().await;
    init_repo(&app);
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => call(
            "write_file",
            json!({"path": "docs/shared.md", "content": "in the root\n"}),
        ),
        _ => call("finish", json!({})),
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "s", "description": "Write docs/shared.md"}],
            "llm_url": llm.url, "check_command": "test -f docs/shared.md",
            "workspace_mode": "shared"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["workspace_mode"], "shared");
    assert_eq!(r["files_changed"], json!(["docs/shared.md"]));
    assert_eq!(r["patch"], Value::Null);
    assert!(r["patch_note"].as_str().unwrap().contains("shared"), "{r}");
    assert_eq!(
        std::fs::read_to_string(app.workspace.join("docs/shared.md")).unwrap(),
        "in the root\n"
    );
    assert!(scratch_is_empty(&scratch));
}

#[actix_web::test]
async fn destructive_commands_and_escapes_are_blocked_and_counted() {
    let (app, _scratch) = agent_app().await;
    app.write_file("keep.txt", "precious\n");
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => call("run_command", json!({"command": "rm -rf /"})),
        1 => Reply::Calls(vec![
            ("write_file", json!({"path": "/etc/passwd", "content": "x"})),
            ("run_command", json!({"command": "sh -c 'sudo reboot'"})),
            ("read_file", json!({"path": "../../../etc/hostname"})),
        ]),
        _ => call(
            "finish",
            json!({"summary": "gave up on the dangerous parts"}),
        ),
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "danger", "description": "Clean everything"}],
            "llm_url": llm.url, "check_command": "true"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["blocked"], 4);
    let rm = &tool_entries(r, "run_command")[0];
    assert_eq!(rm["blocked"], true);
    assert!(
        rm["content"]
            .as_str()
            .unwrap()
            .contains("BLOCKED by the guardrail: rm -rf is not allowed"),
        "{rm}"
    );
    let write = &tool_entries(r, "write_file")[0];
    assert!(
        write["content"]
            .as_str()
            .unwrap()
            .contains("system path /etc"),
        "{write}"
    );
    assert!(tool_entries(r, "run_command")[1]["content"]
        .as_str()
        .unwrap()
        .contains("sudo"));
    assert!(tool_entries(r, "read_file")[0]["content"]
        .as_str()
        .unwrap()
        .contains("outside the workspace"));
    // The model was told, and nothing happened.
    let second = Chat {
        api: "ollama",
        body: llm.requests()[1].1.clone(),
    };
    assert!(second.last_text().contains("rm -rf is not allowed"));
    assert_eq!(r["files_changed"], json!([]));
    assert_eq!(r["patch"], "");
    assert_eq!(
        std::fs::read_to_string(app.workspace.join("keep.txt")).unwrap(),
        "precious\n"
    );
}

#[actix_web::test]
async fn read_only_tasks_may_read_but_not_write_or_run() {
    let (app, _scratch) = agent_app().await;
    init_repo(&app);
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => call("read_file", json!({"path": "README.md"})),
        1 => call("write_file", json!({"path": "x.txt", "content": "x"})),
        2 => call("run_command", json!({"command": "touch y.txt"})),
        _ => call("finish", json!({"summary": "the README is a title only"})),
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "ro", "description": "Review the README"}],
            "llm_url": llm.url, "check_command": "true", "apply_changes": false
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["blocked"], 2);
    assert_eq!(tool_entries(r, "read_file")[0]["content"], "# project\n");
    assert!(tool_entries(r, "write_file")[0]["content"]
        .as_str()
        .unwrap()
        .contains("read-only"));
    assert_eq!(r["files_changed"], json!([]));
    assert_eq!(r["patch"], "");
    let system = llm.requests()[0].1["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(system.contains("This task is read-only"), "{system}");
}

#[actix_web::test]
async fn a_model_that_never_produces_valid_tool_calls_ends_at_max_loops() {
    let (app, _scratch) = agent_app().await;
    let llm = FakeLlm::start(|_: &Chat| {
        Reply::Text(
            r#"{"name": "write_file", "arguments": {"path": "done.txt", "content": "#.into(),
        )
    });
    let (job, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "broken", "description": "Create done.txt"}],
            "llm_url": llm.url, "check_command": "test -f done.txt", "max_loops": 2,
            "coder_model": "c", "reviewer_model": "r"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(job["result"]["summary"]["failed"], 1);
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["loops"], 2);
    assert_eq!(r["validator_ok"], false);
    assert_eq!(
        r["error"],
        "the check `test -f done.txt` still failed after max_loops (2) loops (exit code 1)"
    );
    // Three unreadable replies end a turn; each was answered with the reason.
    let requests = llm.requests();
    assert_eq!(requests.len(), 6);
    let models: Vec<&str> = requests
        .iter()
        .map(|(_, b)| b["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["c", "c", "c", "r", "r", "r"]);
    let second = Chat {
        api: "ollama",
        body: requests[1].1.clone(),
    };
    assert!(
        second
            .last_text()
            .contains("could not be read: the tool call is not valid JSON"),
        "{}",
        second.last_text()
    );
    let items = app.all_items(job["job_id"].as_str().unwrap(), 10).await;
    assert_eq!(items[0]["status"], "failed");
    assert_eq!(items[0]["error"], r["error"]);
}

#[actix_web::test]
async fn cancelling_a_job_aborts_the_llm_request_in_flight() {
    let (app, scratch) = agent_app().await;
    init_repo(&app);
    let llm = SilentLlm::start();
    let id = app
        .submit(
            "/batch/agent-tasks",
            &json!({"tasks": [{"id": "slow", "description": "think hard"}],
                    "llm_url": llm.url, "check_command": "true"}),
        )
        .await;
    wait_for(Duration::from_secs(10), "the request to arrive", || async {
        (llm.received() == 1).then_some(())
    })
    .await;
    let (status, _) = app.delete(&format!("/batch/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let cancelled_at = Instant::now();
    let job = app.wait_finished(&id, Duration::from_secs(5)).await;
    assert!(
        cancelled_at.elapsed() < Duration::from_secs(3),
        "took {:?}",
        cancelled_at.elapsed()
    );
    assert_eq!(job["status"], "cancelled");
    let r = &job["result"]["results"][0];
    assert_eq!(r["status"], "cancelled", "{r}");
    // The server saw its client go: the request was aborted, not left running.
    wait_for(
        Duration::from_secs(2),
        "the request to be aborted",
        || async { (llm.closed() == 1).then_some(()) },
    )
    .await;
    wait_for(Duration::from_secs(5), "the worktree to go", || async {
        scratch_is_empty(&scratch).then_some(())
    })
    .await;
}

#[actix_web::test]
async fn cancelling_a_job_kills_the_command_the_agent_runs() {
    let (app, _scratch) = agent_app().await;
    let marker = "3600.9321";
    let llm = FakeLlm::start(move |chat: &Chat| match chat.replies() {
        0 => call("run_command", json!({"command": format!("sleep {marker}")})),
        _ => call("finish", json!({})),
    });
    let id = app
        .submit(
            "/batch/agent-tasks",
            &json!({"tasks": [{"id": "sleepy", "description": "wait"}],
                    "llm_url": llm.url, "check_command": "true"}),
        )
        .await;
    wait_for(Duration::from_secs(10), "the command to start", || async {
        (!processes_with(marker).is_empty()).then_some(())
    })
    .await;
    app.delete(&format!("/batch/jobs/{id}")).await;
    wait_for(
        Duration::from_secs(3),
        "the command to be killed",
        || async { processes_with(marker).is_empty().then_some(()) },
    )
    .await;
    let job = app.wait_finished(&id, Duration::from_secs(5)).await;
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"]["results"][0]["status"], "cancelled");
}

#[actix_web::test]
async fn bad_agent_task_input_is_refused_with_the_field_named() {
    let (app, _scratch) = agent_app().await;
    let task = json!([{"id": "t", "description": "d"}]);
    let cases = [
        (json!({}), "tasks"),
        (json!({"tasks": []}), "tasks"),
        (json!({"tasks": [{"id": "t"}]}), "tasks[0].description"),
        (
            json!({"tasks": [{"id": "t", "description": "  "}]}),
            "tasks[0].description",
        ),
        (json!({"tasks": task, "max_loops": 0}), "max_loops"),
        (json!({"tasks": task, "max_loops": 1000000}), "max_loops"),
        (json!({"tasks": task, "max_steps": 0}), "max_steps"),
        (json!({"tasks": task, "coder_model": ""}), "coder_model"),
        (
            json!({"tasks": task, "check_command": "no-such-checker-xyz -q"}),
            "check_command",
        ),
        (
            json!({"tasks": task, "workspace_mode": "docker"}),
            "workspace_mode",
        ),
        (
            json!({"tasks": task, "workspace_mode": "worktree"}),
            "workspace_mode",
        ),
        (json!({"tasks": task, "api": "grpc"}), "api"),
        (json!({"tasks": task, "llm_url": "ftp://x"}), "llm_url"),
        (json!({"tasks": task, "temperature": "hot"}), "temperature"),
        (
            json!({"tasks": task, "apply_changes": "maybe"}),
            "apply_changes",
        ),
        (json!({"tasks": task, "options": "fast"}), "options"),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/batch/agent-tasks", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {answer}"
        );
        assert_eq!(answer["field"], field, "{body} → {answer}");
        assert!(
            answer["detail"].as_str().is_some_and(|d| !d.is_empty()),
            "{answer}"
        );
    }
    let (status, answer) = app.post_raw("/batch/agent-tasks", b"{\"tasks\": [").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert_eq!(
        app.get("/batch/stats").await.1["stats"]["total"],
        0,
        "nothing was stored"
    );
}

#[actix_web::test]
async fn an_unknown_model_fails_its_task_with_the_servers_404() {
    let (app, _scratch) = agent_app().await;
    let llm = FakeLlm::start(|chat: &Chat| {
        if chat.api == "ollama" {
            Reply::Error(
                404,
                json!({"error": format!("model \"{}\" not found, try pulling it first", chat.model())}),
            )
        } else {
            Reply::Error(
                404,
                json!({"object": "error", "message": format!("The model `{}` does not exist.", chat.model()), "type": "NotFoundError", "code": 404}),
            )
        }
    });
    for (api, expected) in [
        (
            "ollama",
            "model \"nope:7b\" not found, try pulling it first",
        ),
        ("openai", "The model `nope:7b` does not exist."),
    ] {
        let (job, results) = run_job(
            &app,
            json!({"tasks": [{"id": "t", "description": "d"}], "llm_url": llm.url, "api": api,
                   "coder_model": "nope:7b", "check_command": "true"}),
        )
        .await;
        let r = &results[0];
        assert_eq!(job["result"]["summary"]["failed"], 1);
        assert_eq!(r["status"], "failed");
        assert_eq!(
            r["error"],
            format!(
                "model 'nope:7b' is not available at {}: {expected}",
                llm.url
            )
        );
        assert_eq!(r["loops"], 1);
        assert_eq!(r["patch"], "", "no change was made");
    }
    assert_eq!(llm.requests().len(), 2, "a 404 is not retried");
}

#[actix_web::test]
async fn an_llm_that_is_not_running_fails_each_task_and_the_batch_completes() {
    let (app, _scratch) = agent_app().await;
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}");
    let tasks: Vec<Value> = (0..3)
        .map(|i| json!({"id": format!("t{i}"), "description": "d"}))
        .collect();
    let (job, results) = run_job(
        &app,
        json!({"tasks": tasks, "llm_url": url, "check_command": "true", "llm_retries": 1}),
    )
    .await;
    assert_eq!(job["result"]["summary"]["failed"], 3);
    for r in &results {
        assert_eq!(r["status"], "failed");
        let error = r["error"].as_str().unwrap();
        assert!(
            error.starts_with(&format!("cannot reach LLM at {url}: ")),
            "{error}"
        );
    }
}

#[actix_web::test]
async fn an_answer_that_is_not_json_fails_the_task_clearly() {
    let (app, _scratch) = agent_app().await;
    let llm =
        FakeLlm::start(|_: &Chat| Reply::Raw(200, "text/html", "<html>proxy login</html>".into()));
    let (_, results) = run_job(
        &app,
        json!({"tasks": [{"id": "t", "description": "d"}], "llm_url": llm.url, "check_command": "true"}),
    )
    .await;
    let error = results[0]["error"].as_str().unwrap();
    assert!(
        error.starts_with(&format!("LLM at {} sent an answer that is not a valid ollama chat response: the body is not JSON", llm.url)),
        "{error}"
    );
    assert!(error.ends_with("<html>proxy login</html>"), "{error}");
}

#[actix_web::test]
async fn server_errors_are_retried_and_each_endpoint_gets_a_bounded_number_of_requests() {
    let (app, _scratch) = agent_app_with(AgentConfig {
        max_concurrent_requests_per_endpoint: 2,
        ..Default::default()
    })
    .await;
    let failed_once = std::sync::Mutex::new(std::collections::HashSet::new());
    let llm = FakeLlm::start(move |chat: &Chat| {
        if failed_once.lock().unwrap().insert(chat.task_id()) {
            return Reply::Error(503, json!({"error": "server busy"}));
        }
        let reply = match chat.replies() {
            0 => call(
                "write_file",
                json!({"path": "out.txt", "content": chat.task_id()}),
            ),
            _ => call("finish", json!({})),
        };
        Reply::Delay(Duration::from_millis(100), Box::new(reply))
    });
    let tasks: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("t{i}"), "description": "d"}))
        .collect();
    let (_, results) = run_job(
        &app,
        json!({"tasks": tasks, "llm_url": llm.url, "check_command": "test -s out.txt", "parallel": 6}),
    )
    .await;
    assert!(
        results.iter().all(|r| r["status"] == "completed"),
        "{results:?}"
    );
    assert_eq!(
        llm.requests().len(),
        6 * 3,
        "one 503 and two answers per task"
    );
    assert_eq!(
        llm.max_in_flight(),
        2,
        "never more than the endpoint's limit"
    );
}

#[actix_web::test]
async fn live_progress_says_which_task_and_which_loop() {
    let (app, _scratch) = agent_app().await;
    let llm = FakeLlm::start(|chat: &Chat| {
        let reply = if chat.last()["role"] == "tool" {
            call("finish", json!({}))
        } else {
            call(
                "write_file",
                json!({"path": "a.txt", "content": format!("{}", chat.replies())}),
            )
        };
        Reply::Delay(Duration::from_millis(300), Box::new(reply))
    });
    let id = app
        .submit(
            "/batch/agent-tasks",
            &json!({"tasks": [{"id": "p1", "description": "d"}], "llm_url": llm.url,
                    "check_command": "grep -q 2 a.txt", "max_loops": 2}),
        )
        .await;
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    wait_for(Duration::from_secs(20), "the job to end", || async {
        let job = app.job(&id).await;
        if let Some(note) = job["metadata"]["progress"]["current_item"].as_str() {
            seen.borrow_mut().insert(note.to_string());
        }
        (!job["result"].is_null()).then_some(())
    })
    .await;
    let seen = seen.into_inner();
    assert!(seen.contains("p1: loop 1 (coder)"), "{seen:?}");
    assert!(seen.contains("p1: loop 2 (reviewer)"), "{seen:?}");
}

#[actix_web::test]
async fn fifty_parallel_tasks_in_worktrees_of_one_repository_each_return_only_their_own_patch() {
    let (app, scratch) = agent_app_with(AgentConfig {
        max_concurrent_requests_per_endpoint: 16,
        ..Default::default()
    })
    .await;
    app.write_file("shared.txt", "base\n");
    init_repo(&app);
    let llm = FakeLlm::start(|chat: &Chat| {
        let id = chat.task_id();
        match chat.replies() {
            0 => Reply::Calls(vec![
                (
                    "write_file",
                    json!({"path": format!("tasks/{id}.txt"), "content": format!("work of {id}\n")}),
                ),
                (
                    "write_file",
                    json!({"path": "shared.txt", "content": format!("base\n{id}\n")}),
                ),
            ]),
            _ => call("finish", json!({"summary": id})),
        }
    });
    let tasks: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("task{i:02}"), "description": format!("Do task {i}")}))
        .collect();
    let started = Instant::now();
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": tasks, "llm_url": llm.url, "parallel": 50,
            // Passes only when the task's workspace holds its own file and no other.
            "check_command": "sh -c 'test \"$(ls tasks | wc -l)\" -eq 1 && test \"$(grep -c task shared.txt)\" -eq 1'"
        }),
    )
    .await;
    assert_eq!(results.len(), 50);
    for (i, r) in results.iter().enumerate() {
        let id = format!("task{i:02}");
        assert_eq!(r["task_id"], id);
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["workspace_mode"], "worktree");
        assert_eq!(
            r["files_changed"],
            json!(["shared.txt", format!("tasks/{id}.txt")])
        );
        let patch = r["patch"].as_str().unwrap();
        assert!(
            patch.contains(&format!(
                "+++ b/tasks/{id}.txt\n@@ -0,0 +1 @@\n+work of {id}\n"
            )),
            "{patch}"
        );
        assert!(patch.contains(&format!(" base\n+{id}\n")), "{patch}");
        // Nothing of any other task.
        assert_eq!(patch.matches("diff --git").count(), 2, "{patch}");
        for j in (0..50).filter(|j| *j != i) {
            assert!(
                !patch.contains(&format!("task{j:02}")),
                "{id} has task{j:02}: {patch}"
            );
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        git(&app.workspace, &["worktree", "list", "--porcelain"])
            .matches("worktree ")
            .count(),
        1
    );
    assert!(scratch_is_empty(&scratch));
    assert_eq!(
        git(&app.workspace, &["status", "--porcelain"]),
        "",
        "the base is untouched"
    );
}

fn base64_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let mut out = Vec::new();
    for chunk in s.as_bytes().chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk.iter().fold(0u32, |n, c| (n << 6) | value(*c));
        out.extend_from_slice(&[(n >> 16) as u8, (n >> 8) as u8, n as u8][..3 - pad]);
    }
    out
}

#[actix_web::test]
async fn generated_files_stay_out_of_the_patch_and_non_utf8_changes_survive() {
    let (app, scratch) = agent_app().await;
    app.write_file("helper.py", "VALUE = 1\n");
    app.write_file(
        "mk.py",
        r#"import os, helper
os.makedirs("__pycache__", exist_ok=True)
open("__pycache__/x.pyc", "wb").write(b"\x00pyc")
open("latin1.txt", "wb").write(b"caf\xe9\n")
names = ["PYTHONDONTWRITEBYTECODE", "GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM"]
open("env.txt", "w").write("".join(n + "=" + os.environ.get(n, "") + "\n" for n in names))
print("y" * 200000)
"#,
    );
    init_repo(&app);
    let llm = FakeLlm::start(|_: &Chat| call("finish", json!({})));
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "gen", "description": "Run the generator"}],
            "llm_url": llm.url, "check_command": "python3 mk.py"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["workspace_mode"], "worktree");
    // No __pycache__ (neither the check's own nor the import's): excluded, and bytecode
    // is not written at all.
    assert_eq!(r["files_changed"], json!(["env.txt", "latin1.txt"]), "{r}");
    assert_eq!(r["patch_encoding"], "base64", "{r}");
    assert!(r["patch_note"].as_str().unwrap().contains("base64"));
    let patch = base64_decode(r["patch"].as_str().unwrap());
    let text = String::from_utf8_lossy(&patch);
    assert!(
        !text.contains("pycache") && !text.contains(".pyc"),
        "{text}"
    );
    assert!(
        text.contains(
            "+PYTHONDONTWRITEBYTECODE=1\n+GIT_CONFIG_GLOBAL=/dev/null\n+GIT_CONFIG_NOSYSTEM=1\n"
        ),
        "{text}"
    );
    assert!(patch.windows(6).any(|w| w == b"+caf\xe9\n"), "{text}");
    let patch_file = app.dir.path().join("gen.patch");
    std::fs::write(&patch_file, &patch).unwrap();
    git(&app.workspace, &["apply", patch_file.to_str().unwrap()]);
    assert_eq!(
        std::fs::read(app.workspace.join("latin1.txt")).unwrap(),
        b"caf\xe9\n"
    );
    // The check's output is kept to 64 KiB in the result.
    let v = &r["validator"];
    assert_eq!(v["output_truncated"], true, "{v}");
    assert!(v["output"].as_str().unwrap().chars().count() <= 64 * 1024 + 100);
    assert!(scratch_is_empty(&scratch));
}

#[actix_web::test]
async fn a_worktree_task_cannot_touch_the_users_branches_tags_or_git_files() {
    let (app, scratch) = agent_app().await;
    init_repo(&app);
    let branches_before = git(&app.workspace, &["branch", "--list"]);
    let head_before = git(&app.workspace, &["rev-parse", "HEAD"]);
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => Reply::Calls(vec![
            ("run_command", json!({"command": "git branch evil"})),
            (
                "run_command",
                json!({"command": "git -c 'alias.x=!touch pwned' x"}),
            ),
            (
                "write_file",
                json!({"path": "a.sh", "content": "echo hi\ngit tag evil\n"}),
            ),
            ("run_command", json!({"command": "sh a.sh"})),
            ("run_command", json!({"command": "ln -s .git g"})),
            (
                "write_file",
                json!({"path": ".git/hooks/pre-commit", "content": "x"}),
            ),
            ("run_command", json!({"command": "env -S 'git stash'"})),
            ("run_command", json!({"command": "git add a.sh"})),
            ("run_command", json!({"command": "git commit -q -m wip"})),
            ("run_command", json!({"command": "git log --format=%an -1"})),
        ]),
        _ => call("finish", json!({})),
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "git", "description": "Try git"}],
            "llm_url": llm.url, "check_command": "true"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    assert_eq!(r["blocked"], 6, "{r}");
    let runs = tool_entries(r, "run_command");
    assert!(runs[0]["content"]
        .as_str()
        .unwrap()
        .contains("git branch is not allowed"));
    assert!(runs[2]["content"]
        .as_str()
        .unwrap()
        .contains("the script 'a.sh' is refused"));
    // The agent's own commit works (the identity comes from the engine, hooks are off)
    // and its work is in the patch; the user's repository did not change.
    assert!(
        runs[6]["content"]
            .as_str()
            .unwrap()
            .starts_with("exit code 0"),
        "{r}"
    );
    assert!(
        runs[7]["content"]
            .as_str()
            .unwrap()
            .contains("batchforge-agent"),
        "{r}"
    );
    assert_eq!(r["files_changed"], json!(["a.sh"]));
    assert_eq!(git(&app.workspace, &["branch", "--list"]), branches_before);
    assert_eq!(git(&app.workspace, &["tag", "--list"]), "");
    assert_eq!(git(&app.workspace, &["stash", "list"]), "");
    assert_eq!(git(&app.workspace, &["rev-parse", "HEAD"]), head_before);
    assert!(!app.workspace.join(".git/hooks/pre-commit").exists());
    assert!(!app.workspace.join("pwned").exists());
    assert!(scratch_is_empty(&scratch));
}

#[actix_web::test]
async fn a_reply_runs_at_most_sixteen_calls_and_the_conversation_stays_bounded() {
    let (app, _scratch) = agent_app().await;
    app.write_file("big.txt", &("x".repeat(99) + "\n").repeat(1000));
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => Reply::Calls(
            (0..20)
                .map(|_| ("read_file", json!({"path": "big.txt"})))
                .collect(),
        ),
        1..=12 => call("read_file", json!({"path": "big.txt"})),
        _ => call("finish", json!({})),
    });
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "big", "description": "Read a lot"}],
            "llm_url": llm.url, "check_command": "true", "max_steps": 20
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "completed", "{r}");
    let requests = llm.requests();
    assert_eq!(requests.len(), 14);
    // Every call of the first reply is answered; the 17th on were not run.
    let second = &requests[1].1["messages"];
    let answers: Vec<&str> = second
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(answers.len(), 20);
    assert_eq!(
        answers
            .iter()
            .filter(|a| a.contains("too many calls in one reply"))
            .count(),
        4
    );
    // No request carries more than the budget (plus the system prompt's few KB).
    for (_, body) in &requests {
        let chars: usize = body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["content"].as_str().map_or(0, str::len))
            .sum();
        assert!(chars < 205_000, "{chars}");
    }
    // Older results were shortened to make room.
    let last = &requests.last().unwrap().1["messages"];
    assert!(
        last.as_array().unwrap().iter().any(|m| m["role"] == "tool"
            && m["content"].as_str().unwrap().len() < 2_100
            && m["content"].as_str().unwrap().contains("characters cut")),
        "compacted"
    );
    assert_eq!(
        requests.last().unwrap().1["messages"][1]["content"],
        "Task big: Read a lot"
    );
    // The stored transcript is bounded too.
    assert!(r["messages"].to_string().len() < 450_000);
}

#[actix_web::test]
async fn an_llm_answer_over_the_size_limit_fails_the_task_clearly() {
    let (app, _scratch) = agent_app().await;
    let huge = format!(
        "{{\"message\": {{\"role\": \"assistant\", \"content\": \"{}\"}}}}",
        "z".repeat(9 << 20)
    );
    let llm = FakeLlm::start(move |_: &Chat| Reply::Raw(200, "application/json", huge.clone()));
    let (_, results) = run_job(
        &app,
        json!({
            "tasks": [{"id": "huge", "description": "Say a lot"}],
            "llm_url": llm.url, "check_command": "true"
        }),
    )
    .await;
    let r = &results[0];
    assert_eq!(r["status"], "failed", "{r}");
    assert!(
        r["error"]
            .as_str()
            .unwrap()
            .contains("larger than the 8388608-byte limit"),
        "{r}"
    );
}

/// Opt-in: a real task against a real Ollama or OpenAI-compatible server.
/// `BATCHFORGE_TEST_LLM_URL=http://127.0.0.1:11434 [BATCHFORGE_TEST_LLM_API=openai]
/// [BATCHFORGE_TEST_LLM_MODEL=qwen2.5-coder:7b] cargo nextest run -E 'test(real_llm)'`
#[actix_web::test]
async fn a_real_llm_completes_a_small_task_when_one_is_configured() {
    let Ok(url) = std::env::var("BATCHFORGE_TEST_LLM_URL") else {
        println!("skipped: set BATCHFORGE_TEST_LLM_URL (and optionally BATCHFORGE_TEST_LLM_API, BATCHFORGE_TEST_LLM_MODEL) to run against a real LLM server");
        return;
    };
    let api = std::env::var("BATCHFORGE_TEST_LLM_API").unwrap_or_else(|_| "ollama".into());
    let model =
        std::env::var("BATCHFORGE_TEST_LLM_MODEL").unwrap_or_else(|_| "qwen2.5-coder:7b".into());
    let (app, scratch) = agent_app().await;
    app.write_file("greet.py", "def greet(name):\n    pass\n");
    init_repo(&app);
    let id = app
        .submit(
            "/batch/agent-tasks",
            &json!({
                "tasks": [{"id": "greet", "description": "In greet.py, make greet(name) return the string 'Hello, ' followed by name, e.g. greet('Ann') == 'Hello, Ann'. Only change greet.py."}],
                "llm_url": url, "api": api, "coder_model": model, "reviewer_model": model,
                "check_command": "python3 -c \"import greet; assert greet.greet('Ann') == 'Hello, Ann'\"",
                "max_loops": 4, "temperature": 0
            }),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(900)).await;
    let r = &job["result"]["results"][0];
    println!("{}", serde_json::to_string_pretty(r).unwrap());
    assert_eq!(r["status"], "completed", "{r}");
    assert!(
        r["files_changed"]
            .as_array()
            .unwrap()
            .contains(&json!("greet.py")),
        "{r}"
    );
    assert!(r["usage"]["completion_tokens"].as_u64().unwrap() > 0);
    assert!(scratch_is_empty(&scratch));
}

/// `max_total_tokens` holds for agent tasks too: each task here spends two model calls of
/// 15 tokens, so a budget of 50 is spent by the second task and the rest never start.
#[actix_web::test]
async fn a_token_budget_stops_agent_tasks_once_spent() {
    let (app, _scratch) = agent_app().await;
    init_repo(&app);
    let llm = FakeLlm::start(|chat: &Chat| match chat.replies() {
        0 => call("write_file", json!({"path": "out.txt", "content": "x\n"})),
        _ => call("finish", json!({"summary": "wrote out.txt"})),
    });
    let tasks: Vec<Value> = (0..5)
        .map(|i| json!({"id": format!("t{i}"), "description": "Write out.txt"}))
        .collect();
    let id = app
        .submit(
            "/batch/agent-tasks",
            &json!({"tasks": tasks, "llm_url": llm.url, "check_command": "test -s out.txt",
                    "parallel": 1, "max_total_tokens": 50}),
        )
        .await;
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "cancelled", "{job}");
    let error = job["error"].as_str().unwrap_or_default();
    assert!(error.contains("max_total_tokens 50"), "{job}");
    let p = &job["metadata"]["progress"];
    assert_eq!(p["successful"], 2, "{job}");
    assert_eq!(p["cancelled"], 3, "{job}");
    assert_eq!(p["prompt_tokens"], 40, "{job}");
    assert_eq!(p["completion_tokens"], 20, "{job}");
    // Two tasks of two calls each reached the model; the cancelled ones never did.
    assert_eq!(llm.requests().len(), 4);
}
