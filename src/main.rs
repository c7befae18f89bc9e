//! The `batchforge` binary: a thin command line over the library.

use batchforge::{Application, EngineConfig, ServeConfig};
use clap::{Parser, Subcommand};
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

/// An actor-based, durable batch job engine for coding-agent workloads.
#[derive(Parser)]
#[command(name = "batchforge", version, about)]
struct Cli {
    #[command(flatten)]
    client: batchforge::client::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and its REST API.
    Serve(ServeArgs),
    /// Measure the engine: runs `batchforge serve` children and prints a table per scenario.
    Bench(batchforge::bench::BenchArgs),
    #[command(flatten)]
    Client(batchforge::client::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Database URL (sqlite://PATH). Falls back to DATABASE_URL, then sqlite://data/batch_jobs.db.
    #[arg(long, env = "BATCHFORGE_DATABASE_URL")]
    database_url: Option<String>,
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, env = "BATCHFORGE_BIND", default_value = "127.0.0.1:8000")]
    bind: String,
    /// Workspace root: command targets must lie inside it.
    #[arg(long, env = "BATCHFORGE_WORKSPACE", default_value = ".")]
    workspace: PathBuf,
    /// Items of one kind running at once, for every kind not set by --kind-concurrency.
    #[arg(long, env = "BATCHFORGE_CONCURRENCY", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    concurrency: Option<u32>,
    /// Per-kind limit, KIND=N; repeat the flag or separate with commas.
    #[arg(long, env = "BATCHFORGE_KIND_CONCURRENCY", value_delimiter = ',', value_parser = parse_kind_limit)]
    kind_concurrency: Vec<(String, usize)>,
    /// Seconds running items may finish after SIGINT/SIGTERM before they are stopped and requeued.
    #[arg(long, env = "BATCHFORGE_SHUTDOWN_GRACE", default_value_t = 10.0)]
    shutdown_grace: f64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "BATCHFORGE_HTTP_WORKERS")]
    http_workers: Option<usize>,
    /// Also register the `noop` kind, whose items succeed at once (benchmarks, smoke tests).
    #[arg(long)]
    noop_processor: bool,
}

fn parse_kind_limit(s: &str) -> Result<(String, usize), String> {
    let (kind, n) = s
        .split_once('=')
        .ok_or_else(|| format!("'{s}': expected KIND=N"))?;
    let n: usize = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n >= 1)
        .ok_or_else(|| format!("'{s}': N must be a positive integer"))?;
    Ok((kind.trim().to_string(), n))
}

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Client(command) => batchforge::client::run(cli.client, command),
        Command::Bench(args) => match batchforge::bench::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

fn serve(args: ServeArgs) -> std::process::ExitCode {
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        eprintln!("error: --shutdown-grace must be a non-negative number of seconds");
        return std::process::ExitCode::from(2);
    }
    let database_url = args
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(batchforge::engine::default_database_url);
    let config = ServeConfig {
        engine: EngineConfig {
            database_url,
            workspace: args.workspace,
            default_concurrency: args.concurrency.map(|n| n as usize),
            kind_concurrency: args.kind_concurrency.into_iter().collect::<HashMap<_, _>>(),
            builtin_processors: true,
        },
        bind: args.bind,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        http_workers: args.http_workers,
    };
    let noop = args.noop_processor;
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build_with(config, |b| {
            if noop {
                b.processor(batchforge::processors::noop::Noop)
            } else {
                b
            }
        })
        .await?;
        let bind_host = app.port();
        println!("batchforge listening on http://127.0.0.1:{bind_host}");
        let _ = std::io::stdout().flush();
        app.run_until_stopped()
            .await
            .map_err(|e| batchforge::StartError::Config(e.to_string()))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
