//! Starting the engine: store, recovery, actors. The handle, [`Engine`], is what the HTTP
//! layer and embedding applications talk to.

mod dashboard;
mod llm_files;
mod schedules;

pub use dashboard::{TimelineBucket, WebhookDelivery};

use crate::mcp::{McpConfig, McpRegistry};
use crate::model::{now, NewJob, QueueStats};
use crate::processor::Processor;
use crate::processors::{agent, mcp, test_suite, validation};
use crate::queue::messages::*;
use crate::queue::supervisor::{Supervisor, SupervisorConfig};
use crate::queue::tracker::Tracker;
use crate::store::{self, job_control::CancelOutcome};
use crate::store::{DatabaseUrl, Store, StoreError};
use actix::prelude::*;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Engine settings; see the README's configuration table for their flags.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// `sqlite://PATH` (default `sqlite://data/batch_jobs.db`) or `postgres://…` (several
    /// nodes may share it).
    pub database_url: String,
    /// Root that command targets are confined to.
    pub workspace: PathBuf,
    /// Concurrency limit for every kind not named in `kind_concurrency`; `None` lets each
    /// processor choose.
    pub default_concurrency: Option<usize>,
    /// Per-kind concurrency limits.
    pub kind_concurrency: HashMap<String, usize>,
    /// Named concurrency groups and their limits: items of every job that names a group
    /// (`concurrency_group`), of any kind, share its limit (one GPU box, one LLM host).
    pub concurrency_groups: HashMap<String, usize>,
    /// Register `batch_validation`, `batch_tests`, `batch_mcp` and `batch_agent_tasks`.
    pub builtin_processors: bool,
    /// The MCP servers `batch_mcp` jobs may use.
    pub mcp: McpConfig,
    /// The LLM endpoint and limits of `batch_agent_tasks`.
    pub agent: crate::agent::AgentConfig,
    /// Delivery of `callback_url` webhooks (signing secret, timeout, backoff).
    pub webhooks: crate::services::webhooks::WebhookConfig,
    /// Delete finished jobs this long after they finished; `None` keeps them.
    pub retention: Option<Duration>,
    /// How often retention looks for jobs to delete.
    pub retention_interval: Duration,
    /// Heartbeats and failure detection of nodes sharing a PostgreSQL queue.
    pub cluster: crate::services::cluster::ClusterConfig,
    /// How commands are isolated (`--sandbox`) and limited (`--sandbox-memory-mb` …).
    pub sandbox: crate::sandbox::SandboxConfig,
    /// More values to scrub from every item's result and error, besides each job's own
    /// secrets and the engine's `agent.api_key`, `webhooks.secret` and URL credentials,
    /// which are always scrubbed: an embedder's own keys, the API's tokens.
    pub secret_values: Vec<crate::secrets::Secret>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            database_url: default_database_url(),
            workspace: PathBuf::from("."),
            default_concurrency: None,
            kind_concurrency: HashMap::new(),
            concurrency_groups: HashMap::new(),
            builtin_processors: true,
            mcp: McpConfig::default(),
            agent: crate::agent::AgentConfig::default(),
            webhooks: crate::services::webhooks::WebhookConfig::default(),
            retention: None,
            retention_interval: crate::services::retention::DEFAULT_INTERVAL,
            cluster: crate::services::cluster::ClusterConfig::default(),
            sandbox: crate::sandbox::SandboxConfig::default(),
            secret_values: Vec::new(),
        }
    }
}

impl EngineConfig {
    /// The engine's own secrets, scrubbed by value from what every job's commands and
    /// upstreams produce (a check command that `cat`s a credentials file, an LLM error that
    /// echoes the key it was sent): the LLM key, the webhook signing secret, credentials
    /// in the LLM URLs, and [`EngineConfig::secret_values`].
    pub fn engine_secrets(&self) -> crate::secrets::Redactor {
        let urls: Vec<serde_json::Value> = std::iter::once(&self.agent.llm_url)
            .chain(self.agent.routes.iter().map(|r| &r.url))
            .map(|u| serde_json::Value::from(u.as_str()))
            .collect();
        crate::secrets::Redactor::of(&urls).with_values(
            self.agent
                .api_key
                .iter()
                .chain(&self.webhooks.secret)
                .cloned()
                .chain(self.secret_values.iter().map(|s| s.expose().to_string())),
        )
    }
}

/// The default database, relative to the working directory.
pub fn default_database_url() -> String {
    "sqlite://data/batch_jobs.db".to_string()
}

/// Why the engine could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A setting is wrong.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The database could not be opened, migrated or recovered.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Builds an engine: settings plus the processors to register.
pub struct EngineBuilder {
    config: EngineConfig,
    processors: Vec<Arc<dyn Processor>>,
}

impl EngineBuilder {
    /// A builder with these settings and no custom processors yet.
    pub fn new(config: EngineConfig) -> Self {
        EngineBuilder {
            config,
            processors: Vec::new(),
        }
    }

    /// Registers a processor for its kind (replacing a built-in one of the same kind).
    pub fn processor(mut self, processor: impl Processor) -> Self {
        self.processors.push(Arc::new(processor));
        self
    }

    /// Opens the store, recovers items a crash left running, and starts the actors.
    /// Must be called inside an actix `System`.
    pub async fn start(self) -> Result<Engine, StartError> {
        let EngineBuilder {
            config,
            processors: custom,
        } = self;
        let url = DatabaseUrl::parse(&config.database_url).map_err(StartError::Config)?;
        config.cluster.validate().map_err(StartError::Config)?;
        let workspace = config.workspace.canonicalize().map_err(|e| {
            StartError::Config(format!("workspace {}: {e}", config.workspace.display()))
        })?;
        if !workspace.is_dir() {
            return Err(StartError::Config(format!(
                "workspace {} is not a directory",
                workspace.display()
            )));
        }
        let sandbox = Arc::new(start_sandbox(&config, &url)?);
        let mut processors: Vec<Arc<dyn Processor>> = Vec::new();
        if config.builtin_processors {
            let io = |e: std::io::Error| StartError::Config(format!("workspace: {e}"));
            processors.push(Arc::new(
                validation::processor(&workspace)
                    .map_err(io)?
                    .with_sandbox(sandbox.clone()),
            ));
            processors.push(Arc::new(
                test_suite::processor(&workspace)
                    .map_err(io)?
                    .with_sandbox(sandbox.clone()),
            ));
            let mcp_config = McpConfig {
                sandbox_args: sandbox.server_args(),
                ..config.mcp.clone()
            };
            let servers =
                McpRegistry::resolve(&mcp_config, &workspace).map_err(StartError::Config)?;
            processors.push(Arc::new(mcp::McpProcessor::new(servers)));
            // One in-flight limit per endpoint for agent tasks and LLM batches together.
            let limits = Arc::new(
                crate::agent::llm::EndpointLimits::new(
                    config.agent.max_concurrent_requests_per_endpoint,
                )
                .with_rates(config.agent.rate_limits.clone()),
            );
            processors.push(Arc::new(
                agent::AgentProcessor::new(&workspace, config.agent.clone())
                    .map_err(StartError::Config)?
                    .with_sandbox(sandbox.clone())
                    .with_limits(limits.clone()),
            ));
            processors.push(Arc::new(
                crate::processors::llm_batch::LlmBatchProcessor::new(
                    config.agent.clone(),
                    config.agent.routes.clone(),
                )
                .map_err(StartError::Config)?
                .with_limits(limits),
            ));
        }
        for p in custom {
            processors.retain(|q| q.kind() != p.kind());
            processors.push(p);
        }
        for kind in config.kind_concurrency.keys() {
            if !processors.iter().any(|p| p.kind() == kind) {
                return Err(StartError::Config(format!(
                    "kind concurrency names unknown kind '{kind}' (known: {})",
                    processors
                        .iter()
                        .map(|p| p.kind())
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        for p in &processors {
            crate::model::summary::declare(p.kind(), p.summary_aliases());
        }
        let limited = processors
            .into_iter()
            .map(|p| {
                let limit = config
                    .kind_concurrency
                    .get(p.kind())
                    .copied()
                    .or(config.default_concurrency)
                    .unwrap_or_else(|| p.default_concurrency());
                (p, limit.clamp(1, u32::MAX as usize) as u32)
            })
            .collect();

        let store = tokio::task::spawn_blocking(move || Store::open(&url))
            .await
            .map_err(|e| StoreError::Task(e.to_string()))??;
        let node_id: Arc<str> = Arc::from(format!(
            "{}-{}",
            hostname(),
            &uuid::Uuid::new_v4().simple().to_string()[..8]
        ));
        let node = node_id.clone();
        let cluster = store.is_postgres();
        let node_timeout = config.cluster.node_timeout;
        let groups: Vec<(String, u32)> = config
            .concurrency_groups
            .iter()
            .map(|(name, limit)| (name.clone(), (*limit).max(1) as u32))
            .collect();
        let (recovery, open_jobs, paused_kinds) = store
            .write(move |conn| {
                let t = now();
                // One engine per SQLite file: whatever ran is abandoned. On PostgreSQL
                // other nodes may be running their items: only dead nodes' are rescued.
                let recovery = if cluster {
                    // Only nodes known dead: gone from this host, or items of no node.
                    for (group, limit) in &groups {
                        store::groups::ensure_group_slots(conn, group, *limit)?;
                    }
                    crate::services::cluster::rescue(conn, &node, node_timeout, false)?.1
                } else {
                    store::recovery::recover_abandoned_items(conn, t)?
                };
                store::nodes::register_node(
                    conn,
                    &node,
                    &crate::services::cluster::host_identity(),
                    std::process::id(),
                    t,
                )?;
                Ok((
                    recovery,
                    store::jobs::open_jobs(conn)?,
                    store::job_control::paused_kinds(conn)?,
                ))
            })
            .await?;
        if recovery.requeued + recovery.failed + recovery.cancelled > 0 {
            log::warn!(
                "recovered items left running by a previous run: {} requeued, {} failed after their last attempt, {} cancelled",
                recovery.requeued, recovery.failed, recovery.cancelled
            );
        }
        log::info!(
            "engine {node_id} started on {} with {} open jobs; workspace {}",
            store.describe(),
            open_jobs.len(),
            workspace.display()
        );
        let tracker = Tracker::default();
        let listening = tracker.listening();
        let supervisor = Supervisor::new(SupervisorConfig {
            store: store.clone(),
            tracker: tracker.start(),
            node_id: node_id.clone(),
            processors: limited,
            open_jobs,
            listening,
            paused_kinds,
            groups: config
                .concurrency_groups
                .iter()
                .map(|(name, limit)| (name.clone(), (*limit).max(1) as u32))
                .collect(),
            lease: node_timeout.as_secs_f64(),
            cluster,
            secrets: config.engine_secrets(),
        })
        .start();
        let background = tokio_util::sync::CancellationToken::new();
        if let Some(pg) = store.postgres_url() {
            crate::services::cluster::spawn_heartbeat(
                store.clone(),
                node_id.clone(),
                config.cluster.clone(),
                supervisor.clone(),
                background.clone(),
            );
            crate::services::cluster::spawn_listener(
                pg.to_string(),
                node_id.clone(),
                supervisor.clone(),
                background.clone(),
            );
        }
        crate::services::webhooks::spawn_dispatcher(
            store.clone(),
            config.webhooks.clone(),
            background.clone(),
        );
        if let Some(retention) = config.retention {
            crate::services::retention::spawn_pruner(
                store.clone(),
                retention,
                config.retention_interval,
                background.clone(),
            );
        }
        let engine = Engine {
            supervisor,
            store: store.clone(),
            node_id,
            workspace: Arc::new(workspace),
            sandbox,
            background,
            schedules: crate::services::cron::Scheduler::new(store.clone()),
        };
        engine
            .schedules
            .start(engine.supervisor().clone().recipient());
        Ok(engine)
    }
}

use crate::services::cluster::hostname;

/// Resolves the sandbox (probing bubblewrap), hiding the database's directory and files
/// from sandboxed commands besides what the configuration hides.
fn start_sandbox(
    config: &EngineConfig,
    url: &DatabaseUrl,
) -> Result<crate::sandbox::Sandbox, StartError> {
    let mut sandbox = config.sandbox.clone();
    if let DatabaseUrl::Sqlite(file) = url {
        let file = std::path::absolute(file).unwrap_or_else(|_| file.clone());
        if let Some(dir) = file.parent() {
            sandbox.hidden.push(dir.to_path_buf());
        }
        // The files too: when the directory is the workspace, only they can be hidden.
        for suffix in ["", "-wal", "-shm", "-journal"] {
            let mut f = file.clone().into_os_string();
            f.push(suffix);
            sandbox.hidden.push(f.into());
        }
    }
    crate::sandbox::Sandbox::start(&sandbox).map_err(StartError::Config)
}

/// A running engine. Cheap to clone; every method is one message to the Supervisor.
#[derive(Clone)]
pub struct Engine {
    supervisor: Addr<Supervisor>,
    store: Store,
    node_id: Arc<str>,
    workspace: Arc<PathBuf>,
    /// The sandbox in force for every command.
    sandbox: Arc<crate::sandbox::Sandbox>,
    /// Stops the webhook dispatcher and the retention pruner.
    background: tokio_util::sync::CancellationToken,
    /// The cron schedules' store and ticker (`crate::services::cron`).
    pub(crate) schedules: crate::services::cron::Scheduler,
}

impl Engine {
    /// The Supervisor, for sending it messages directly.
    pub fn supervisor(&self) -> &Addr<Supervisor> {
        &self.supervisor
    }

    /// The storage fault the last database write met, until a write succeeds again.
    pub fn storage_fault(&self) -> Option<crate::store::fault::Fault> {
        self.store.fault()
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The sandbox mode in force for commands: `bwrap` or `none`.
    pub fn sandbox_mode(&self) -> &'static str {
        self.sandbox.mode()
    }

    /// The canonical workspace root.
    pub fn workspace(&self) -> &std::path::Path {
        &self.workspace
    }

    /// Submits a job.
    pub async fn submit(&self, job: NewJob) -> Result<JobView, EngineError> {
        self.supervisor.send(SubmitJob(job)).await?
    }

    /// Reads a job with its live progress.
    pub async fn job(&self, job_id: &str) -> Result<Option<JobView>, EngineError> {
        self.supervisor
            .send(GetJob {
                job_id: job_id.to_string(),
            })
            .await?
    }

    /// Cancels a job.
    pub async fn cancel(&self, job_id: &str) -> Result<CancelOutcome, EngineError> {
        self.supervisor
            .send(CancelJob {
                job_id: job_id.to_string(),
            })
            .await?
    }

    /// Pauses a job (`paused: true`) or resumes it: while paused its running items
    /// finish and nothing new of it is claimed or started.
    pub async fn set_paused(
        &self,
        job_id: &str,
        paused: bool,
    ) -> Result<crate::store::job_control::PauseOutcome, EngineError> {
        self.supervisor
            .send(crate::queue::messages::PauseJob {
                job_id: job_id.to_string(),
                paused,
            })
            .await?
    }

    /// Requeues a finished job's items of these statuses (`failed`, `cancelled`,
    /// `skipped`) with a fresh attempt budget and reopens the job.
    pub async fn retry(
        &self,
        job_id: &str,
        statuses: Vec<crate::model::ItemStatus>,
    ) -> Result<crate::store::job_control::RetryOutcome, EngineError> {
        self.supervisor
            .send(crate::queue::messages::RetryJob {
                job_id: job_id.to_string(),
                statuses,
            })
            .await?
    }

    /// Pauses or resumes every job of a kind, present and future; survives restarts.
    pub async fn set_kind_paused(
        &self,
        kind: &str,
        paused: bool,
    ) -> Result<crate::queue::messages::KindInfo, EngineError> {
        self.supervisor
            .send(crate::queue::messages::PauseKind {
                kind: kind.to_string(),
                paused,
            })
            .await?
    }

    /// The registered kinds, their limits, running items and whether they are paused.
    pub async fn kinds(&self) -> Result<Vec<crate::queue::messages::KindInfo>, EngineError> {
        Ok(self
            .supervisor
            .send(crate::queue::messages::ListKinds)
            .await?)
    }

    /// Counts jobs per status.
    pub async fn stats(&self) -> Result<QueueStats, EngineError> {
        self.supervisor.send(GetStats).await?
    }

    /// Stops claiming, lets running items finish for `grace`, stops the rest and puts them
    /// back in the queue. Gives up waiting `grace + 10 s` after it began.
    pub async fn shutdown(&self, grace: Duration) {
        self.schedules.stop();
        let wait = self.supervisor.send(Shutdown { grace });
        if tokio::time::timeout(grace + Duration::from_secs(10), wait)
            .await
            .is_err()
        {
            log::warn!("shutdown: items still running; they are recovered at next start");
        }
        // Webhooks not yet delivered stay in the outbox for the next start.
        self.background.cancel();
        if self.store.is_postgres() {
            // Leaving cleanly: nobody needs to wait out this node's timeout.
            let node = self.node_id.to_string();
            if let Err(e) = self
                .store
                .write(move |conn| store::nodes::deregister_node(conn, &node))
                .await
            {
                log::warn!("could not deregister node {}: {e}", self.node_id);
            }
        }
    }
}
