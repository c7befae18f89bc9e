//! Test harness: a fresh database and workspace per test, the app on port 0, typed HTTP
//! helpers, and bounded polling.

use awc::http::StatusCode;
use batchforge::{Application, EngineBuilder, EngineConfig, ServeConfig};
use serde_json::Value;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// A running app on a fresh database.
pub struct TestApp {
    pub address: String,
    pub workspace: PathBuf,
    client: awc::Client,
    /// The database; a PostgreSQL one is dropped with it.
    pub db: TestDb,
    pub dir: TempDir,
}

/// The PostgreSQL server the tests use: `BATCHFORGE_TEST_PG` (a URL without the
/// database), by default the local one.
pub fn pg_server() -> String {
    std::env::var("BATCHFORGE_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_string())
}

/// Whether the whole suite runs on PostgreSQL (`BATCHFORGE_TEST_DATABASE=postgres`)
/// rather than SQLite.
pub fn on_postgres() -> bool {
    std::env::var("BATCHFORGE_TEST_DATABASE").is_ok_and(|v| v == "postgres")
}

/// Whether a PostgreSQL server answers; the multi-node tests skip (with a note) if not.
pub fn postgres_available() -> bool {
    use diesel::Connection;
    batchforge::store::init_postgres_client();
    match diesel::pg::PgConnection::establish(&format!("{}/postgres", pg_server())) {
        Ok(_) => true,
        // In CI a missing server is a failure, never a silent skip.
        Err(e) if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("CI needs PostgreSQL at {}: {e}", pg_server())
        }
        Err(e) => {
            eprintln!("SKIPPED: no PostgreSQL at {} ({e})", pg_server());
            false
        }
    }
}

/// A test's database: a SQLite file under the test's directory, or (on PostgreSQL) a
/// database of its own, created fresh and dropped with this value.
pub struct TestDb {
    pub url: String,
    pg_name: Option<String>,
}

impl TestDb {
    /// The database for `file` under `dir`, on the suite's backend.
    pub fn create(dir: &Path, file: &str) -> TestDb {
        if on_postgres() {
            Self::create_postgres(dir, file)
        } else {
            TestDb {
                url: database_url(dir, file),
                pg_name: None,
            }
        }
    }

    /// A fresh PostgreSQL database whatever the suite's backend (the multi-node tests).
    pub fn create_postgres(dir: &Path, file: &str) -> TestDb {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        let name = pg_database_name(dir, file);
        batchforge::store::init_postgres_client();
        let mut admin = diesel::pg::PgConnection::establish(&format!("{}/postgres", pg_server()))
            .expect("PostgreSQL for the tests (BATCHFORGE_TEST_PG)");
        // Two calls: one multi-statement string would run as one transaction, which
        // neither statement allows.
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .and_then(|()| admin.batch_execute(&format!("CREATE DATABASE {name}")))
            .expect("create the test database");
        TestDb {
            url: format!("{}/{name}", pg_server()),
            pg_name: Some(name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        use diesel::connection::SimpleConnection;
        use diesel::Connection;
        if let Some(name) = &self.pg_name {
            if let Ok(mut admin) =
                diesel::pg::PgConnection::establish(&format!("{}/postgres", pg_server()))
            {
                let _ =
                    admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        }
    }
}

/// The URL of the database [`TestDb::create`] made for `file` under `dir` (for a second
/// engine, a restart or a direct look at the store).
pub fn database_url(dir: &Path, file: &str) -> String {
    if on_postgres() {
        format!("{}/{}", pg_server(), pg_database_name(dir, file))
    } else {
        format!("sqlite://{}", dir.join(file).display())
    }
}

/// A database name unique to the test directory (tempdirs are unique).
fn pg_database_name(dir: &Path, file: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.join(file).hash(&mut h);
    format!("bf_test_{:016x}", h.finish())
}

/// Options for [`spawn_app_with`].
#[derive(Default)]
pub struct AppOptions {
    pub kind_concurrency: HashMap<String, usize>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default(), |b| b).await
}

pub async fn spawn_app_with(
    options: AppOptions,
    customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> TestApp {
    spawn_app_with_mcp(options, Vec::new(), customize).await
}

/// Like [`spawn_app_with`], with MCP servers besides the built-in one.
pub async fn spawn_app_with_mcp(
    options: AppOptions,
    mcp_servers: Vec<batchforge::mcp::McpServerConfig>,
    customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> TestApp {
    spawn_app_with_agent(options, mcp_servers, Default::default(), customize).await
}

/// Like [`spawn_app_with_mcp`], with the LLM settings of `batch_agent_tasks`.
pub async fn spawn_app_with_agent(
    options: AppOptions,
    mcp_servers: Vec<batchforge::mcp::McpServerConfig>,
    agent: batchforge::agent::AgentConfig,
    customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> TestApp {
    spawn_app_configured(options, mcp_servers, agent, |_| {}, customize).await
}

/// Like [`spawn_app_with_agent`], adjusting the engine's settings last (webhook backoff,
/// retention, …).
pub async fn spawn_app_configured(
    options: AppOptions,
    mcp_servers: Vec<batchforge::mcp::McpServerConfig>,
    agent: batchforge::agent::AgentConfig,
    configure: impl FnOnce(&mut EngineConfig),
    customize: impl FnOnce(EngineBuilder) -> EngineBuilder,
) -> TestApp {
    let dir = tempfile::tempdir().expect("tempdir");
    let workspace = dir.path().join("ws");
    std::fs::create_dir(&workspace).unwrap();
    let db = TestDb::create(dir.path(), "jobs.db");
    let config = ServeConfig {
        engine: EngineConfig {
            database_url: db.url.clone(),
            workspace: workspace.clone(),
            default_concurrency: None,
            kind_concurrency: options.kind_concurrency,
            builtin_processors: true,
            // The test binary is not batchforge: name the binary that runs `mcp-server`.
            mcp: batchforge::mcp::McpConfig {
                servers: mcp_servers,
                server_binary: Some(env!("CARGO_BIN_EXE_batchforge").into()),
                ..Default::default()
            },
            agent,
            ..EngineConfig::default()
        },
        bind: "127.0.0.1:0".into(),
        shutdown_grace: Duration::from_secs(1),
        http_workers: Some(2),
    };
    let mut config = config;
    configure(&mut config.engine);
    let app = Application::build_with(config, customize)
        .await
        .expect("app starts");
    let address = format!("http://127.0.0.1:{}", app.port());
    actix_web::rt::spawn(app.run_until_stopped());
    TestApp {
        address,
        workspace: workspace.canonicalize().unwrap(),
        dir,
        db,
        client: client(),
    }
}

pub fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .finish()
}

/// Sends a request and decodes the JSON answer (Null for an empty body).
pub async fn send(
    client: &awc::Client,
    method: &str,
    url: &str,
    body: Option<&[u8]>,
) -> (StatusCode, Value) {
    let req = match method {
        "GET" => client.get(url),
        "POST" => client.post(url),
        "DELETE" => client.delete(url),
        other => panic!("method {other}"),
    };
    let mut resp = match body {
        Some(b) => req
            .insert_header(("content-type", "application/json"))
            .send_body(b.to_vec())
            .await
            .expect("request"),
        None => req.send().await.expect("request"),
    };
    let bytes = resp.body().limit(512 * 1024 * 1024).await.expect("body");
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            panic!(
                "{url} answered non-JSON ({e}): {}",
                String::from_utf8_lossy(&bytes)
            )
        })
    };
    (resp.status(), value)
}

impl TestApp {
    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_raw(path, body.to_string().as_bytes()).await
    }

    pub async fn post_raw(&self, path: &str, body: &[u8]) -> (StatusCode, Value) {
        send(
            &self.client,
            "POST",
            &format!("{}{path}", self.address),
            Some(body),
        )
        .await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        send(
            &self.client,
            "GET",
            &format!("{}{path}", self.address),
            None,
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        send(
            &self.client,
            "DELETE",
            &format!("{}{path}", self.address),
            None,
        )
        .await
    }

    /// Submits and returns the job id, asserting 200.
    pub async fn submit(&self, path: &str, body: &Value) -> String {
        let (status, job) = self.post(path, body).await;
        assert_eq!(status, StatusCode::OK, "submit answered {job}");
        job["job_id"].as_str().expect("job_id").to_string()
    }

    pub async fn job(&self, id: &str) -> Value {
        let (status, job) = self.get(&format!("/batch/jobs/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        job
    }

    /// Polls the job until `done` holds, for at most `limit`.
    pub async fn wait_job(
        &self,
        id: &str,
        limit: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let base = self.address.clone();
        let client = self.client.clone();
        wait_for(limit, &format!("job {id}"), || {
            let url = format!("{base}/batch/jobs/{id}");
            let client = client.clone();
            let done = &done;
            async move {
                let (_, job) = send(&client, "GET", &url, None).await;
                done(&job).then_some(job)
            }
        })
        .await
    }

    /// Waits until the job reaches a terminal status.
    pub async fn wait_finished(&self, id: &str, limit: Duration) -> Value {
        self.wait_job(id, limit, |j| {
            matches!(
                j["status"].as_str(),
                Some("completed" | "failed" | "cancelled" | "expired")
            ) && !j["result"].is_null()
        })
        .await
    }

    /// Every item of a job, paged through `/items`.
    pub async fn all_items(&self, id: &str, page: u32) -> Vec<Value> {
        all_items_at(&self.address, id, page).await
    }

    pub fn write_file(&self, rel: &str, content: &str) {
        let p = self.workspace.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

/// Polls `probe` every 50 ms until it yields a value, panicking after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        if start.elapsed() > limit {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Live (non-zombie) processes whose command line contains `marker`, bubblewrap's own
/// left out.
pub fn processes_with(marker: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(e.path().join("cmdline")) else {
            continue;
        };
        if !String::from_utf8_lossy(&cmdline).contains(marker) {
            continue;
        }
        // bubblewrap's own processes carry the sandboxed command in their arguments:
        // only the command itself counts.
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim_end() == "bwrap" {
            continue;
        }
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat.rsplit(") ").next().and_then(|s| s.chars().next());
        if state != Some('Z') && pid != std::process::id() {
            found.push(pid);
        }
    }
    found
}

/// Lines of a file in the workspace (empty when it does not exist).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Starts `batchforge serve` on `dir`'s database (`jobs.db`, kept across restarts) and
/// `workspace`, appending its log to `dir/server.log`, with `extra` arguments.
pub async fn serve_in_dir(
    dir: &Path,
    workspace: &Path,
    extra: &[&str],
) -> (tokio::process::Child, String) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("server.log"))
        .unwrap();
    let url = database_url(dir, "jobs.db");
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "--database-url".as_ref(),
        url.as_ref(),
        "--workspace".as_ref(),
        workspace.as_os_str(),
    ];
    args.extend(extra.iter().map(std::ffi::OsStr::new));
    spawn_serve(&args, log).await
}

/// Starts `batchforge serve --bind 127.0.0.1:0` with `args` as a child process (killed
/// when dropped), its stderr into `log`, and returns it with the address it announced.
pub async fn spawn_serve(
    args: &[&std::ffi::OsStr],
    log: std::fs::File,
) -> (tokio::process::Child, String) {
    spawn_serve_in_env(args, log, &[]).await
}

/// [`spawn_serve`] with `env` set in the child's environment.
pub async fn spawn_serve_in_env(
    args: &[&std::ffi::OsStr],
    log: std::fs::File,
    env: &[(&str, &std::ffi::OsStr)],
) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .envs(env.iter().copied())
        .arg("serve")
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .expect("batchforge binary starts");
    let stdout = child.stdout.take().unwrap();
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .expect("server announces its address in time")
        .unwrap()
        .expect("a line on stdout");
    let address = line
        .strip_prefix("batchforge listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, address)
}

/// Every item of a job on the server at `address`, paged `page` at a time.
pub async fn all_items_at(address: &str, id: &str, page: u32) -> Vec<Value> {
    let client = client();
    let mut items = Vec::new();
    loop {
        let url = format!(
            "{address}/batch/jobs/{id}/items?limit={page}&offset={}",
            items.len()
        );
        let (status, body) = send(&client, "GET", &url, None).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let got = body["items"].as_array().unwrap().clone();
        if got.is_empty() {
            return items;
        }
        items.extend(got);
    }
}

/// The CLI client as a child process against the server at `address`.
pub async fn run_cli(address: &str, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_batchforge"))
        .args(["--server", address])
        .args(args)
        .output()
        .await
        .expect("the CLI runs")
}
