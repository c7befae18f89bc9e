//! `batchforge bench`: measures the engine through its real surfaces and prints a table per
//! scenario, with the parameters, so anyone can rerun it.
//!
//! The server under test is always a `batchforge serve --noop-processor` child process, so
//! its memory is measured alone and the load generator (this process) does not share its
//! event loop. Queues that must be "already there" are written straight into the database
//! through the library's store API before the child starts.

use batchforge::model::{new_job_id, now, NewItem, NewJob};
use batchforge::processors::noop;
use batchforge::store::{self, databases, DatabaseUrl, Store, StoreError};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Which measurement to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// One pre-queued batch of no-op items, until all are committed (with the read path).
    BurnDown,
    /// Many single-item jobs submitted over HTTP by concurrent clients.
    SmallJobs,
    /// Validation items running `true`, against `xargs -P` on the same commands.
    Commands,
    /// Peak RSS and database size with a million queued items, and the restart time with
    /// some of them left `running` by a kill.
    Footprint,
    /// MCP operations (mixed read/write/list) through batchforge's own `mcp-server`.
    Mcp,
    /// One batch on PostgreSQL burnt down by 1 node, then by 3 nodes on one database (no-op
    /// items, then items that each wait `--cluster-sleep-ms` like real work). Not in the
    /// default set: it needs a PostgreSQL server (`--pg-url`).
    Cluster,
    /// RSS of the server around one `--memory-items` no-op submission sent over HTTP as
    /// JSONL, and around a second one: at start, peak, and after each job finished.
    Memory,
    /// batchforge next to graphile-worker and pg-boss (installed by `bench/peers/run.sh`)
    /// on the same PostgreSQL, alternating rounds, one table with ratios. Not in the
    /// default set: it needs PostgreSQL (`--pg-url`) and the npm peers (`--peers-dir`).
    Peers,
}

/// Parameters of `batchforge bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Scenarios to run (default: all).
    #[arg(long = "scenario", value_enum)]
    pub scenarios: Vec<Scenario>,
    /// Items in the burn-down batch.
    #[arg(long, default_value_t = 100_000)]
    pub items: usize,
    /// Single-item jobs in the small-jobs scenario.
    #[arg(long, default_value_t = 10_000)]
    pub jobs: usize,
    /// Concurrent HTTP clients in the small-jobs scenario.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,
    /// Validation items in the commands scenario.
    #[arg(long, default_value_t = 5_000)]
    pub commands: usize,
    /// Items per run of the commands scenario's sandbox pairing (`--sandbox none` against
    /// `bwrap`, for `true` and for 50 ms of work); default the smaller of `--commands`
    /// and 2000.
    #[arg(long)]
    pub sandbox_commands: Option<usize>,
    /// Queued items in the footprint scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub footprint_items: usize,
    /// Of those, items left `running` as if by a kill.
    #[arg(long, default_value_t = 10_000)]
    pub abandoned: usize,
    /// `parallel` of the benchmark jobs (no-op kinds run at most this many at once).
    #[arg(long, default_value_t = 1000)]
    pub parallel: u32,
    /// Per-kind concurrency passed to the server (default: the processor's own).
    #[arg(long)]
    pub concurrency: Option<u32>,
    /// Items per submission in the memory scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub memory_items: usize,
    /// Operations in the MCP scenario.
    #[arg(long, default_value_t = 10_000)]
    pub mcp_operations: usize,
    /// `parallel` of the MCP job: the number of pooled MCP sessions (server processes).
    #[arg(long, default_value_t = 8)]
    pub mcp_parallel: u32,
    /// Items per batch in the cluster scenario (no-op items).
    #[arg(long, default_value_t = 50_000)]
    pub cluster_items: usize,
    /// Items per batch in the cluster scenario's work-bound run.
    #[arg(long, default_value_t = 5_000)]
    pub cluster_work_items: usize,
    /// How long each work-bound item waits (its `sleep_ms`).
    #[arg(long, default_value_t = 20)]
    pub cluster_sleep_ms: u64,
    /// PostgreSQL server of the cluster scenario (without a database: one is created and
    /// dropped per run).
    #[arg(
        long,
        env = "BATCHFORGE_BENCH_PG",
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pub pg_url: String,
    /// Units of work per run in the peers scenario.
    #[arg(long, default_value_t = 10_000)]
    pub peer_units: usize,
    /// Units running at once in the peers scenario (every system's worker concurrency).
    #[arg(long, default_value_t = 8)]
    pub peer_concurrency: u32,
    /// HTTP clients sending batchforge's single-item jobs in the peers scenario.
    #[arg(long, default_value_t = 8)]
    pub peer_clients: usize,
    /// Rounds of the peers scenario (each runs every system once).
    #[arg(long, default_value_t = 3)]
    pub peer_rounds: usize,
    /// Where the peers' package.json and node_modules are (`bench/peers` of the repository).
    #[arg(long, default_value = "bench/peers")]
    pub peers_dir: PathBuf,
    /// The `batchforge` binary whose `serve` is measured (default: this one); pairs one
    /// build against another under the same load generator.
    #[arg(long)]
    pub server_binary: Option<PathBuf>,
    /// Keep the working directory (databases, server logs) here instead of a temporary one.
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Anything that stops a benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Setting up or talking to the server failed.
    #[error("{0}")]
    Setup(String),
    /// The store failed while preparing a queue.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file or process operation failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

type Result<T> = std::result::Result<T, BenchError>;

mod peers;
mod sandbox;

/// The binary `Server` starts: `--server-binary`, set once by `run`, or this one.
static SERVER_BINARY: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

fn setup(e: impl std::fmt::Display) -> BenchError {
    BenchError::Setup(e.to_string())
}

/// Runs the chosen scenarios and prints their tables.
pub fn run(args: BenchArgs) -> Result<()> {
    let binary = match &args.server_binary {
        Some(b) => b.clone(),
        None => std::env::current_exe()?,
    };
    let _ = SERVER_BINARY.set(binary);
    let scenarios = if args.scenarios.is_empty() {
        vec![
            Scenario::BurnDown,
            Scenario::SmallJobs,
            Scenario::Commands,
            Scenario::Footprint,
            Scenario::Mcp,
        ]
    } else {
        args.scenarios.clone()
    };
    let tmp;
    let root = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            d.clone()
        }
        None => {
            tmp = tempfile_dir()?;
            tmp.0.clone()
        }
    };
    println!(
        "batchforge bench — {} cores, SQLite WAL synchronous=NORMAL, release={}, dir {}",
        cores(),
        !cfg!(debug_assertions),
        root.display()
    );
    let system = actix_web::rt::System::new();
    for scenario in scenarios {
        let dir = root.join(format!("{scenario:?}").to_lowercase());
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(dir.join("ws"))?;
        println!();
        match scenario {
            Scenario::BurnDown => system.block_on(burn_down(&args, &dir))?,
            Scenario::SmallJobs => system.block_on(small_jobs(&args, &dir))?,
            Scenario::Commands => system.block_on(commands(&args, &dir))?,
            Scenario::Footprint => system.block_on(footprint(&args, &dir))?,
            Scenario::Mcp => system.block_on(mcp(&args, &dir))?,
            Scenario::Cluster => system.block_on(cluster(&args, &dir))?,
            Scenario::Memory => system.block_on(memory(&args, &dir))?,
            Scenario::Peers => system.block_on(peers::peers(&args, &dir))?,
        }
    }
    Ok(())
}

/// A temporary directory removed on drop (kept small: no extra dependency at run time).
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempfile_dir() -> Result<TempDir> {
    let p = std::env::temp_dir().join(format!("batchforge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&p)?;
    Ok(TempDir(p))
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A `batchforge serve` child.
struct Server {
    child: Child,
    base: String,
    started: Instant,
}

impl Server {
    fn start(dir: &Path, extra: &[String]) -> Result<Server> {
        let url = format!("sqlite://{}", dir.join("bench.db").display());
        Self::start_on(dir, &url, "server.log", extra)
    }

    fn start_on(dir: &Path, url: &str, log_name: &str, extra: &[String]) -> Result<Server> {
        let log = std::fs::File::create(dir.join(log_name))?;
        let started = Instant::now();
        let binary = match SERVER_BINARY.get() {
            Some(b) => b.clone(),
            None => std::env::current_exe()?,
        };
        let mut child = Command::new(binary)
            .arg("serve")
            .args(["--bind", "127.0.0.1:0", "--noop-processor"])
            .arg("--database-url")
            .arg(url)
            .arg("--workspace")
            .arg(dir.join("ws"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(setup)?;
        let base = line
            .trim()
            .strip_prefix("batchforge listening on ")
            .ok_or_else(|| {
                setup(format!(
                    "server did not start (see {}): {line:?}",
                    dir.join(log_name).display()
                ))
            })?
            .to_string();
        Ok(Server {
            child,
            base,
            started,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stop(mut self) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> awc::Client {
    awc::Client::builder()
        .timeout(Duration::from_secs(300))
        .finish()
}

async fn call(
    client: &awc::Client,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value> {
    let req = match method {
        "POST" => client.post(url),
        _ => client.get(url),
    };
    let mut resp = match body {
        Some(b) => req.send_json(b).await,
        None => req.send().await,
    }
    .map_err(|e| setup(format!("{method} {url}: {e}")))?;
    let bytes = resp
        .body()
        .limit(1 << 30)
        .await
        .map_err(|e| setup(format!("{method} {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(setup(format!(
            "{method} {url} answered {}: {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        )));
    }
    serde_json::from_slice(&bytes).map_err(setup)
}

/// Writes a job of `n` no-op items straight into the store, `abandoned` of them claimed by
/// a node that no longer exists. Returns the job id.
fn prefill(dir: &Path, n: usize, parallel: u32, abandoned: usize) -> Result<String> {
    let store = Store::open(&DatabaseUrl::Sqlite(dir.join("bench.db")))?;
    let job = NewJob {
        kind: noop::KIND.into(),
        spec: json!({"parallel": parallel}),
        parallel,
        metadata: json!({}),
        items: (0..n)
            .map(|i| NewItem::new(i.to_string(), json!({})))
            .collect(),
        schedule: Default::default(),
    };
    let id = new_job_id(noop::KIND);
    let job_id = id.clone();
    store.write_blocking(move |conn| {
        store::jobs::insert_job(conn, &job_id, &job, now())?;
        if abandoned > 0 {
            store::items::claim_items(
                conn,
                &job_id,
                abandoned as u32,
                "killed-node",
                now(),
                30.0,
                true,
            )?;
        }
        Ok(())
    })?;
    store.checkpoint_blocking()?;
    Ok(id)
}

/// p50 and p99 of a set of durations, in milliseconds.
fn percentiles(samples: &mut [Duration]) -> (f64, f64) {
    if samples.is_empty() {
        return (0.0, 0.0);
    }
    samples.sort_unstable();
    let at = |q: f64| {
        let i = ((samples.len() as f64 * q).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

fn table(title: &str, params: &str, rows: &[(&str, String, &str)]) {
    println!("## {title}");
    println!("parameters: {params}");
    println!("| metric | value | target |");
    println!("|---|---|---|");
    for (metric, value, target) in rows {
        println!("| {metric} | {value} | {target} |");
    }
}

fn concurrency_args(args: &BenchArgs) -> Vec<String> {
    args.concurrency
        .map(|c| vec!["--concurrency".to_string(), c.to_string()])
        .unwrap_or_default()
}

async fn burn_down(args: &BenchArgs, dir: &Path) -> Result<()> {
    let id = prefill(dir, args.items, args.parallel, 0)?;
    let server = Server::start(dir, &concurrency_args(args))?;
    let client = client();
    let url = format!("{}/batch/jobs/{id}", server.base);
    let t0 = Instant::now();
    let mut latencies = Vec::new();
    let job = loop {
        let sent = Instant::now();
        let job = call(&client, "GET", &url, None).await?;
        if job["status"] == "completed" {
            break job;
        }
        latencies.push(sent.elapsed());
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(setup("burn-down did not finish in 30 minutes"));
        }
    };
    let observed = t0.elapsed().as_secs_f64();
    let engine =
        job["completed_at"].as_f64().unwrap_or(0.0) - job["started_at"].as_f64().unwrap_or(0.0);
    let ok = job["result"]["summary"]["successful"].as_u64().unwrap_or(0);
    server.stop()?;
    if ok != args.items as u64 {
        return Err(setup(format!(
            "only {ok} of {} items succeeded",
            args.items
        )));
    }
    let (p50, p99) = percentiles(&mut latencies);
    table(
        "Burn-down and read path",
        &format!(
            "{} no-op items queued before start, parallel {}, one client polling GET /batch/jobs/{{id}} back to back",
            args.items, args.parallel
        ),
        &[
            ("first claim → last commit (server timestamps)", format!("{engine:.2} s"), ""),
            ("items/s (server timestamps)", format!("{:.0}", args.items as f64 / engine), "≥ 50,000"),
            ("items/s (observed by the client, incl. startup)", format!("{:.0}", args.items as f64 / observed), ""),
            ("GET /batch/jobs/{id} during the run: requests", latencies.len().to_string(), ""),
            ("GET p50", format!("{p50:.2} ms"), ""),
            ("GET p99", format!("{p99:.2} ms"), "< 20 ms"),
        ],
    );
    Ok(())
}

async fn small_jobs(args: &BenchArgs, dir: &Path) -> Result<()> {
    let server = Server::start(dir, &concurrency_args(args))?;
    let base = server.base.clone();
    let per_client = args.jobs.div_ceil(args.clients.max(1));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients.max(1) {
        let base = base.clone();
        let n = per_client.min(args.jobs.saturating_sub(c * per_client));
        tasks.push(actix_web::rt::spawn(async move {
            let client = client();
            let body = json!({"type": noop::KIND, "items": [{}]});
            let mut latencies = Vec::with_capacity(n);
            for _ in 0..n {
                let sent = Instant::now();
                call(&client, "POST", &format!("{base}/batch/jobs"), Some(&body)).await?;
                latencies.push(sent.elapsed());
            }
            Ok::<_, BenchError>(latencies)
        }));
    }
    let mut latencies = Vec::with_capacity(args.jobs);
    for t in tasks {
        latencies.extend(t.await.map_err(setup)??);
    }
    let submitted = t0.elapsed().as_secs_f64();
    let client = client();
    loop {
        let stats = call(&client, "GET", &format!("{base}/batch/stats"), None).await?;
        if stats["stats"]["completed"].as_u64() == Some(latencies.len() as u64) {
            break;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(setup("small jobs did not finish in 30 minutes"));
        }
        // Counting jobs per status scans the jobs table: poll gently, not to load the
        // server being measured.
        actix_web::rt::time::sleep(Duration::from_millis(25)).await;
    }
    let all = t0.elapsed().as_secs_f64();
    server.stop()?;
    let (p50, p99) = percentiles(&mut latencies);
    table(
        "Many small jobs over HTTP",
        &format!(
            "{} single-item no-op jobs, POST /batch/jobs from {} concurrent clients, then GET /batch/stats until all completed",
            latencies.len(),
            args.clients
        ),
        &[
            ("all submitted", format!("{submitted:.2} s"), ""),
            ("all completed", format!("{all:.2} s"), ""),
            ("jobs/s end to end", format!("{:.0}", latencies.len() as f64 / all), "≥ 5,000"),
            ("submit p50", format!("{p50:.2} ms"), ""),
            ("submit p99", format!("{p99:.2} ms"), ""),
        ],
    );
    Ok(())
}

async fn commands(args: &BenchArgs, dir: &Path) -> Result<()> {
    let p = cores();
    std::fs::write(dir.join("ws").join("f"), "")?;
    // Unsandboxed, as xargs is: the sandbox's cost is the pairing's table.
    let server = Server::start(
        dir,
        &[
            "--concurrency".to_string(),
            p.to_string(),
            "--sandbox".to_string(),
            "none".to_string(),
        ],
    )?;
    let client = client();
    let targets: Vec<Value> = (0..args.commands)
        .map(|i| json!({"id": i.to_string(), "path": "f"}))
        .collect();
    let t0 = Instant::now();
    let job = call(
        &client,
        "POST",
        &format!("{}/batch/validation", server.base),
        Some(&json!({"targets": targets, "check_command": "true", "parallel": p})),
    )
    .await?;
    let url = format!(
        "{}/batch/jobs/{}",
        server.base,
        job["job_id"].as_str().unwrap_or_default()
    );
    let job = loop {
        let job = call(&client, "GET", &url, None).await?;
        if job["status"] == "completed" {
            break job;
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    };
    let engine = t0.elapsed().as_secs_f64();
    server.stop()?;
    let ok = job["result"]["summary"]["successful"].as_u64().unwrap_or(0);
    if ok != args.commands as u64 {
        return Err(setup(format!(
            "only {ok} of {} commands passed",
            args.commands
        )));
    }
    let t1 = Instant::now();
    let mut xargs = Command::new("xargs")
        .args(["-P", &p.to_string(), "-n1", "true"])
        .stdin(Stdio::piped())
        .spawn()?;
    {
        use std::io::Write;
        let mut stdin = xargs.stdin.take().expect("piped");
        for _ in 0..args.commands {
            stdin.write_all(b"f\n")?;
        }
    }
    if !xargs.wait()?.success() {
        return Err(setup("xargs failed"));
    }
    let xargs = t1.elapsed().as_secs_f64();
    table(
        "Commands against xargs -P",
        &format!(
            "{} validation items `true f`, parallel = concurrency = {p} (cores), `--sandbox none`; `xargs -P {p} -n1 true` on the same arguments",
            args.commands
        ),
        &[
            ("batchforge submit → completed", format!("{engine:.2} s ({:.0} items/s)", args.commands as f64 / engine), ""),
            ("xargs -P", format!("{xargs:.2} s ({:.0} items/s)", args.commands as f64 / xargs), ""),
            ("ratio", format!("{:.2}", engine / xargs), "≤ 1.3"),
        ],
    );
    sandbox::pairing(args, dir).await
}

/// Runs one `batch_mcp` job to completion; returns it and the wall time from submit.
async fn mcp_job(
    client: &awc::Client,
    base: &str,
    operations: Vec<Value>,
    parallel: u32,
) -> Result<(Value, f64)> {
    let t0 = Instant::now();
    let job = call(
        client,
        "POST",
        &format!("{base}/batch/mcp-operations"),
        Some(&json!({"operations": operations, "parallel": parallel})),
    )
    .await?;
    let url = format!(
        "{base}/batch/jobs/{}",
        job["job_id"].as_str().unwrap_or_default()
    );
    loop {
        let job = call(client, "GET", &url, None).await?;
        if job["status"] == "completed" && !job["result"].is_null() {
            return Ok((job, t0.elapsed().as_secs_f64()));
        }
        if matches!(
            job["status"].as_str(),
            Some("failed" | "cancelled" | "expired")
        ) {
            return Err(setup(format!("the MCP job ended {}", job["status"])));
        }
        actix_web::rt::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn mcp(args: &BenchArgs, dir: &Path) -> Result<()> {
    let (n, p) = (args.mcp_operations, args.mcp_parallel);
    let ws = dir.join("ws");
    std::fs::create_dir_all(ws.join("in"))?;
    for i in 0..100 {
        std::fs::write(ws.join(format!("in/{i}.txt")), format!("input {i}\n"))?;
    }
    let server = Server::start(dir, &[])?;
    let client = client();
    let op = |i: usize| match i % 3 {
        0 => json!({"type": "read", "path": format!("in/{}.txt", i % 100)}),
        1 => {
            json!({"type": "write", "path": format!("out/{}.txt", i % 1000), "content": format!("output {i}\n")})
        }
        _ => json!({"type": "list", "path": "in"}),
    };
    // The first job starts the `p` server processes; the measured one finds them pooled.
    let (_, cold) = mcp_job(&client, &server.base, (0..p as usize).map(op).collect(), p).await?;
    let (job, wall) = mcp_job(&client, &server.base, (0..n).map(op).collect(), p).await?;
    server.stop()?;
    let ok = job["result"]["summary"]["successful"].as_u64().unwrap_or(0);
    if ok != n as u64 {
        return Err(setup(format!(
            "only {ok} of {n} MCP operations succeeded: {}",
            job["result"]["results"]
                .as_array()
                .and_then(|r| r.iter().find(|r| r["status"] != "success"))
                .unwrap_or(&Value::Null)
        )));
    }
    let span =
        job["completed_at"].as_f64().unwrap_or(0.0) - job["started_at"].as_f64().unwrap_or(0.0);
    table(
        "MCP operations through batchforge's own server",
        &format!(
            "{n} operations (1/3 read of 100 small files, 1/3 write, 1/3 list of a 100-entry directory), parallel = {p} pooled stdio sessions of `batchforge mcp-server`, started by a {p}-operation warm-up job"
        ),
        &[
            ("warm-up job (starts the servers)", format!("{cold:.2} s"), ""),
            ("submit → completed", format!("{wall:.2} s ({:.0} operations/s)", n as f64 / wall), "Python original: 10–50 operations/s"),
            ("operations/s (server timestamps)", format!("{:.0}", n as f64 / span.max(1e-9)), ""),
        ],
    );
    Ok(())
}

/// Resident set size and its peak, in MiB, of a process.
/// A PostgreSQL database created for one run and dropped after it.
struct PgDatabase {
    server: String,
    name: String,
}

impl PgDatabase {
    fn create(server: &str) -> Result<PgDatabase> {
        let name = format!("batchforge_bench_{}", std::process::id());
        let db = PgDatabase {
            server: server.trim_end_matches('/').to_string(),
            name,
        };
        databases::recreate_postgres_database(&db.server, &db.name)
            .map_err(|e| db.setup_error(e))?;
        Ok(db)
    }

    fn url(&self) -> String {
        format!("{}/{}", self.server, self.name)
    }

    fn setup_error(&self, e: databases::ServerError) -> BenchError {
        match e {
            databases::ServerError::Connect(e) => setup(format!(
                "no PostgreSQL at {} ({e}); see --pg-url",
                self.server
            )),
            databases::ServerError::Statement(e) => setup(e),
        }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = databases::drop_postgres_database(&self.server, &self.name);
    }
}

/// Burns one batch down with `nodes` nodes on a fresh PostgreSQL database: `(items/s by
/// server timestamps, each node's share)`.
async fn cluster_run(
    args: &BenchArgs,
    dir: &Path,
    nodes: usize,
    items: usize,
    sleep_ms: Option<u64>,
    parallel: u32,
) -> Result<(f64, Vec<usize>)> {
    let db = PgDatabase::create(&args.pg_url)?;
    let mut servers = Vec::new();
    for n in 0..nodes {
        servers.push(Server::start_on(
            dir,
            &db.url(),
            &format!("node{n}.log"),
            &concurrency_args(args),
        )?);
    }
    let client = client();
    let batch: Vec<Value> = (0..items)
        .map(|i| match sleep_ms {
            Some(ms) => json!({"key": format!("i{i}"), "sleep_ms": ms}),
            None => json!({"key": format!("i{i}")}),
        })
        .collect();
    let body = json!({"type": "noop", "items": batch, "parallel": parallel});
    let job = call(
        &client,
        "POST",
        &format!("{}/batch/jobs", servers[0].base),
        Some(&body),
    )
    .await?;
    let id = job["job_id"].as_str().unwrap_or_default().to_string();
    let t0 = Instant::now();
    let job = loop {
        let job = call(
            &client,
            "GET",
            &format!("{}/batch/jobs/{id}", servers[0].base),
            None,
        )
        .await?;
        if job["status"] == "completed" {
            break job;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(setup("the cluster run did not finish in 30 minutes"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let ok = job["result"]["summary"]["successful"].as_u64().unwrap_or(0);
    if ok != items as u64 {
        return Err(setup(format!("only {ok} of {items} items succeeded")));
    }
    let engine =
        job["completed_at"].as_f64().unwrap_or(0.0) - job["started_at"].as_f64().unwrap_or(0.0);
    // Each node's share, from the node recorded on every item.
    let mut by_node: HashMap<String, usize> = HashMap::new();
    let mut offset = 0;
    loop {
        let page = call(
            &client,
            "GET",
            &format!(
                "{}/batch/jobs/{id}/items?limit=1000&offset={offset}",
                servers[0].base
            ),
            None,
        )
        .await?;
        let got = page["items"].as_array().cloned().unwrap_or_default();
        if got.is_empty() {
            break;
        }
        offset += got.len();
        for item in got {
            *by_node
                .entry(item["node"].as_str().unwrap_or("none").to_string())
                .or_default() += 1;
        }
    }
    for server in servers {
        server.stop()?;
    }
    let mut shares: Vec<usize> = by_node.into_values().collect();
    shares.sort_unstable_by(|a, b| b.cmp(a));
    Ok((items as f64 / engine, shares))
}

async fn cluster(args: &BenchArgs, dir: &Path) -> Result<()> {
    let mut rows = Vec::new();
    let work = args.cluster_sleep_ms;
    for (label, items, sleep, parallel) in [
        ("no-op items", args.cluster_items, None, args.parallel),
        ("items waiting", args.cluster_work_items, Some(work), 32),
    ] {
        for nodes in [1, 3] {
            let (rate, shares) = cluster_run(args, dir, nodes, items, sleep, parallel).await?;
            let what = match sleep {
                Some(ms) => format!("{label} {ms} ms, parallel {parallel} per node"),
                None => format!("{label}, parallel {parallel} per node"),
            };
            rows.push((
                format!("{items} {what}: {nodes} node(s), items/s"),
                format!("{rate:.0}"),
                format!("shares {shares:?}"),
            ));
        }
    }
    let rows: Vec<(&str, String, &str)> = rows
        .iter()
        .map(|(m, v, t)| (m.as_str(), v.clone(), t.as_str()))
        .collect();
    table(
        "PostgreSQL: one batch, 1 node vs 3 nodes on one database",
        &format!(
            "{} on the same machine as the nodes; items/s by server timestamps (first claim → last commit); the third column is each node's share of the items",
            args.pg_url
        ),
        &rows,
    );
    Ok(())
}

fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn db_size_mib(dir: &Path) -> f64 {
    ["bench.db", "bench.db-wal", "bench.db-shm"]
        .iter()
        .filter_map(|f| std::fs::metadata(dir.join(f)).ok())
        .map(|m| m.len() as f64 / (1024.0 * 1024.0))
        .sum()
}

async fn footprint(args: &BenchArgs, dir: &Path) -> Result<()> {
    let t_fill = Instant::now();
    let id = prefill(dir, args.footprint_items, args.parallel, args.abandoned)?;
    let fill = t_fill.elapsed().as_secs_f64();
    let db_queued = db_size_mib(dir);
    let spawned_at = now();
    let server = Server::start(dir, &concurrency_args(args))?;
    let client = client();
    let url = format!("{}/batch/jobs/{id}", server.base);
    let mut first_commit = None;
    let mut peak_running = 0.0f64;
    let job = loop {
        let job = call(&client, "GET", &url, None).await?;
        if first_commit.is_none() && job["metadata"]["progress"]["processed"].as_u64() >= Some(1) {
            first_commit = Some(server.started.elapsed().as_secs_f64());
        }
        if job["status"] == "completed" {
            break job;
        }
        if let Some((rss, _)) = rss_mib(server.pid()) {
            peak_running = peak_running.max(rss);
        }
        actix_web::rt::time::sleep(Duration::from_millis(5)).await;
    };
    let (_, peak_all) = rss_mib(server.pid()).unwrap_or((0.0, 0.0));
    // The job's own `started_at` dates from the prefill's abandoned claims, so the run is
    // timed from the server's spawn instead (it includes start-up and recovery).
    let engine = job["completed_at"].as_f64().unwrap_or(0.0) - spawned_at;
    let ok = job["result"]["summary"]["successful"].as_u64().unwrap_or(0);
    server.stop()?;
    if ok != args.footprint_items as u64 {
        return Err(setup(format!(
            "only {ok} of {} items succeeded",
            args.footprint_items
        )));
    }
    table(
        "Footprint and restart",
        &format!(
            "{} no-op items written to the store ({:.1} s), {} of them left `running` by a dead node, then `batchforge serve` started on it",
            args.footprint_items, fill, args.abandoned
        ),
        &[
            ("process start → first item committed", format!("{:.2} s", first_commit.unwrap_or(f64::NAN)), "< 2 s (to first claim)"),
            ("peak RSS while the items were queued and running", format!("{peak_running:.1} MiB"), "< 100 MB"),
            ("peak RSS including finalization (VmHWM)", format!("{peak_all:.1} MiB"), ""),
            ("database with the items queued", format!("{db_queued:.1} MiB"), ""),
            ("database after completion", format!("{:.1} MiB", db_size_mib(dir)), ""),
            ("server spawn → last commit of the million", format!("{engine:.1} s ({:.0} items/s)", args.footprint_items as f64 / engine), ""),
        ],
    );
    Ok(())
}

/// Submits `n` no-op items in one JSONL request, generated as it is sent (the bench's
/// own memory stays small), and answers the job id.
async fn submit_jsonl(base: &str, n: usize, parallel: u32) -> Result<String> {
    const LINES: usize = 10_000;
    let chunks = futures_util::stream::iter((0..n.div_ceil(LINES)).map(move |c| {
        let mut chunk = String::with_capacity(LINES * 24);
        for i in c * LINES..((c + 1) * LINES).min(n) {
            chunk.push_str(&format!("{{\"custom_id\":\"{i}\"}}\n"));
        }
        Ok::<_, std::io::Error>(actix_web::web::Bytes::from(chunk))
    }));
    let url = format!("{base}/batch/jobs?type={}&parallel={parallel}", noop::KIND);
    let mut resp = client()
        .post(&url)
        .insert_header(("content-type", "application/x-ndjson"))
        .send_stream(chunks)
        .await
        .map_err(|e| setup(format!("POST {url}: {e}")))?;
    let bytes = resp
        .body()
        .limit(1 << 30)
        .await
        .map_err(|e| setup(format!("POST {url}: {e}")))?;
    if !resp.status().is_success() {
        return Err(setup(format!(
            "POST {url} answered {}: {}",
            resp.status(),
            String::from_utf8_lossy(&bytes)
        )));
    }
    let job: Value = serde_json::from_slice(&bytes).map_err(setup)?;
    job["job_id"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| setup("the submission answered no job_id"))
}

/// Polls `/batch/stats` (a count, so the poll itself holds no job result) until `done`
/// jobs are completed, sampling the server's RSS; answers the largest sample.
async fn wait_completed(server: &Server, done: u64) -> Result<f64> {
    let client = client();
    let t0 = Instant::now();
    let mut peak = 0.0f64;
    loop {
        if let Some((rss, _)) = rss_mib(server.pid()) {
            peak = peak.max(rss);
        }
        let stats = call(
            &client,
            "GET",
            &format!("{}/batch/stats", server.base),
            None,
        )
        .await?;
        if stats["stats"]["completed"].as_u64() >= Some(done) {
            return Ok(peak);
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            return Err(setup("the memory job did not finish in 30 minutes"));
        }
        actix_web::rt::time::sleep(Duration::from_millis(20)).await;
    }
}

/// RSS after a job: sampled for a bounded settle (allocators give memory back lazily),
/// answering the last sample.
async fn settled_rss(server: &Server) -> f64 {
    let mut last = 0.0;
    for _ in 0..30 {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        last = rss_mib(server.pid()).map_or(last, |(rss, _)| rss);
    }
    last
}

async fn memory(args: &BenchArgs, dir: &Path) -> Result<()> {
    let n = args.memory_items;
    let server = Server::start(dir, &concurrency_args(args))?;
    let (start, _) = rss_mib(server.pid()).unwrap_or((0.0, 0.0));
    let mut rows = vec![("RSS at start".to_string(), format!("{start:.1} MiB"), "")];
    for run in 1..=2u64 {
        // The submission itself is where the peak was: sample while it is sent too.
        let sampled = std::rc::Rc::new(std::cell::Cell::new(0.0f64));
        let sampler = {
            let pid = server.pid();
            let sampled = sampled.clone();
            actix_web::rt::spawn(async move {
                while let Some((rss, _)) = rss_mib(pid) {
                    sampled.set(sampled.get().max(rss));
                    actix_web::rt::time::sleep(Duration::from_millis(10)).await;
                }
            })
        };
        let t0 = Instant::now();
        submit_jsonl(&server.base, n, args.parallel).await?;
        let submitted = t0.elapsed().as_secs_f64();
        let running_peak = wait_completed(&server, run).await?.max(sampled.get());
        sampler.abort();
        let (_, hwm) = rss_mib(server.pid()).unwrap_or((0.0, 0.0));
        let after = settled_rss(&server).await;
        rows.push((
            format!("job {run}: submission answered"),
            format!("{submitted:.1} s"),
            "",
        ));
        rows.push((
            format!("job {run}: peak RSS (VmHWM, whole process so far)"),
            format!("{hwm:.1} MiB"),
            "< 300 MB",
        ));
        rows.push((
            format!("job {run}: largest RSS sample (10 ms) from its submission to its completion"),
            format!("{running_peak:.1} MiB"),
            "",
        ));
        rows.push((
            format!("job {run}: RSS 3 s after it completed"),
            format!("{after:.1} MiB"),
            "< 100 MB",
        ));
    }
    server.stop()?;
    let rows: Vec<(&str, String, &str)> = rows
        .iter()
        .map(|(m, v, t)| (m.as_str(), v.clone(), *t))
        .collect();
    table(
        "Memory of a large submission",
        &format!(
            "{n} no-op items in one POST /batch/jobs (JSONL, streamed), parallel {}, then a second such job; fresh SQLite file",
            args.parallel
        ),
        &rows,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let mut v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let (p50, p99) = percentiles(&mut v);
        assert_eq!(p50, 50.0);
        assert_eq!(p99, 99.0);
        assert_eq!(percentiles(&mut []), (0.0, 0.0));
    }
}
