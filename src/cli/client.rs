//! The command-line client: `batchforge submit | jobs | show | items | watch | cancel |
//! stats | export | schedules | schedule`, talking to a server over its REST API. Human tables by default,
//! `--json` for scripts. Exit status: 0 when the batch (if any) had no failed items, 1 when
//! it had, 2 when the command could not do its work (bad usage, unreachable server, an
//! error answer), so it drops into CI pipelines.

use batchforge::model::JobStatus;
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

mod schedules;
pub use schedules::ScheduleCommand;

/// Options every client command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct ClientArgs {
    /// The server's base URL.
    #[arg(
        long,
        env = "BATCHFORGE_SERVER",
        default_value = "http://127.0.0.1:8000",
        global = true
    )]
    pub server: String,
    /// The bearer token the server requires (its `serve --token`); `serve` itself takes
    /// this as the token that grants everything.
    #[arg(long, env = "BATCHFORGE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A PEM CA certificate to trust for an `https://` server (a private CA, or the
    /// server's own self-signed certificate) instead of the system's roots.
    #[arg(long, env = "BATCHFORGE_CA_CERT", global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Print the server's JSON instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

/// A client command.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ClientCommand {
    /// Submit a batch.
    Submit(SubmitArgs),
    /// List jobs, newest first.
    Jobs {
        /// Only jobs in this status.
        #[arg(long)]
        status: Option<String>,
        /// Only jobs of this kind.
        #[arg(long = "type")]
        kind: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show one job.
    Show {
        /// The job id.
        id: String,
    },
    /// List a job's items.
    Items {
        /// The job id.
        id: String,
        /// Only items in this status.
        #[arg(long)]
        status: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// How many to skip.
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Follow a job with a progress bar until it ends.
    Watch {
        /// The job id.
        id: String,
    },
    /// Cancel a job.
    Cancel {
        /// The job id.
        id: String,
    },
    /// Pause a job: running items finish, nothing new starts until `resume`.
    Pause {
        /// The job id.
        id: String,
    },
    /// Resume a paused job.
    Resume {
        /// The job id.
        id: String,
    },
    /// Requeue a finished job's failed items (or those of --status) and reopen it.
    Retry {
        /// The job id.
        id: String,
        /// Item statuses to requeue: failed (default), cancelled, skipped.
        #[arg(long, value_delimiter = ',')]
        status: Vec<String>,
    },
    /// The registered kinds, their limits and running items.
    Kinds,
    /// Jobs per status.
    Stats,
    /// Every item's result as JSONL on stdout (or into --output). A transfer the server
    /// broke off, or ended with an error line, exits non-zero.
    Export {
        /// The job id.
        id: String,
        /// Write into this file instead of stdout: written beside it under a temporary
        /// name and renamed into place only once the whole export arrived, so a failed
        /// export leaves no file that looks complete.
        #[arg(long, short = 'o')]
        output: Option<std::path::PathBuf>,
    },
    /// List the cron schedules.
    Schedules,
    /// Add, show, pause, resume or delete a cron schedule.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
}

/// What to submit.
#[derive(Debug, Clone, clap::Args)]
pub struct SubmitArgs {
    /// The kind of batch.
    #[arg(value_enum)]
    pub kind: SubmitKind,
    /// Targets or modules (paths inside the server's workspace); each path is also its id.
    pub paths: Vec<String>,
    /// Read items from a file: JSONL (one JSON object a line, `custom_id` as its id), or
    /// one path a line for validation and tests. `-` reads standard input.
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// The command (`check_command` or `test_command`).
    #[arg(long)]
    pub command: Option<String>,
    /// Items of this job running at once.
    #[arg(long)]
    pub parallel: Option<u32>,
    /// Per-item timeout in seconds.
    #[arg(long)]
    pub timeout: Option<f64>,
    /// Higher runs first (-1000…1000).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    /// Start no item before this time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub run_at: Option<String>,
    /// Expire the job's unfinished items at this time (RFC 3339 or Unix seconds).
    #[arg(long)]
    pub deadline: Option<String>,
    /// Return the job already created with this key instead of a duplicate.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Start only after these jobs completed (repeat, or separate with commas).
    #[arg(long, value_delimiter = ',')]
    pub depends_on: Vec<String>,
    /// Start even if a dependency failed or was cancelled.
    #[arg(long)]
    pub run_on_failure: bool,
    /// Attempts per item when it fails by an error (timeout, crash, transport failure).
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// A configured concurrency group the job's items count against.
    #[arg(long)]
    pub concurrency_group: Option<String>,
    /// URL that gets a POST when the job finishes.
    #[arg(long)]
    pub callback_url: Option<String>,
    /// Wait for the batch with a progress bar; the exit status says whether items failed.
    #[arg(long)]
    pub wait: bool,
}

/// The kinds `submit` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SubmitKind {
    /// `POST /batch/validation`
    Validation,
    /// `POST /batch/tests`
    Tests,
    /// `POST /batch/mcp-operations`
    Mcp,
    /// `POST /batch/agent-tasks`
    Agent,
}

/// A 401 as a failure that says how to pass the token.
fn refused(status: awc::http::StatusCode, url: &str) -> Result<(), Failure> {
    if status != awc::http::StatusCode::UNAUTHORIZED {
        return Ok(());
    }
    Err(Failure(format!(
        "{url}: 401 Unauthorized: the server needs a token (or refused the one sent): set \
         BATCHFORGE_TOKEN=TOKEN or pass --token TOKEN"
    )))
}

/// A failure that ends the command with exit status 2.
#[derive(Debug)]
struct Failure(String);

type Outcome = Result<ExitCode, Failure>;

/// Runs a client command.
pub fn run(args: ClientArgs, command: ClientCommand) -> ExitCode {
    let result = actix_web::rt::System::new().block_on(async move {
        let client = Client::new(args)?;
        client.run(command).await
    });
    match result {
        Ok(code) => code,
        Err(Failure(message)) => {
            eprintln!("error: {message}");
            ExitCode::from(2)
        }
    }
}

struct Client {
    base: String,
    json: bool,
    http: awc::Client,
}

/// The TLS settings of `https://` servers: the `--ca-cert` file's certificates as the only
/// roots, or else the system's (through the platform verifier, as reqwest does).
fn tls_config(ca_cert: Option<&std::path::Path>) -> Result<rustls::ClientConfig, Failure> {
    let builder = rustls::ClientConfig::builder_with_provider(batchforge::api::tls::provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Failure(format!("TLS: {e}")))?;
    let config = match ca_cert {
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in batchforge::api::tls::read_certs(path, "--ca-cert").map_err(Failure)? {
                roots
                    .add(cert)
                    .map_err(|e| Failure(format!("--ca-cert {}: {e}", path.display())))?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        None => {
            use rustls_platform_verifier::BuilderVerifierExt;
            builder
                .with_platform_verifier()
                .map_err(|e| Failure(format!("TLS: the system's certificate roots: {e}")))?
                .with_no_client_auth()
        }
    };
    Ok(config)
}

/// A connection failure in words, with what to do when it is the server's certificate
/// that was not trusted.
fn unreachable(url: &str, e: impl std::fmt::Display) -> Failure {
    let e = e.to_string();
    let hint = if e.contains("certificate") || e.contains("UnknownIssuer") {
        ": the server's TLS certificate is not trusted; for a private CA or a self-signed \
         certificate pass --ca-cert FILE (or set BATCHFORGE_CA_CERT)"
    } else {
        ""
    };
    Failure(format!("cannot reach {url}: {e}{hint}"))
}

impl Client {
    fn new(args: ClientArgs) -> Result<Self, Failure> {
        let tls = tls_config(args.ca_cert.as_deref())?;
        Ok(Client {
            base: args.server.trim_end_matches('/').to_string(),
            json: args.json,
            http: {
                let builder = awc::Client::builder()
                    .timeout(Duration::from_secs(300))
                    .connector(awc::Connector::new().rustls_0_23(std::sync::Arc::new(tls)));
                match args
                    .token
                    .as_deref()
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                {
                    Some(token) => builder.bearer_auth(token),
                    None => builder,
                }
                .finish()
            },
        })
    }

    async fn call(
        &self,
        method: &str,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> Result<Value, Failure> {
        let url = format!("{}{path}", self.base);
        let req = match method {
            "POST" => self.http.post(&url),
            "DELETE" => self.http.delete(&url),
            _ => self.http.get(&url),
        };
        let sent = match body {
            Some((content_type, bytes)) => {
                req.insert_header(("content-type", content_type))
                    .send_body(bytes)
                    .await
            }
            None => req.send().await,
        };
        let mut resp = sent.map_err(|e| unreachable(&url, e))?;
        let bytes = resp
            .body()
            .limit(1 << 30)
            .await
            .map_err(|e| Failure(format!("{url}: {e}")))?;
        let value: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        refused(resp.status(), &url)?;
        if !resp.status().is_success() {
            let detail = value["detail"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| String::from_utf8_lossy(&bytes).into_owned());
            return Err(Failure(format!(
                "{method} {url}: {} {detail}",
                resp.status()
            )));
        }
        Ok(value)
    }

    async fn run(&self, command: ClientCommand) -> Outcome {
        match command {
            ClientCommand::Submit(args) => self.submit(args).await,
            ClientCommand::Jobs {
                status,
                kind,
                limit,
            } => {
                let mut q = vec![("limit".to_string(), limit.to_string())];
                q.extend(status.map(|s| ("status".to_string(), s)));
                q.extend(kind.map(|k| ("job_type".to_string(), k)));
                let query = serde_urlencoded::to_string(q).unwrap_or_default();
                let page = self
                    .call("GET", &format!("/batch/jobs?{query}"), None)
                    .await?;
                if self.json {
                    print_json(&page);
                } else {
                    println!(
                        "{:<32} {:<10} {:>7} {:>8} {:>6} {:>10}",
                        "JOB", "STATUS", "ITEMS", "DONE %", "FAILED", "TOKENS"
                    );
                    for j in page["jobs"].as_array().into_iter().flatten() {
                        let p = &j["metadata"]["progress"];
                        // Prompt plus completion tokens of an LLM job; `-` for other kinds.
                        let tokens = p["prompt_tokens"].as_u64().map_or("-".to_string(), |t| {
                            (t + p["completion_tokens"].as_u64().unwrap_or(0)).to_string()
                        });
                        println!(
                            "{:<32} {:<10} {:>7} {:>8.1} {:>6} {:>10}",
                            j["job_id"].as_str().unwrap_or(""),
                            j["status"].as_str().unwrap_or(""),
                            p["total"].to_string(),
                            j["progress"].as_f64().unwrap_or(0.0),
                            p["failed"].to_string(),
                            tokens
                        );
                    }
                    println!(
                        "{} of {} jobs",
                        page["jobs"].as_array().map_or(0, Vec::len),
                        page["total"]
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Show { id } => {
                let job = self.call("GET", &format!("/batch/jobs/{id}"), None).await?;
                if self.json {
                    print_json(&job);
                } else {
                    print_summary(&job);
                }
                Ok(exit_for(&job))
            }
            ClientCommand::Items {
                id,
                status,
                limit,
                offset,
            } => {
                let mut q = vec![
                    ("limit".to_string(), limit.to_string()),
                    ("offset".to_string(), offset.to_string()),
                ];
                q.extend(status.map(|s| ("status".to_string(), s)));
                let query = serde_urlencoded::to_string(q).unwrap_or_default();
                let page = self
                    .call("GET", &format!("/batch/jobs/{id}/items?{query}"), None)
                    .await?;
                if self.json {
                    print_json(&page);
                } else {
                    println!(
                        "{:>6} {:<24} {:<10} {:>8}  ERROR",
                        "INDEX", "ID", "STATUS", "ATTEMPTS"
                    );
                    for i in page["items"].as_array().into_iter().flatten() {
                        println!(
                            "{:>6} {:<24} {:<10} {:>8}  {}",
                            i["index"].to_string(),
                            i["id"].as_str().unwrap_or(""),
                            i["status"].as_str().unwrap_or(""),
                            i["attempts"].to_string(),
                            i["error"].as_str().unwrap_or("")
                        );
                    }
                    println!(
                        "{} of {} items",
                        page["items"].as_array().map_or(0, Vec::len),
                        page["total"]
                    );
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Watch { id } => self.watch(&id).await,
            ClientCommand::Cancel { id } => {
                let answer = self
                    .call("DELETE", &format!("/batch/jobs/{id}"), None)
                    .await?;
                if self.json {
                    print_json(&answer);
                } else {
                    println!("cancelled {id}");
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Pause { id } => self.job_action(&id, "pause", None).await,
            ClientCommand::Resume { id } => self.job_action(&id, "resume", None).await,
            ClientCommand::Retry { id, status } => {
                let body = (!status.is_empty()).then(|| json!({ "status": status }));
                self.job_action(&id, "retry", body).await
            }
            ClientCommand::Kinds => {
                let answer = self.call("GET", "/batch/kinds", None).await?;
                if self.json {
                    print_json(&answer);
                } else {
                    println!("{:<22} {:>6} {:>8}  paused", "kind", "limit", "running");
                    for k in answer["kinds"].as_array().into_iter().flatten() {
                        println!(
                            "{:<22} {:>6} {:>8}  {}",
                            k["kind"].as_str().unwrap_or(""),
                            k["limit"],
                            k["running"],
                            k["paused"]
                        );
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Stats => {
                let stats = self.call("GET", "/batch/stats", None).await?;
                if self.json {
                    print_json(&stats);
                } else {
                    for (k, v) in stats["stats"].as_object().into_iter().flatten() {
                        println!("{k:<10} {v}");
                    }
                }
                Ok(ExitCode::SUCCESS)
            }
            ClientCommand::Export { id, output } => self.export(&id, output.as_deref()).await,
            ClientCommand::Schedules => self.list_schedules().await,
            ClientCommand::Schedule(command) => self.schedule(command).await,
        }
    }

    /// `POST /batch/jobs/{id}/{action}`: prints the job (or, for a retry, how many items
    /// went back).
    async fn job_action(&self, id: &str, action: &str, body: Option<Value>) -> Outcome {
        let body = body.map(|b| ("application/json", b.to_string().into_bytes()));
        let answer = self
            .call("POST", &format!("/batch/jobs/{id}/{action}"), body)
            .await?;
        if self.json {
            print_json(&answer);
        } else if action == "retry" {
            println!("{id}: {} items requeued", answer["requeued"]);
        } else {
            println!(
                "{id}: {} ({})",
                if answer["paused"] == true {
                    "paused"
                } else {
                    "resumed"
                },
                answer["status"].as_str().unwrap_or("?")
            );
        }
        Ok(ExitCode::SUCCESS)
    }

    async fn submit(&self, args: SubmitArgs) -> Outcome {
        let (path, command_field) = match args.kind {
            SubmitKind::Validation => ("/batch/validation", Some("check_command")),
            SubmitKind::Tests => ("/batch/tests", Some("test_command")),
            SubmitKind::Mcp => ("/batch/mcp-operations", None),
            SubmitKind::Agent => ("/batch/agent-tasks", None),
        };
        let path_items = matches!(args.kind, SubmitKind::Validation | SubmitKind::Tests);
        let mut lines: Vec<Value> = Vec::new();
        for p in &args.paths {
            if !path_items {
                return Err(Failure(format!(
                    "{:?} items come from --file (JSONL), not from arguments",
                    args.kind
                )));
            }
            lines.push(json!({"custom_id": p, "path": p}));
        }
        if let Some(file) = &args.file {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())
            } else {
                std::fs::read_to_string(file)
            }
            .map_err(|e| Failure(format!("cannot read {}: {e}", file.display())))?;
            // Files written by some Windows tools start with a byte-order mark.
            let text = text.strip_prefix('\u{feff}').unwrap_or(&text).to_string();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                if line.starts_with('{') {
                    let v: Value = serde_json::from_str(line).map_err(|e| {
                        Failure(format!(
                            "{} line {}: not valid JSON: {e}",
                            file.display(),
                            n + 1
                        ))
                    })?;
                    lines.push(v);
                } else if path_items {
                    lines.push(json!({"custom_id": line, "path": line}));
                } else {
                    return Err(Failure(format!(
                        "{} line {}: expected a JSON object",
                        file.display(),
                        n + 1
                    )));
                }
            }
        }
        if lines.is_empty() {
            return Err(Failure("nothing to submit: give paths or --file".into()));
        }
        let mut query = Vec::new();
        if let Some(c) = &args.command {
            let field = command_field
                .ok_or_else(|| Failure("--command applies to validation and tests".into()))?;
            query.push((field.to_string(), c.clone()));
        }
        query.extend(
            args.parallel
                .map(|p| ("parallel".to_string(), p.to_string())),
        );
        query.extend(
            args.timeout
                .map(|t| ("timeout_seconds".to_string(), t.to_string())),
        );
        let options = [
            ("priority", args.priority.map(|p| p.to_string())),
            ("run_at", args.run_at.clone()),
            ("deadline", args.deadline.clone()),
            ("idempotency_key", args.idempotency_key.clone()),
            (
                "depends_on",
                (!args.depends_on.is_empty()).then(|| args.depends_on.join(",")),
            ),
            ("run_on_failure", args.run_on_failure.then(|| "true".into())),
            ("max_attempts", args.max_attempts.map(|n| n.to_string())),
            ("concurrency_group", args.concurrency_group.clone()),
            ("callback_url", args.callback_url.clone()),
        ];
        query.extend(
            options
                .into_iter()
                .filter_map(|(k, v)| v.map(|v| (k.to_string(), v))),
        );
        let query = serde_urlencoded::to_string(query).unwrap_or_default();
        let body: Vec<u8> = lines
            .iter()
            .map(|l| format!("{l}\n"))
            .collect::<String>()
            .into_bytes();
        let job = self
            .call(
                "POST",
                &format!("{path}?{query}"),
                Some(("application/x-ndjson", body)),
            )
            .await?;
        let id = job["job_id"].as_str().unwrap_or_default().to_string();
        if !args.wait {
            if self.json {
                print_json(&job);
            } else {
                println!("{id}");
            }
            return Ok(ExitCode::SUCCESS);
        }
        self.watch(&id).await
    }

    /// Follows the job's event stream with a progress bar, then prints its summary.
    async fn watch(&self, id: &str) -> Outcome {
        let url = format!("{}/batch/jobs/{id}/events", self.base);
        let mut resp = self
            .http
            .get(&url)
            .timeout(Duration::from_secs(24 * 3600))
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        refused(resp.status(), &url)?;
        if !resp.status().is_success() {
            let body = resp.body().await.unwrap_or_default();
            let detail: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            return Err(Failure(format!(
                "GET {url}: {} {}",
                resp.status(),
                detail["detail"].as_str().unwrap_or("")
            )));
        }
        let bar = indicatif::ProgressBar::new(0);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} [{bar:40}] {pos}/{len} items  {per_sec}  ETA {eta}  {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        let mut buffer = String::new();
        let mut last = Value::Null;
        while let Some(chunk) = resp.next().await {
            let chunk = chunk.map_err(|e| Failure(format!("{url}: {e}")))?;
            buffer.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = buffer.find("\n\n") {
                let block: String = buffer.drain(..end + 2).collect();
                let (mut event, mut data) = ("", Value::Null);
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event: ") {
                        event = match v {
                            "state" => "state",
                            "progress" => "progress",
                            "end" => "end",
                            _ => "other",
                        };
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        data = serde_json::from_str(v).unwrap_or(Value::Null);
                    }
                }
                let progress = match event {
                    "state" | "end" => data["metadata"]["progress"].clone(),
                    "progress" => data["progress"].clone(),
                    _ => Value::Null,
                };
                if let Some(total) = progress["total"].as_u64() {
                    bar.set_length(total);
                    bar.set_position(progress["processed"].as_u64().unwrap_or(0));
                    let tokens = match progress["prompt_tokens"].as_u64() {
                        Some(p) => format!(
                            "  tokens {}",
                            p + progress["completion_tokens"].as_u64().unwrap_or(0)
                        ),
                        None => String::new(),
                    };
                    bar.set_message(format!(
                        "✓ {}  ✗ {}{tokens}",
                        progress["successful"], progress["failed"]
                    ));
                }
                if event == "end" {
                    last = data;
                }
            }
        }
        bar.finish_and_clear();
        if last.is_null() {
            return Err(Failure(format!(
                "{url}: the stream ended before the job did"
            )));
        }
        if self.json {
            print_json(&last);
        } else {
            print_summary(&last);
        }
        Ok(exit_for(&last))
    }

    /// Streams `results.jsonl` to stdout or into `output`; fails when the server broke
    /// the transfer off or ended it with an error line.
    async fn export(&self, id: &str, output: Option<&std::path::Path>) -> Outcome {
        let url = format!("{}/batch/jobs/{id}/results.jsonl", self.base);
        let mut resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| unreachable(&url, e))?;
        refused(resp.status(), &url)?;
        if !resp.status().is_success() {
            return Err(Failure(format!("GET {url}: {}", resp.status())));
        }
        let Some(path) = output else {
            let mut out = std::io::stdout().lock();
            let lines = copy_export(&mut resp, &mut out, &url).await?;
            log::debug!("exported {lines} lines");
            return Ok(ExitCode::SUCCESS);
        };
        // Beside the target, so the rename stays on one filesystem.
        let name = path
            .file_name()
            .ok_or_else(|| Failure(format!("--output {}: not a file name", path.display())))?;
        let tmp = path.with_file_name(format!(
            ".{}.partial-{}",
            name.to_string_lossy(),
            std::process::id()
        ));
        let written = async {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)
                .map_err(|e| Failure(format!("cannot write {}: {e}", tmp.display())))?;
            let mut out = std::io::BufWriter::new(file);
            copy_export(&mut resp, &mut out, &url).await?;
            out.flush()
                .map_err(|e| Failure(format!("writing {}: {e}", tmp.display())))?;
            std::fs::rename(&tmp, path)
                .map_err(|e| Failure(format!("cannot write {}: {e}", path.display())))
        }
        .await;
        if let Err(Failure(e)) = written {
            // No partial file is left that could pass for the whole export.
            let _ = std::fs::remove_file(&tmp);
            return Err(Failure(format!("{e}; {} was not written", path.display())));
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Copies an export's body into `out` line by line and returns how many lines came; an
/// aborted transfer, an error line from the server or a last line without its newline is
/// a failure naming the cause.
async fn copy_export<S, W>(
    resp: &mut awc::ClientResponse<S>,
    out: &mut W,
    url: &str,
) -> Result<u64, Failure>
where
    S: futures_util::Stream<Item = Result<actix_web::web::Bytes, awc::error::PayloadError>> + Unpin,
    W: Write,
{
    let mut lines = 0u64;
    let mut pending: Vec<u8> = Vec::new();
    while let Some(chunk) = resp.next().await {
        let chunk = chunk.map_err(|e| {
            Failure(format!(
                "{url}: the transfer broke off after {lines} lines: {e}"
            ))
        })?;
        pending.extend_from_slice(&chunk);
        // Whole lines only: an error line must be seen before anything after it is kept.
        let Some(end) = pending.iter().rposition(|b| *b == b'\n') else {
            continue;
        };
        let rest = pending.split_off(end + 1);
        for line in pending.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            if let Some(why) = export_error(line) {
                return Err(Failure(format!(
                    "{url}: the server stopped the export after {lines} lines: {why}"
                )));
            }
            lines += 1;
        }
        out.write_all(&pending)
            .map_err(|e| Failure(format!("writing the export: {e}")))?;
        pending = rest;
    }
    if !pending.is_empty() {
        return Err(Failure(format!(
            "{url}: the transfer ended in the middle of a line after {lines} lines"
        )));
    }
    Ok(lines)
}

/// The cause of the export's final error line (`{"error": …}`, no `custom_id`), if
/// `line` is one.
fn export_error(line: &[u8]) -> Option<String> {
    if !line.starts_with(b"{\"error\"") {
        return None;
    }
    let v: Value = serde_json::from_slice(line).ok()?;
    v.get("custom_id")
        .is_none()
        .then(|| v["error"].as_str().unwrap_or("unknown error").to_string())
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

/// The token totals of an LLM job's progress, when it has any.
fn tokens_line(progress: &Value) -> Option<String> {
    let prompt = progress["prompt_tokens"].as_u64()?;
    let completion = progress["completion_tokens"].as_u64().unwrap_or(0);
    Some(format!(
        "tokens: {prompt} prompt + {completion} completion = {}",
        prompt + completion
    ))
}

/// One line a human reads at the end of a batch.
fn print_summary(job: &Value) {
    let p = &job["metadata"]["progress"];
    println!(
        "{} {}: {} items, {} succeeded, {} failed, {} skipped, {} cancelled, {:.1}s",
        job["job_id"].as_str().unwrap_or("?"),
        job["status"].as_str().unwrap_or("?"),
        p["total"],
        p["successful"],
        p["failed"],
        p["skipped"],
        p["cancelled"],
        p["elapsed_seconds"].as_f64().unwrap_or(0.0)
    );
    if let Some(tokens) = tokens_line(p) {
        println!("{tokens}");
    }
    if let Some(e) = job["error"].as_str() {
        println!("error: {e}");
    }
}

/// 1 when the job failed, was cancelled or had failed items; 0 otherwise.
fn exit_for(job: &Value) -> ExitCode {
    let status = job["status"]
        .as_str()
        .and_then(|s| s.parse::<JobStatus>().ok());
    let failed = job["metadata"]["progress"]["failed"].as_u64().unwrap_or(0);
    match status {
        Some(JobStatus::Completed) if failed == 0 => ExitCode::SUCCESS,
        Some(JobStatus::Queued | JobStatus::Running) => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    }
}
