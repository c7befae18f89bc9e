//! MCP operations over real MCP: batchforge's own `mcp-server` child processes and the
//! official reference filesystem server from npm, through `POST /batch/mcp-operations`.

use crate::helpers::*;
use awc::http::StatusCode;
use batchforge::mcp::{McpServerConfig, McpTransport};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn stdio_server(name: &str, command: &str, args: &[&str], cwd: &Path) -> McpServerConfig {
    McpServerConfig {
        name: name.into(),
        transport: McpTransport::Stdio {
            command: command.into(),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: BTreeMap::new(),
            cwd: Some(cwd.to_path_buf()),
        },
    }
}

async fn app_with(servers: Vec<McpServerConfig>) -> TestApp {
    spawn_app_with_mcp(AppOptions::default(), servers, |b| b).await
}

async fn run(app: &TestApp, body: Value, limit: Duration) -> (Value, Vec<Value>) {
    let id = app.submit("/batch/mcp-operations", &body).await;
    let job = app.wait_finished(&id, limit).await;
    assert_eq!(job["status"], "completed", "{job}");
    let results = job["result"]["results"].as_array().unwrap().clone();
    (job, results)
}

fn error_of(r: &Value) -> &str {
    assert_eq!(r["status"], "failed", "{r}");
    r["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {r}"))
}

/// The engine's own children running `mcp-server --root <workspace>` (not their guardians).
fn builtin_servers(workspace: &Path) -> Vec<u32> {
    let marker = format!("mcp-server\0--root\0{}\0", workspace.display());
    processes_with(&marker)
        .into_iter()
        .filter(|pid| parent_of(*pid) == Some(std::process::id()))
        .collect()
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(") ").next()?.split(' ').nth(1)?.parse().ok()
}

/// The official reference filesystem server, installed by `.ci/run`.
fn official_filesystem_server() -> Option<PathBuf> {
    installed_node_server("server-filesystem")
}

/// `tests/node/node_modules/@modelcontextprotocol/<package>/dist/index.js`, installed by
/// `.ci/run` (`npm ci --prefix tests/node`): skipped with a note when missing, unless CI.
fn installed_node_server(package: &str) -> Option<PathBuf> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!(
        "tests/node/node_modules/@modelcontextprotocol/{package}/dist/index.js"
    ));
    let node = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join("node").is_file()))
        .unwrap_or(false);
    if path.is_file() && node {
        return Some(path);
    }
    let ci = std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0");
    assert!(
        !ci,
        "CI is set but {} (or node) is missing: .ci/run installs it with `npm ci --prefix tests/node`",
        path.display()
    );
    eprintln!(
        "SKIPPED: {} is not installed (or node is not on PATH); run `npm ci --prefix tests/node`",
        path.display()
    );
    None
}

#[actix_web::test]
async fn mcp_operations_run_through_batchforges_own_server() {
    let read_only_root = tempfile::tempdir().unwrap();
    let binary = env!("CARGO_BIN_EXE_batchforge");
    let ro_root = read_only_root.path().to_str().unwrap();
    let app = app_with(vec![stdio_server(
        "ro",
        binary,
        &["mcp-server", "--root", ro_root, "--read-only"],
        read_only_root.path(),
    )])
    .await;
    app.write_file("src/a.txt", "alpha\n");
    app.write_file("src/b.txt", "beta\n");
    std::os::unix::fs::symlink("/etc", app.workspace.join("escape")).unwrap();
    let outside = app.dir.path().join("secret.txt");
    std::fs::write(&outside, "secret").unwrap();
    let (job, r) = run(
        &app,
        json!({"operations": [
            {"id": "read", "type": "read", "path": "src/a.txt"},
            {"id": "write", "type": "write", "path": "out/new.txt", "content": "written by mcp"},
            {"id": "list", "type": "list", "path": "src"},
            {"id": "command", "type": "command", "command": "cat 'src/b.txt'"},
            {"id": "root", "type": "call", "tool": "sandbox_root"},
            {"id": "dotdot", "type": "read", "path": "../../etc/passwd"},
            {"id": "absolute", "type": "read", "path": outside.to_str().unwrap()},
            {"id": "symlink", "type": "read", "path": "escape/passwd"},
            {"id": "write-out", "type": "write", "path": "../escaped.txt", "content": "x"},
            {"id": "missing", "type": "read", "path": "nope.txt"},
            {"id": "no-tool", "type": "call", "tool": "format_disk", "arguments": {}},
            {"id": "exit", "type": "command", "command": "sh -c 'echo oops >&2; exit 3'"},
            {"id": "no-program", "type": "command", "command": "no-such-program-bf --x"},
            {"id": "shell-free", "type": "command", "command": "echo $HOME ';' `id`"}
        ], "parallel": 4}),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 6, "{job}");
    assert_eq!(job["result"]["summary"]["failed"], 8, "{job}");

    assert_eq!(r[0]["operation"], "read");
    assert_eq!(r[0]["status"], "success", "{}", r[0]);
    assert_eq!(r[0]["result"], "alpha\n");
    assert_eq!(r[0]["tool"], "read_file");
    assert_eq!(r[0]["server"], "batchforge");

    assert_eq!(r[1]["status"], "success", "{}", r[1]);
    assert_eq!(
        std::fs::read_to_string(app.workspace.join("out/new.txt")).unwrap(),
        "written by mcp"
    );
    assert_eq!(r[1]["structured_content"]["bytes"], 14);

    assert_eq!(r[2]["result"], "a.txt\nb.txt\n", "{}", r[2]);
    assert_eq!(r[2]["structured_content"]["entries"][0]["type"], "file");
    assert_eq!(r[2]["structured_content"]["entries"][1]["size"], 5);

    assert_eq!(r[3]["status"], "success", "{}", r[3]);
    assert_eq!(r[3]["result"], "beta\n");
    assert_eq!(r[3]["structured_content"]["exit_code"], 0);

    assert_eq!(r[4]["result"], app.workspace.to_str().unwrap());

    for escape in &r[5..9] {
        assert!(
            error_of(escape).contains("outside the workspace root"),
            "{escape}"
        );
        assert!(escape.get("result").is_none(), "{escape}");
    }
    assert!(!app.dir.path().join("escaped.txt").exists());
    assert!(error_of(&r[9]).contains("nope.txt"), "{}", r[9]);
    assert!(
        error_of(&r[10]).contains("has no tool 'format_disk'")
            && error_of(&r[10]).contains("read_file"),
        "{}",
        r[10]
    );
    assert_eq!(error_of(&r[11]), "exit code 3: oops", "{}", r[11]);
    assert_eq!(r[11]["structured_content"]["exit_code"], 3);
    assert!(
        error_of(&r[12]).contains("'no-such-program-bf' was not found"),
        "{}",
        r[12]
    );
    // No shell: `$HOME`, `;` and backquotes reach echo as they are.
    assert_eq!(r[13]["result"], "$HOME ; `id`\n", "{}", r[13]);

    // A read-only server does not offer write_file: the item says so.
    let (_, r) = run(
        &app,
        json!({"server": "ro", "operations": [
            {"type": "write", "path": "x.txt", "content": "no"},
            {"type": "list", "path": "."},
            {"type": "command", "command": "true"}
        ]}),
        Duration::from_secs(30),
    )
    .await;
    let e = error_of(&r[0]);
    assert!(
        e.contains("MCP server 'ro' cannot do 'write' operations") && e.contains("list_files"),
        "{e}"
    );
    assert_eq!(r[1]["status"], "success", "{}", r[1]);
    assert!(error_of(&r[2]).contains("cannot do 'command' operations"));
    assert!(!read_only_root.path().join("x.txt").exists());
}

#[actix_web::test]
async fn mcp_operations_interoperate_with_the_official_filesystem_server() {
    let Some(index_js) = official_filesystem_server() else {
        return;
    };
    let fs_root = tempfile::tempdir().unwrap();
    let root = fs_root.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("docs")).unwrap();
    std::fs::write(root.join("docs/readme.md"), "# hello\n").unwrap();
    let app = app_with(vec![stdio_server(
        "fs",
        "node",
        &[index_js.to_str().unwrap(), root.to_str().unwrap()],
        &root,
    )])
    .await;
    let mut operations = vec![
        json!({"id": "read", "type": "read", "path": root.join("docs/readme.md")}),
        json!({"id": "list", "type": "list", "path": root.join("docs")}),
        json!({"id": "info", "type": "call", "tool": "get_file_info", "arguments": {"path": root.join("docs/readme.md")}}),
        json!({"id": "outside", "type": "read", "path": "/etc/passwd"}),
        json!({"id": "command", "type": "command", "command": "ls"}),
    ];
    for i in 0..20 {
        operations.push(json!({"id": format!("w{i}"), "type": "write", "path": root.join(format!("out-{i}.txt")), "content": format!("file {i}\n")}));
    }
    let (job, r) = run(
        &app,
        json!({"server": "fs", "operations": operations, "parallel": 3}),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 23, "{job}");
    assert_eq!(r[0]["status"], "success", "{}", r[0]);
    assert_eq!(r[0]["tool"], "read_text_file");
    assert_eq!(r[0]["result"], "# hello\n");
    assert_eq!(r[1]["tool"], "list_directory");
    assert_eq!(r[1]["result"], "[FILE] readme.md", "{}", r[1]);
    assert!(
        r[2]["result"].as_str().unwrap().contains("size: 8"),
        "{}",
        r[2]
    );
    assert!(error_of(&r[3]).contains("Access denied"), "{}", r[3]);
    let e = error_of(&r[4]);
    assert!(
        e.contains("MCP server 'fs' cannot do 'command' operations")
            && e.contains("run_command")
            && e.contains("read_text_file"),
        "{e}"
    );
    for i in 0..20 {
        assert_eq!(r[5 + i]["status"], "success", "{}", r[5 + i]);
        assert_eq!(
            std::fs::read_to_string(root.join(format!("out-{i}.txt"))).unwrap(),
            format!("file {i}\n")
        );
    }
    // The writes show up in a later listing, through the same pooled sessions.
    let (_, r) = run(
        &app,
        json!({"server": "fs", "operations": [{"type": "list", "path": root}]}),
        Duration::from_secs(30),
    )
    .await;
    assert!(
        r[0]["result"]
            .as_str()
            .unwrap()
            .contains("[FILE] out-19.txt"),
        "{}",
        r[0]
    );
}

#[actix_web::test]
async fn bad_mcp_requests_are_refused_naming_the_field() {
    let app = spawn_app().await;
    let cases = [
        (
            json!({"operations": [{"type": "read", "path": "a"}, {"type": "read"}]}),
            "operations[1].path",
        ),
        (
            json!({"operations": [{"type": "write", "path": "a"}]}),
            "operations[0].content",
        ),
        (
            json!({"operations": [{"type": "command", "command": ""}]}),
            "operations[0].command",
        ),
        (
            json!({"operations": [{"type": "call"}]}),
            "operations[0].tool",
        ),
        (
            json!({"operations": [{"type": "call", "tool": "x", "arguments": "y"}]}),
            "operations[0].arguments",
        ),
        (
            json!({"operations": [{"type": "delete", "path": "a"}]}),
            "operations[0].type",
        ),
        (
            json!({"operations": [{"type": "read", "path": "a"}], "server": "elsewhere"}),
            "server",
        ),
        (
            json!({"operations": [{"type": "read", "path": "a"}], "timeout_seconds": -1}),
            "timeout_seconds",
        ),
    ];
    for (body, field) in cases {
        let (status, answer) = app.post("/batch/mcp-operations", &body).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{body} → {answer}"
        );
        assert_eq!(answer["field"], field, "{answer}");
        assert!(answer["detail"].as_str().unwrap().starts_with(field));
    }
    let (_, answer) = app
        .post(
            "/batch/mcp-operations",
            &json!({"operations": [{"type": "read", "path": "a"}], "server": "elsewhere"}),
        )
        .await;
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("'elsewhere' is not configured (configured: batchforge)"),
        "{answer}"
    );
    assert_eq!(app.get("/batch/stats").await.1["stats"]["total"], 0);
}

#[actix_web::test]
async fn servers_that_cannot_start_fail_their_items_with_the_reason() {
    let cwd = std::env::temp_dir();
    // A closed loopback port: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let app = app_with(vec![
        stdio_server("missing", "/nonexistent/bin/mcp-server", &[], &cwd),
        stdio_server(
            "dies",
            "sh",
            &["-c", "echo 'config file is broken' >&2; exit 3"],
            &cwd,
        ),
        McpServerConfig {
            name: "remote".into(),
            transport: McpTransport::Http {
                url: format!("http://127.0.0.1:{port}/mcp"),
                headers: Default::default(),
            },
        },
    ])
    .await;
    let ops = json!([{"type": "read", "path": "a"}, {"type": "list", "path": "."}]);
    let (_, r) = run(
        &app,
        json!({"server": "missing", "operations": ops}),
        Duration::from_secs(30),
    )
    .await;
    for item in &r {
        let e = error_of(item);
        assert!(
            e.contains("cannot start MCP server 'missing' (/nonexistent/bin/mcp-server)")
                && e.contains("No such file"),
            "{e}"
        );
    }
    let (_, r) = run(
        &app,
        json!({"server": "dies", "operations": ops}),
        Duration::from_secs(30),
    )
    .await;
    let e = error_of(&r[0]);
    assert!(
        e.contains("cannot start MCP server 'dies'") && e.contains("config file is broken"),
        "{e}"
    );
    let (_, r) = run(
        &app,
        json!({"server": "remote", "operations": ops}),
        Duration::from_secs(60),
    )
    .await;
    let e = error_of(&r[0]);
    assert!(
        e.contains(&format!(
            "cannot connect to MCP server 'remote' at http://127.0.0.1:{port}/mcp"
        )),
        "{e}"
    );
}

#[actix_web::test]
async fn a_2000_operation_mcp_batch_stores_every_result_on_pooled_sessions() {
    let app = spawn_app().await;
    for i in 0..100 {
        app.write_file(&format!("in/{i}.txt"), &format!("input {i}\n"));
    }
    let parallel = 8;
    let operations: Vec<Value> = (0..2000)
        .map(|i| match i % 3 {
            0 => json!({"id": format!("op{i}"), "type": "read", "path": format!("in/{}.txt", i % 100)}),
            1 => json!({"id": format!("op{i}"), "type": "write", "path": format!("out/{i}.txt"), "content": format!("output {i}\n")}),
            _ => json!({"id": format!("op{i}"), "type": "list", "path": "in"}),
        })
        .collect();
    let started = Instant::now();
    let id = app
        .submit(
            "/batch/mcp-operations",
            &json!({"operations": operations, "parallel": parallel}),
        )
        .await;
    let mut most_servers = 0;
    let job = wait_for(Duration::from_secs(300), "the 2000-operation batch", || {
        most_servers = most_servers.max(builtin_servers(&app.workspace).len());
        let app = &app;
        let id = id.clone();
        async move {
            let job = app.job(&id).await;
            (job["status"] == "completed" && !job["result"].is_null()).then_some(job)
        }
    })
    .await;
    eprintln!(
        "2000 MCP operations in {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(job["result"]["summary"]["total"], 2000);
    assert_eq!(
        job["result"]["summary"]["successful"], 2000,
        "{}",
        job["result"]["summary"]
    );
    let results = job["result"]["results"].as_array().unwrap();
    assert_eq!(results.len(), 2000);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["id"], format!("op{i}"));
        assert_eq!(r["status"], "success", "{r}");
        match i % 3 {
            0 => assert_eq!(r["result"], format!("input {}\n", i % 100)),
            1 => assert_eq!(
                std::fs::read_to_string(app.workspace.join(format!("out/{i}.txt"))).unwrap(),
                format!("output {i}\n")
            ),
            _ => assert_eq!(
                r["structured_content"]["entries"].as_array().unwrap().len(),
                100
            ),
        }
    }
    let items = app.all_items(&id, 1000).await;
    assert_eq!(items.len(), 2000);
    assert!(items.iter().all(|it| it["status"] == "succeeded"));
    // Sessions are pooled: at most `parallel` servers ever ran, not one per operation.
    let now = builtin_servers(&app.workspace).len();
    assert!(
        (1..=parallel).contains(&now) && most_servers <= parallel,
        "{now} servers now, {most_servers} at most"
    );
}

#[actix_web::test]
async fn cancelling_an_mcp_batch_aborts_the_calls_in_flight() {
    let app = spawn_app().await;
    let marker = "3599.6161";
    let operations: Vec<Value> = (0..12)
        .map(|_| json!({"type": "command", "command": format!("sleep {marker}")}))
        .collect();
    let id = app
        .submit(
            "/batch/mcp-operations",
            &json!({"operations": operations, "parallel": 3}),
        )
        .await;
    wait_for(Duration::from_secs(30), "three sleeps to run", || async {
        (processes_with(marker).len() == 3).then_some(())
    })
    .await;
    let servers = builtin_servers(&app.workspace);
    assert_eq!(servers.len(), 3, "one session per parallel slot");
    let cancelled_at = Instant::now();
    let (status, body) = app.delete(&format!("/batch/jobs/{id}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // The servers got `notifications/cancelled` and killed the commands themselves: they
    // are still alive, and nothing else would stop a sleep of an hour.
    wait_for(
        Duration::from_secs(5),
        "the sleeps to be killed",
        || async { processes_with(marker).is_empty().then_some(()) },
    )
    .await;
    let job = app.wait_finished(&id, Duration::from_secs(10)).await;
    let took = cancelled_at.elapsed();
    assert!(took < Duration::from_secs(3), "cancellation took {took:?}");
    assert_eq!(job["status"], "cancelled");
    assert_eq!(job["result"]["summary"]["cancelled"], 12, "{job}");
    assert_eq!(
        builtin_servers(&app.workspace),
        servers,
        "sessions are kept"
    );
}

#[actix_web::test]
async fn a_server_that_dies_mid_batch_is_restarted_and_its_items_retried_once() {
    let app = spawn_app().await;
    let marker = "1.3571";
    let operations: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("c{i}"), "type": "command", "command": format!("sleep {marker}")}))
        .collect();
    let id = app
        .submit(
            "/batch/mcp-operations",
            &json!({"operations": operations, "parallel": 2}),
        )
        .await;
    wait_for(Duration::from_secs(30), "two sleeps to run", || async {
        (processes_with(marker).len() == 2).then_some(())
    })
    .await;
    let first = builtin_servers(&app.workspace);
    assert_eq!(first.len(), 2);
    for pid in &first {
        // SAFETY: killing the test's own child server.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    let job = app.wait_finished(&id, Duration::from_secs(60)).await;
    assert_eq!(job["status"], "completed");
    assert_eq!(job["result"]["summary"]["successful"], 6, "{job}");
    let now = builtin_servers(&app.workspace);
    assert!(
        !now.is_empty() && now.iter().all(|p| !first.contains(p)),
        "{first:?} → {now:?}"
    );
}

/// The official "everything" reference server in its streamable-HTTP mode, on a free
/// loopback port; killed on drop.
pub(crate) struct HttpServer {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub(crate) async fn start_everything_server() -> Option<HttpServer> {
    let index_js = installed_node_server("server-everything")?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new("node")
        .arg(&index_js)
        .arg("streamableHttp")
        .env("PORT", port.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("node starts");
    let server = HttpServer {
        child,
        url: format!("http://127.0.0.1:{port}/mcp"),
    };
    wait_for(
        Duration::from_secs(30),
        "the HTTP MCP server to listen",
        || async {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .ok()
                .map(|_| ())
        },
    )
    .await;
    Some(server)
}

#[actix_web::test]
async fn mcp_operations_reach_a_streamable_http_server() {
    let Some(server) = start_everything_server().await else {
        return;
    };
    let app = app_with(vec![McpServerConfig {
        name: "everything".into(),
        transport: McpTransport::Http {
            url: server.url.clone(),
            headers: Default::default(),
        },
    }])
    .await;
    let mut operations = vec![
        json!({"type": "call", "tool": "get-sum", "arguments": {"a": 2, "b": 3}}),
        json!({"type": "call", "tool": "get-structured-content", "arguments": {"location": "Chicago"}}),
        json!({"type": "read", "path": "a.txt"}),
        json!({"type": "call", "tool": "get-sum", "arguments": {"a": "two"}}),
    ];
    for i in 0..40 {
        operations.push(
            json!({"type": "call", "tool": "echo", "arguments": {"message": format!("hello {i}")}}),
        );
    }
    let (job, r) = run(
        &app,
        json!({"server": "everything", "operations": operations, "parallel": 4}),
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 42, "{job}");
    assert_eq!(r[0]["result"], "The sum of 2 and 3 is 5.", "{}", r[0]);
    assert_eq!(
        r[1]["structured_content"]["conditions"],
        "Light rain / drizzle"
    );
    assert!(
        error_of(&r[2]).contains("MCP server 'everything' cannot do 'read' operations"),
        "{}",
        r[2]
    );
    assert!(!error_of(&r[3]).is_empty());
    for i in 0..40 {
        assert_eq!(r[4 + i]["result"], format!("Echo: hello {i}"));
    }
}

/// Waits (up to 5 s, without failing) until the killed `pids` are reaped.
async fn until_reaped(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

#[actix_web::test]
async fn idle_sessions_whose_server_died_are_not_lent_out_again() {
    let app = spawn_app().await;
    app.write_file("a.txt", "alpha\n");
    // Two slow operations at once: two sessions, two servers, idle afterwards.
    let (job, _) = run(
        &app,
        json!({"operations": [
            {"type": "command", "command": "sleep 0.5"},
            {"type": "command", "command": "sleep 0.5"}
        ], "parallel": 2}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 2, "{job}");
    let idle = builtin_servers(&app.workspace);
    assert_eq!(idle.len(), 2, "{idle:?}");
    for pid in &idle {
        // SAFETY: killing the test's own child server, by pid.
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    until_reaped(&idle).await;
    let operations: Vec<Value> = (0..8)
        .map(|i| json!({"id": format!("r{i}"), "type": "read", "path": "a.txt"}))
        .collect();
    let (job, r) = run(
        &app,
        json!({"operations": operations, "parallel": 2}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 8, "{job}");
    assert!(r.iter().all(|r| r["result"] == "alpha\n"), "{r:?}");
    let now = builtin_servers(&app.workspace);
    assert!(
        !now.is_empty() && now.iter().all(|p| !idle.contains(p)),
        "{idle:?} → {now:?}"
    );
}

#[actix_web::test]
async fn a_timed_out_call_closes_its_session_and_its_server() {
    let app = spawn_app().await;
    let marker = "2999.2717";
    let started = Instant::now();
    let (job, r) = run(
        &app,
        json!({"operations": [{"type": "command", "command": format!("sleep {marker}")}],
               "timeout_seconds": 1}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["result"]["summary"]["failed"], 1, "{job}");
    assert!(
        error_of(&r[0]).contains("no answer within 1.0s"),
        "{}",
        r[0]
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The session is not pooled: its server is stopped, and the command with it.
    wait_for(
        Duration::from_secs(15),
        "the timed-out server and its command to end",
        || async {
            (builtin_servers(&app.workspace).is_empty() && processes_with(marker).is_empty())
                .then_some(())
        },
    )
    .await;
    let (job, _) = run(
        &app,
        json!({"operations": [{"type": "list", "path": "."}]}),
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["result"]["summary"]["successful"], 1, "{job}");
}

#[actix_web::test]
async fn fifos_are_refused_at_once_not_waited_on() {
    let app = spawn_app().await;
    let fifo = app.workspace.join("pipe");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    app.write_file("a.txt", "alpha\n");
    let started = Instant::now();
    let (_, r) = run(
        &app,
        json!({"operations": [
            {"type": "read", "path": "pipe"},
            {"type": "write", "path": "pipe", "content": "into the pipe"},
            {"type": "read", "path": "a.txt"}
        ], "timeout_seconds": 20, "parallel": 3}),
        Duration::from_secs(60),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    for item in &r[..2] {
        assert!(error_of(item).contains("not a regular file"), "{item}");
    }
    assert!(error_of(&r[0]).contains("'pipe' is a FIFO"), "{}", r[0]);
    assert_eq!(r[2]["result"], "alpha\n", "{}", r[2]);
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::symlink_metadata(&fifo)
        .unwrap()
        .file_type()
        .is_fifo());
}

#[actix_web::test]
async fn messages_too_big_for_mcp_fail_at_once() {
    let app = spawn_app().await;
    // Refused at submission: more than 8 MiB to write.
    let big = "a".repeat(8 * 1024 * 1024 + 1);
    let (status, answer) = app
        .post(
            "/batch/mcp-operations",
            &json!({"operations": [{"type": "read", "path": "a"},
                                   {"type": "write", "path": "big.txt", "content": big}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{answer}");
    assert_eq!(answer["field"], "operations[1].content", "{answer}");
    assert!(
        answer["detail"]
            .as_str()
            .unwrap()
            .contains("at most 8388608 bytes"),
        "{answer}"
    );
    // Over the read cap; under it, but 18 MiB once JSON-encoded; and 7 MiB that fits.
    app.write_file("nine.txt", &"b".repeat(9 * 1024 * 1024));
    app.write_file("controls.txt", &"\u{1}".repeat(3 * 1024 * 1024));
    let seven = "line of text\n".repeat(7 * 1024 * 1024 / 13);
    app.write_file("seven.txt", &seven);
    let started = Instant::now();
    let (_, r) = run(
        &app,
        json!({"operations": [
            {"type": "read", "path": "nine.txt"},
            {"type": "read", "path": "controls.txt"},
            {"type": "read", "path": "seven.txt"},
            {"type": "write", "path": "eight.txt", "content": "c".repeat(8 * 1024 * 1024)}
        ], "timeout_seconds": 60}),
        Duration::from_secs(120),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(
        error_of(&r[0]).contains("reads at most 8388608 (--max-read-bytes)"),
        "{}",
        r[0]
    );
    assert!(error_of(&r[1]).contains("once JSON-encoded"), "{}", r[1]);
    assert_eq!(r[2]["status"], "success", "{}", r[2]["error"]);
    assert_eq!(r[2]["result"].as_str().map(str::len), Some(seven.len()));
    assert_eq!(r[3]["status"], "success", "{}", r[3]["error"]);
    assert_eq!(
        std::fs::metadata(app.workspace.join("eight.txt"))
            .unwrap()
            .len(),
        8 * 1024 * 1024
    );
}

/// Calls one tool on a session and returns (is_error, text of the answer).
async fn raw_call(
    service: &rmcp::service::RunningService<rmcp::RoleClient, rmcp::model::ClientConfig>,
    tool: &str,
    arguments: Value,
) -> (bool, String) {
    let mut params = rmcp::model::CallToolRequestParams::new(tool.to_string());
    params.arguments = arguments.as_object().cloned();
    let answer = service
        .peer()
        .call_tool(params)
        .await
        .expect("the call is answered");
    let text = serde_json::to_string(&answer.content).unwrap_or_default();
    (answer.is_error == Some(true), text)
}

#[actix_web::test]
async fn mcp_server_refuses_escapes_when_spoken_to_directly_as_an_mcp_client() {
    use rmcp::ServiceExt;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir(&root).unwrap();
    std::fs::write(root.join("inside.txt"), "inside\n").unwrap();
    std::fs::write(dir.path().join("secret.txt"), "secret\n").unwrap();
    std::os::unix::fs::symlink(dir.path().join("secret.txt"), root.join("link")).unwrap();
    std::os::unix::fs::symlink(dir.path(), root.join("up")).unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"));
    cmd.args(["mcp-server", "--root"])
        .arg(&root)
        .kill_on_drop(true);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("mcp-server starts");
    let client = rmcp::model::ClientConfig::new(
        rmcp::model::ClientCapabilities::default(),
        rmcp::model::Implementation::new("escape-test", "0"),
    );
    let service = client.serve(transport).await.expect("initialized");
    let tools: Vec<String> = service
        .peer()
        .list_all_tools()
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.name.to_string())
        .collect();
    for expected in [
        "list_files",
        "read_file",
        "write_file",
        "run_command",
        "sandbox_root",
    ] {
        assert!(tools.iter().any(|t| t == expected), "{tools:?}");
    }
    let (err, text) = raw_call(&service, "read_file", json!({"path": "inside.txt"})).await;
    assert!(!err && text.contains("inside"), "{text}");
    for (tool, args) in [
        ("read_file", json!({"path": "../secret.txt"})),
        ("read_file", json!({"path": dir.path().join("secret.txt")})),
        ("read_file", json!({"path": "/etc/passwd"})),
        ("read_file", json!({"path": "link"})),
        ("read_file", json!({"path": "up/secret.txt"})),
        ("list_files", json!({"path": ".."})),
        ("list_files", json!({"path": "up"})),
        (
            "write_file",
            json!({"path": "../planted.txt", "content": "x"}),
        ),
        (
            "write_file",
            json!({"path": "up/planted.txt", "content": "x"}),
        ),
        ("write_file", json!({"path": "link", "content": "x"})),
        ("run_command", json!({"command": "ls", "cwd": ".."})),
    ] {
        let (err, text) = raw_call(&service, tool, args.clone()).await;
        assert!(err, "{tool} {args} was not refused: {text}");
        assert!(!text.contains("secret\\n"), "{tool} {args} leaked: {text}");
    }
    assert!(!dir.path().join("planted.txt").exists());
    assert_eq!(
        std::fs::read_to_string(dir.path().join("secret.txt")).unwrap(),
        "secret\n"
    );
    let (err, text) = raw_call(&service, "sandbox_root", json!({})).await;
    assert!(!err, "{text}");
    service.cancel().await.ok();
}

#[actix_web::test]
async fn hard_links_to_outside_files_are_neither_read_nor_written() {
    let app = spawn_app().await;
    // Beside the workspace, on the same filesystem, so `ln` can link it.
    let secret = app.dir.path().join("secret");
    std::fs::write(&secret, "outside secret\n").unwrap();
    let (_, r) = run(
        &app,
        json!({"operations": [
            {"type": "command", "command": format!("ln -f {} hard_file", secret.display())}
        ]}),
        Duration::from_secs(30),
    )
    .await;
    let (_, health) = send(&client(), "GET", &format!("{}/health", app.address), None).await;
    if health["sandbox"] == "bwrap" {
        // The sandbox already stops the attack: the command cannot see the outside file.
        // The file tools must refuse a hard link whoever made it, so make it here.
        assert_eq!(r[0]["status"], "failed", "{}", r[0]);
        assert!(r[0].to_string().contains("No such file"), "{}", r[0]);
        std::fs::hard_link(&secret, app.workspace.join("hard_file")).unwrap();
    } else {
        assert_eq!(r[0]["status"], "success", "{}", r[0]);
    }
    let (_, r) = run(
        &app,
        json!({"operations": [
            {"type": "read", "path": "hard_file"},
            {"type": "write", "path": "hard_file", "content": "overwritten"},
            {"type": "list", "path": "."}
        ], "parallel": 1}),
        Duration::from_secs(30),
    )
    .await;
    for item in &r[..2] {
        let e = error_of(item);
        assert!(e.contains("'hard_file' has 2 hard links"), "{e}");
        assert!(!item.to_string().contains("outside secret"), "{item}");
    }
    assert!(error_of(&r[1]).contains("refusing to write"), "{}", r[1]);
    assert_eq!(r[2]["status"], "success", "{}", r[2]);
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "outside secret\n",
        "the outside file is untouched"
    );
}

/// A loop swaps a file for a symlink out and a directory for a symlink to an outside
/// directory while 1,500 reads run: none may print the outside secret.
#[actix_web::test]
async fn reads_racing_a_symlink_swap_never_leak_the_outside_file() {
    use rmcp::ServiceExt;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let out = dir.path().join("out");
    std::fs::create_dir_all(root.join("d.dir")).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::write(root.join("d.dir/a.txt"), "inside\n").unwrap();
    std::fs::write(root.join("t.file"), "inside\n").unwrap();
    std::fs::write(out.join("a.txt"), "secret\n").unwrap();
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"));
    cmd.args(["mcp-server", "--root"])
        .arg(&root)
        .kill_on_drop(true);
    let transport = rmcp::transport::TokioChildProcess::new(cmd).expect("mcp-server starts");
    let client = rmcp::model::ClientConfig::new(
        rmcp::model::ClientCapabilities::default(),
        rmcp::model::Implementation::new("race-test", "0"),
    );
    let service = client.serve(transport).await.expect("initialized");

    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicUsize::new(0));
    let swapper = {
        let (stop, swaps, root, out) = (stop.clone(), swaps.clone(), root.clone(), out.clone());
        std::thread::spawn(move || {
            let (d, t) = (root.join("d"), root.join("t"));
            while !stop.load(Ordering::Relaxed) {
                std::fs::rename(root.join("d.dir"), &d).unwrap();
                std::fs::rename(root.join("t.file"), &t).unwrap();
                std::fs::rename(&d, root.join("d.dir")).unwrap();
                std::fs::rename(&t, root.join("t.file")).unwrap();
                std::os::unix::fs::symlink(&out, &d).unwrap();
                std::os::unix::fs::symlink(out.join("a.txt"), &t).unwrap();
                std::fs::remove_file(&d).unwrap();
                std::fs::remove_file(&t).unwrap();
                swaps.fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let (mut leaks, mut inside, mut refused) = (0, 0, 0);
    for i in 0..1500 {
        let path = if i % 2 == 0 { "d/a.txt" } else { "t" };
        let (err, text) = raw_call(&service, "read_file", json!({ "path": path })).await;
        if text.contains("secret\\n") {
            leaks += 1;
        } else if err {
            refused += 1;
        } else if text.contains("inside\\n") {
            inside += 1;
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();
    service.cancel().await.ok();
    eprintln!(
        "{inside} reads inside, {refused} refused, {leaks} leaks, {} swaps",
        swaps.load(Ordering::Relaxed)
    );
    assert_eq!(leaks, 0, "{leaks} of 1500 reads printed the outside secret");
    assert!(swaps.load(Ordering::Relaxed) > 10, "the swap loop ran");
    assert!(
        inside > 0 && refused > 0,
        "{inside} inside, {refused} refused"
    );
}
