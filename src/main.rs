//! The `batchforge` binary: a thin command line over the library.

mod cli;

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
    client: cli::client::ClientArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine and its REST API.
    Serve(Box<ServeArgs>),
    /// Measure the engine: runs `batchforge serve` children and prints a table per scenario.
    Bench(cli::bench::BenchArgs),
    /// Serve batchforge's sandboxed filesystem tools over MCP on stdin/stdout.
    McpServer(batchforge::mcp::server::ServerArgs),
    #[command(flatten)]
    Client(cli::client::ClientCommand),
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Database URL: sqlite://PATH, or postgres://USER@HOST:PORT/DB for several nodes
    /// sharing one queue. Falls back to DATABASE_URL, then sqlite://data/batch_jobs.db.
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
    /// A concurrency group, NAME=N: jobs with `concurrency_group: NAME`, of any kind, run at
    /// most N items at once between them. Repeat the flag or separate with commas.
    #[arg(long, env = "BATCHFORGE_CONCURRENCY_GROUPS", value_delimiter = ',', value_parser = parse_kind_limit)]
    concurrency_group: Vec<(String, usize)>,
    /// Seconds running items may finish after SIGINT/SIGTERM before they are stopped and requeued.
    #[arg(long, env = "BATCHFORGE_SHUTDOWN_GRACE", default_value_t = 10.0)]
    shutdown_grace: f64,
    /// HTTP worker threads (default: one per core).
    #[arg(long, env = "BATCHFORGE_HTTP_WORKERS")]
    http_workers: Option<usize>,
    /// Also register the `noop` kind, whose items succeed at once (benchmarks, smoke tests).
    #[arg(long)]
    noop_processor: bool,
    /// An MCP server `batch_mcp` jobs may name: NAME=COMMAND [ARGS…] (stdio) or NAME=URL
    /// (streamable HTTP). Repeat the flag for more.
    #[arg(long = "mcp-server", value_name = "NAME=COMMAND|URL", value_parser = batchforge::mcp::parse_server_flag)]
    mcp_servers: Vec<batchforge::mcp::McpServerConfig>,
    /// JSON file of MCP servers: {"mcpServers": {NAME: {"command", "args", "env"} | {"url"}}, "defaultServer": NAME}.
    #[arg(long, env = "BATCHFORGE_MCP_CONFIG")]
    mcp_config: Option<PathBuf>,
    /// The MCP server a job uses when it names none (default: the built-in `batchforge`).
    #[arg(long, env = "BATCHFORGE_MCP_DEFAULT")]
    mcp_default: Option<String>,
    /// Run the built-in MCP server read-only (no write_file, no run_command).
    #[arg(long, env = "BATCHFORGE_MCP_READ_ONLY")]
    mcp_read_only: bool,
    /// LLM server of `batch_agent_tasks`. Falls back to OLLAMA_HOST, then http://127.0.0.1:11434.
    #[arg(long, env = "BATCHFORGE_LLM_URL")]
    llm_url: Option<String>,
    /// Protocol of the LLM server: auto (asked at first contact), ollama (/api/chat) or
    /// openai (/v1/chat/completions).
    #[arg(long, env = "BATCHFORGE_LLM_API", default_value = "auto", value_parser = parse_llm_api)]
    llm_api: batchforge::agent::LlmApi,
    /// Chat requests in flight at once per LLM endpoint, across all jobs.
    #[arg(long, env = "BATCHFORGE_LLM_CONCURRENCY", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    llm_concurrency: u32,
    /// Seconds one LLM request may take (a job may set llm_timeout_seconds).
    #[arg(long, env = "BATCHFORGE_LLM_TIMEOUT", default_value_t = 600.0)]
    llm_timeout: f64,
    /// Route `batch_llm` requests by model: MODEL_GLOB=URL[,api=openai|ollama]; repeat the
    /// flag, first match wins; other models go to --llm-url.
    #[arg(long = "llm-route", value_name = "MODEL_GLOB=URL[,api=…]", value_parser = batchforge::processors::llm_batch::parse_route)]
    llm_routes: Vec<batchforge::processors::llm_batch::LlmRoute>,
    /// Rate-limit LLM requests of every LLM kind: URL_OR_MODEL=rpm:N,tpm:N[,window:5s]
    /// (a key with :// is an endpoint, else a model glob); repeat the flag, or separate
    /// limits with ';' in BATCHFORGE_LLM_LIMITS.
    #[arg(long = "llm-limit", env = "BATCHFORGE_LLM_LIMITS", value_delimiter = ';', value_name = "URL_OR_MODEL=rpm:N,tpm:N", value_parser = batchforge::agent::ratelimit::parse_limit)]
    llm_limits: Vec<batchforge::agent::ratelimit::LlmLimit>,
    /// Bearer token for the LLM server (vLLM --api-key, hosted OpenAI-compatible APIs).
    #[arg(long, env = "BATCHFORGE_LLM_API_KEY", hide_env_values = true)]
    llm_api_key: Option<String>,
    /// Sign `callback_url` webhooks with HMAC-SHA256 under this secret
    /// (X-Batchforge-Timestamp, X-Batchforge-Signature headers).
    #[arg(long, env = "BATCHFORGE_WEBHOOK_SECRET", hide_env_values = true)]
    webhook_secret: Option<String>,
    /// Let `callback_url` webhooks go to loopback, private, link-local and other internal
    /// addresses (refused by default: submitters could reach internal services).
    #[arg(long, env = "BATCHFORGE_WEBHOOK_ALLOW_PRIVATE")]
    webhook_allow_private: bool,
    /// A token that may only read (GET): REST reads, events, exports, metrics. Repeat the
    /// flag or separate with commas. (`--token`, before or after `serve`, grants everything.)
    #[arg(
        long = "read-token",
        env = "BATCHFORGE_READ_TOKEN",
        value_delimiter = ',',
        hide_env_values = true
    )]
    read_tokens: Vec<String>,
    /// Read full-access tokens from a file, one a line, so none is on the command line.
    #[arg(long, env = "BATCHFORGE_TOKEN_FILE")]
    token_file: Option<PathBuf>,
    /// Read read-only tokens from a file, one a line.
    #[arg(long, env = "BATCHFORGE_READ_TOKEN_FILE")]
    read_token_file: Option<PathBuf>,
    /// Listen on a non-loopback address without any token (refused otherwise): anyone who
    /// reaches it can run commands as this user.
    #[arg(long, env = "BATCHFORGE_ALLOW_UNAUTHENTICATED")]
    allow_unauthenticated: bool,
    /// An origin (`https://app.example`) whose pages may call the API; requests from other
    /// sites' pages are refused. Repeat the flag or separate with commas.
    #[arg(
        long = "allowed-origin",
        env = "BATCHFORGE_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,
    /// A host name the server may be reached by (`build.example`), besides loopback and the
    /// address it listens on; other `Host` headers are refused (DNS rebinding). Repeatable.
    #[arg(
        long = "allowed-host",
        env = "BATCHFORGE_ALLOWED_HOSTS",
        value_delimiter = ','
    )]
    allowed_hosts: Vec<String>,
    /// Serve HTTPS with this PEM certificate chain (leaf first); needs --tls-key. With a
    /// token, the safe way to listen beyond loopback without a TLS proxy in front.
    #[arg(long, env = "BATCHFORGE_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "BATCHFORGE_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// Delete finished jobs (with their items) this long after they finished: 7d, 12h,
    /// 30m, 45s. Default: keep them.
    #[arg(long, env = "BATCHFORGE_RETENTION", value_parser = batchforge::services::retention::parse_duration)]
    retention: Option<Duration>,
    /// PostgreSQL: how often this node heartbeats, renews the leases of its running
    /// items and looks for dead nodes (2s, 500ms… as 0.5s).
    #[arg(long, env = "BATCHFORGE_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = batchforge::services::retention::parse_duration)]
    heartbeat_interval: Duration,
    /// PostgreSQL: a node silent this long is dead and its running items are rescued by
    /// the others. At least twice the heartbeat interval.
    #[arg(long, env = "BATCHFORGE_NODE_TIMEOUT", default_value = "10s", value_parser = batchforge::services::retention::parse_duration)]
    node_timeout: Duration,
    /// How commands are isolated: auto (the default: bubblewrap when a probe at start
    /// works, else none with a warning), bwrap (or refuse to start), none.
    #[arg(long, env = "BATCHFORGE_SANDBOX", default_value = "auto")]
    sandbox: batchforge::sandbox::SandboxMode,
    /// A path sandboxed commands may read (bound read-only, even inside the hidden
    /// $HOME), besides the tool roots found on PATH. Repeat the flag, or separate with ':'.
    #[arg(
        long = "sandbox-ro-path",
        env = "BATCHFORGE_SANDBOX_RO_PATHS",
        value_delimiter = ':'
    )]
    sandbox_ro_paths: Vec<PathBuf>,
    /// Default `memory_mb` of every command whose job sets none: address space in MiB (RLIMIT_AS).
    #[arg(long = "sandbox-memory-mb", env = "BATCHFORGE_SANDBOX_MEMORY_MB", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_memory_mb: Option<u64>,
    /// The most `memory_mb` a job may ask for (a job asking more is refused).
    #[arg(long = "sandbox-limit-memory-mb", env = "BATCHFORGE_SANDBOX_LIMIT_MEMORY_MB", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_limit_memory_mb: Option<u64>,
    /// Default `cpu_seconds` of every command whose job sets none: CPU seconds (RLIMIT_CPU).
    #[arg(long = "sandbox-cpu-seconds", env = "BATCHFORGE_SANDBOX_CPU_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_cpu_seconds: Option<u64>,
    /// The most `cpu_seconds` a job may ask for (a job asking more is refused).
    #[arg(long = "sandbox-limit-cpu-seconds", env = "BATCHFORGE_SANDBOX_LIMIT_CPU_SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_limit_cpu_seconds: Option<u64>,
    /// Default `max_processes` of every command whose job sets none: processes at once.
    #[arg(long = "sandbox-max-processes", env = "BATCHFORGE_SANDBOX_MAX_PROCESSES", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_max_processes: Option<u64>,
    /// The most `max_processes` a job may ask for (a job asking more is refused).
    #[arg(long = "sandbox-limit-max-processes", env = "BATCHFORGE_SANDBOX_LIMIT_MAX_PROCESSES", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_limit_max_processes: Option<u64>,
    /// Default `max_file_mb` of every command whose job sets none: largest file written, in MiB (RLIMIT_FSIZE).
    #[arg(long = "sandbox-max-file-mb", env = "BATCHFORGE_SANDBOX_MAX_FILE_MB", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_max_file_mb: Option<u64>,
    /// The most `max_file_mb` a job may ask for (a job asking more is refused).
    #[arg(long = "sandbox-limit-max-file-mb", env = "BATCHFORGE_SANDBOX_LIMIT_MAX_FILE_MB", value_parser = clap::value_parser!(u64).range(1..))]
    sandbox_limit_max_file_mb: Option<u64>,
}

/// The `--sandbox-*` limit flags: `(default, maximum)` for each limit.
fn sandbox_limits(args: &ServeArgs) -> (batchforge::sandbox::Limits, batchforge::sandbox::Limits) {
    use batchforge::sandbox::Limits;
    (
        Limits {
            memory_mb: args.sandbox_memory_mb,
            cpu_seconds: args.sandbox_cpu_seconds,
            max_processes: args.sandbox_max_processes,
            max_file_mb: args.sandbox_max_file_mb,
        },
        Limits {
            memory_mb: args.sandbox_limit_memory_mb,
            cpu_seconds: args.sandbox_limit_cpu_seconds,
            max_processes: args.sandbox_limit_max_processes,
            max_file_mb: args.sandbox_limit_max_file_mb,
        },
    )
}

fn parse_llm_api(s: &str) -> Result<batchforge::agent::LlmApi, String> {
    s.parse()
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
    let cli = Cli::parse();
    // The MCP server's stderr lands in its client's log: only what matters.
    let level = match cli.command {
        Command::McpServer(_) => "warn",
        _ => "info",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).init();
    match cli.command {
        Command::Serve(args) => serve(*args, cli.client.token),
        Command::Client(command) => cli::client::run(cli.client, command),
        Command::McpServer(args) => match batchforge::mcp::server::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
        Command::Bench(args) => match cli::bench::run(args) {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::ExitCode::FAILURE
            }
        },
    }
}

/// The tokens of `--token`/`--read-token` and their files: blank lines and surrounding
/// whitespace dropped, an empty token refused (it would match an empty header).
fn read_tokens(
    given: impl IntoIterator<Item = String>,
    file: Option<&std::path::Path>,
    flag: &str,
) -> Result<Vec<String>, String> {
    let mut tokens: Vec<String> = Vec::new();
    for token in given {
        let token = token.trim();
        if token.is_empty() {
            return Err(format!("{flag} must not be empty"));
        }
        tokens.push(token.to_string());
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{flag}-file {}: {e}", path.display()))?;
        let before = tokens.len();
        tokens.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string),
        );
        if tokens.len() == before {
            return Err(format!("{flag}-file {}: no token in it", path.display()));
        }
    }
    Ok(tokens)
}

fn serve(args: ServeArgs, token: Option<String>) -> std::process::ExitCode {
    let tokens = read_tokens(token, args.token_file.as_deref(), "--token");
    let read = read_tokens(
        args.read_tokens.clone(),
        args.read_token_file.as_deref(),
        "--read-token",
    );
    let tls =
        batchforge::api::tls::TlsFiles::from_flags(args.tls_cert.clone(), args.tls_key.clone());
    let security = match (tokens, read, tls) {
        (Ok(tokens), Ok(read_tokens), Ok(tls)) => batchforge::api::guard::SecurityConfig {
            allowed_origins: args.allowed_origins.clone(),
            allowed_hosts: args.allowed_hosts.clone(),
            bound: None,
            tokens,
            read_tokens,
            allow_unauthenticated: args.allow_unauthenticated,
            tls,
        },
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            eprintln!("error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let (sandbox_defaults, sandbox_maxima) = sandbox_limits(&args);
    if !(args.shutdown_grace.is_finite() && args.shutdown_grace >= 0.0) {
        eprintln!("error: --shutdown-grace must be a non-negative number of seconds");
        return std::process::ExitCode::from(2);
    }
    let database_url = args
        .database_url
        .or_else(|| std::env::var("DATABASE_URL").ok())
        .unwrap_or_else(batchforge::engine::default_database_url);
    let mut mcp = batchforge::mcp::McpConfig {
        servers: Vec::new(),
        default_server: args.mcp_default,
        server_binary: None,
        read_only: args.mcp_read_only,
        sandbox_args: Vec::new(),
    };
    if let Some(file) = &args.mcp_config {
        let parsed = std::fs::read_to_string(file)
            .map_err(|e| e.to_string())
            .and_then(|text| batchforge::mcp::parse_config_file(&text));
        match parsed {
            Ok((servers, default)) => {
                mcp.servers = servers;
                mcp.default_server = mcp.default_server.or(default);
            }
            Err(e) => {
                eprintln!("error: --mcp-config {}: {e}", file.display());
                return std::process::ExitCode::from(2);
            }
        }
    }
    if args.webhook_secret.as_deref().is_some_and(|s| s.is_empty()) {
        eprintln!("error: --webhook-secret must not be empty");
        return std::process::ExitCode::from(2);
    }
    if !(args.llm_timeout.is_finite() && args.llm_timeout > 0.0) {
        eprintln!("error: --llm-timeout must be a positive number of seconds");
        return std::process::ExitCode::from(2);
    }
    let llm_url = args
        .llm_url
        .or_else(|| {
            std::env::var("OLLAMA_HOST")
                .ok()
                .filter(|h| !h.trim().is_empty())
        })
        .unwrap_or_else(|| batchforge::agent::DEFAULT_LLM_URL.to_string());
    let llm_url = match batchforge::agent::normalize_url(&llm_url) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("error: --llm-url: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let agent = batchforge::agent::AgentConfig {
        llm_url,
        api: args.llm_api,
        api_key: args.llm_api_key,
        max_concurrent_requests_per_endpoint: args.llm_concurrency as usize,
        request_timeout: Duration::from_secs_f64(args.llm_timeout),
        routes: args.llm_routes,
        rate_limits: args.llm_limits,
        ..Default::default()
    };
    // A --mcp-server flag beats a file entry of the same name.
    for server in args.mcp_servers {
        mcp.servers.retain(|s| s.name != server.name);
        mcp.servers.push(server);
    }
    let config = ServeConfig {
        engine: EngineConfig {
            database_url,
            workspace: args.workspace,
            default_concurrency: args.concurrency.map(|n| n as usize),
            kind_concurrency: args.kind_concurrency.into_iter().collect::<HashMap<_, _>>(),
            concurrency_groups: args
                .concurrency_group
                .into_iter()
                .collect::<HashMap<_, _>>(),
            builtin_processors: true,
            mcp,
            agent,
            webhooks: batchforge::services::webhooks::WebhookConfig {
                secret: args.webhook_secret,
                allow_private: args.webhook_allow_private,
                ..Default::default()
            },
            retention: args.retention,
            cluster: batchforge::services::cluster::ClusterConfig {
                heartbeat_interval: args.heartbeat_interval,
                node_timeout: args.node_timeout,
            },
            sandbox: batchforge::sandbox::SandboxConfig {
                mode: args.sandbox,
                defaults: sandbox_defaults,
                maxima: sandbox_maxima,
                // The engine's secrets, wherever the user keeps them.
                hidden: [
                    &args.token_file,
                    &args.read_token_file,
                    &args.tls_key,
                    &args.mcp_config,
                ]
                .into_iter()
                .flatten()
                .cloned()
                .collect(),
                read_only: args.sandbox_ro_paths,
            },
            ..EngineConfig::default()
        },
        bind: args.bind,
        shutdown_grace: Duration::from_secs_f64(args.shutdown_grace),
        http_workers: args.http_workers,
    };
    let noop = args.noop_processor;
    let scheme = if security.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let result = actix_web::rt::System::new().block_on(async move {
        let app = Application::build_secured(config, security, |b| {
            if noop {
                b.processor(batchforge::processors::noop::Noop)
            } else {
                b
            }
        })
        .await?;
        let bind_host = app.port();
        println!("batchforge listening on {scheme}://127.0.0.1:{bind_host}");
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
