//! The Supervisor: owns the queue.
//!
//! It admits jobs, claims items in chunks, starts them on the workers, records outcomes
//! with group commit, finalizes jobs, cancels them, and drains on shutdown. All database
//! work goes through [`Store`], which runs it on the blocking pool; the actor itself only
//! keeps the in-memory scheduling state.
//!
//! This file is the actor: the struct composing its parts, its start and stop, and one
//! short dispatch per message. Each concern is a part of its own:
//! - `admission`: the checks a submission passes, and following a stored job (`admit`);
//! - `rotation`: which jobs get the next claims and the next free slots (plain state);
//! - `groups`: concurrency-group slots and their planning;
//! - `commit`: the group-commit cycle (the transaction itself is [`crate::store::commit`]);
//! - `lifecycle`: retries, deadlines, dependencies, cancel, pause, retry of a job;
//! - `drain`: shutdown;
//! - `follow`: what other nodes of a shared queue change;
//! - `reads`: requests answered from the store and the Tracker alone.

mod admission;
mod budget;
mod commit;
mod drain;
mod follow;
mod groups;
mod lifecycle;
mod reads;
mod rotation;

pub use crate::queue::messages::ValidateJob;
pub use rotation::{effective_priority, AGING_SECS};

use crate::metrics::Metrics;
use crate::model::{now, JobRecord};
use crate::processor::Processor;
use crate::queue::messages::*;
use crate::queue::tracker::Tracker;
use crate::queue::worker::Worker;
use crate::store::Store;
use crate::store::{self, job_control::CancelOutcome};
use actix::prelude::*;
use commit::Pipeline;
use drain::Drain;
use follow::Following;
use groups::Groups;
use lifecycle::Gates;
use rotation::{KindSlot, Rotation};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the Supervisor looks for claimable work even when nothing woke it.
const PUMP_INTERVAL: Duration = Duration::from_secs(1);

/// How the Supervisor is set up.
pub struct SupervisorConfig {
    /// The database.
    pub store: Store,
    /// Where progress goes.
    pub tracker: Addr<Tracker>,
    /// This engine's id in `nodes` and on claimed items.
    pub node_id: Arc<str>,
    /// Registered processors with their concurrency limits.
    pub processors: Vec<(Arc<dyn Processor>, u32)>,
    /// Jobs found open in the database at start.
    pub open_jobs: Vec<JobRecord>,
    /// How many event subscribers the Tracker has ([`Tracker::listening`]).
    pub listening: Arc<std::sync::atomic::AtomicUsize>,
    /// Kinds paused as a whole, as stored.
    pub paused_kinds: Vec<String>,
    /// Concurrency groups and their limits.
    pub groups: HashMap<String, u32>,
    /// How long a claim holds without its node's heartbeat (seconds): the lease written
    /// on claimed items.
    pub lease: f64,
    /// Other nodes share the queue (PostgreSQL): follow what they submit, cancel and
    /// pause ([`ClusterSync`]), poll for it as a fallback, and tell them about ours.
    pub cluster: bool,
    /// The engine's own secret values ([`crate::engine::EngineConfig::engine_secrets`]),
    /// scrubbed from every job's results along with the job's own.
    pub secrets: crate::secrets::Redactor,
}

/// A registered kind's processor and the Worker that runs its items.
struct KindWorker {
    processor: Arc<dyn Processor>,
    worker: Addr<Worker>,
}

/// Owns the queue; see the module docs.
pub struct Supervisor {
    store: Store,
    tracker: Addr<Tracker>,
    node_id: Arc<str>,
    /// See [`SupervisorConfig::lease`].
    lease: f64,
    /// See [`SupervisorConfig::cluster`].
    cluster: bool,
    /// See [`SupervisorConfig::secrets`].
    secrets: crate::secrets::Redactor,
    /// Processors whose Workers start with the actor.
    pending_processors: Vec<(Arc<dyn Processor>, u32)>,
    /// Open jobs to follow once the Workers exist.
    pending_jobs: Vec<JobRecord>,
    /// Kinds paused as a whole, before the Workers exist.
    paused_kinds: Vec<String>,
    /// Per registered kind, its processor and Worker.
    workers: HashMap<String, KindWorker>,
    /// Threads of Workers whose processors asked for one.
    arbiters: Vec<ArbiterHandle>,
    /// Counters the Workers update and `GET /metrics` shows.
    metrics: Arc<Metrics>,
    /// Event subscribers; item events are built only while there are some.
    listening: Arc<std::sync::atomic::AtomicUsize>,
    /// Parent of every job's token: cancelling it stops all running items.
    shutdown_token: CancellationToken,
    /// The kinds and open jobs, and who is claimed for and started next.
    rotation: Rotation,
    /// Named concurrency groups.
    groups: Groups,
    /// What waits on a time or another job: retries, deadlines, dependencies.
    gates: Gates,
    /// What waits for the next group commit, and whether one is in flight.
    pipeline: Pipeline,
    /// Shutdown.
    drain: Drain,
    /// What other nodes changed (shared queue).
    following: Following,
}

impl Supervisor {
    /// A Supervisor that will spawn one Worker per processor when started.
    pub fn new(config: SupervisorConfig) -> Self {
        Supervisor {
            store: config.store,
            tracker: config.tracker,
            node_id: config.node_id,
            lease: config.lease,
            cluster: config.cluster,
            secrets: config.secrets,
            pending_processors: config.processors,
            pending_jobs: config.open_jobs,
            paused_kinds: config.paused_kinds,
            workers: HashMap::new(),
            arbiters: Vec::new(),
            metrics: Arc::default(),
            listening: config.listening,
            shutdown_token: CancellationToken::new(),
            rotation: Rotation::default(),
            groups: Groups::new(config.groups, config.cluster),
            gates: Gates::default(),
            pipeline: Pipeline::default(),
            drain: Drain::default(),
            following: Following::default(),
        }
    }

    /// Starts one Worker per registered processor.
    fn start_workers(&mut self, ctx: &mut Context<Self>) {
        for (processor, limit) in std::mem::take(&mut self.pending_processors) {
            let kind = processor.kind().to_string();
            let paused = self.paused_kinds.contains(&kind);
            let supervisor = ctx.address().recipient();
            // Most items spend their time awaiting (a process, a socket), and a Worker on
            // the Supervisor's own thread saves two thread hand-offs per item; a processor
            // that computes between awaits asks for a thread of its own.
            let worker = if processor.own_thread() {
                let arbiter = Arbiter::new().handle();
                let for_worker = processor.clone();
                let metrics = self.metrics.clone();
                let worker = Worker::start_in_arbiter(&arbiter, move |_| {
                    Worker::new(for_worker, supervisor, metrics)
                });
                self.arbiters.push(arbiter);
                worker
            } else {
                Worker::new(processor.clone(), supervisor, self.metrics.clone()).start()
            };
            self.rotation
                .kinds
                .insert(kind.clone(), KindSlot::new(limit, paused));
            self.workers.insert(kind, KindWorker { processor, worker });
        }
    }

    /// Picks ready items to start while their kind and job have free slots; they begin
    /// once the next write recorded their start (callers run `cycle` next).
    fn start_ready(&mut self) {
        if self.drain.stopping() {
            return;
        }
        let starts = self.rotation.start_ready(&mut self.groups, now());
        self.pipeline.starting.extend(starts);
    }

    /// Hands items whose start was committed to their kinds' workers.
    fn run_started(&mut self, starts: Vec<rotation::Start>) {
        for (kind, job, items) in starts {
            if let Some(k) = self.workers.get(&kind) {
                k.worker.do_send(RunItems { job, items });
            }
        }
    }

    /// A kind as `GET /batch/kinds` shows it.
    fn kind_info(&self, kind: &str) -> Option<KindInfo> {
        self.rotation.kinds.get(kind).map(|slot| KindInfo {
            kind: kind.to_string(),
            limit: slot.limit,
            running: slot.active,
            paused: slot.paused,
        })
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        self.start_workers(ctx);
        self.admit_stored(ctx);
        ctx.run_interval(PUMP_INTERVAL, |act, ctx| {
            act.pipeline.flush_due = true;
            // A missed `groups` notification costs at most one pump interval.
            act.groups.unstarve();
            act.cycle(ctx);
        });
        if self.cluster {
            self.schedule_poll(ctx);
        }
        self.cycle(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.shutdown_token.cancel();
        for arbiter in &self.arbiters {
            arbiter.stop();
        }
    }
}

impl Handler<SubmitJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<JobView, EngineError>>;

    fn handle(&mut self, SubmitJob(job): SubmitJob, ctx: &mut Self::Context) -> Self::Result {
        let job = match self.check_submission(job) {
            Ok(job) => job,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let answer = self.queue_submission(job, ctx);
        Box::pin(fut::wrap_future(async move {
            answer.await.unwrap_or(Err(EngineError::ShuttingDown))
        }))
    }
}

impl Handler<ValidateJob> for Supervisor {
    type Result = Result<(), EngineError>;

    fn handle(&mut self, ValidateJob(job): ValidateJob, _: &mut Self::Context) -> Self::Result {
        crate::submission::check_job(&job, &self.admission_rules(&job.kind))?;
        Ok(())
    }
}

impl Handler<ItemFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, ItemFinished(item): ItemFinished, ctx: &mut Self::Context) {
        self.item_finished(item, ctx);
    }
}

impl Handler<CancelJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, EngineError>>;

    fn handle(&mut self, msg: CancelJob, _: &mut Self::Context) -> Self::Result {
        self.cancel_job(msg.job_id)
    }
}

impl Handler<PauseJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<store::job_control::PauseOutcome, EngineError>>;

    fn handle(&mut self, msg: PauseJob, _: &mut Self::Context) -> Self::Result {
        self.pause_job(msg.job_id, msg.paused)
    }
}

impl Handler<RetryJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<store::job_control::RetryOutcome, EngineError>>;

    fn handle(&mut self, msg: RetryJob, _: &mut Self::Context) -> Self::Result {
        self.retry_job(msg.job_id, msg.statuses)
    }
}

impl Handler<PauseKind> for Supervisor {
    type Result = ResponseActFuture<Self, Result<KindInfo, EngineError>>;

    fn handle(&mut self, msg: PauseKind, _: &mut Self::Context) -> Self::Result {
        self.pause_kind(msg.kind, msg.paused)
    }
}

impl Handler<ListKinds> for Supervisor {
    type Result = MessageResult<ListKinds>;

    fn handle(&mut self, _: ListKinds, _: &mut Self::Context) -> Self::Result {
        let mut kinds: Vec<&String> = self.rotation.kinds.keys().collect();
        kinds.sort();
        MessageResult(
            kinds
                .into_iter()
                .filter_map(|k| self.kind_info(k))
                .collect(),
        )
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        let drained = self.shutdown(msg.grace, ctx);
        Box::pin(async move {
            let _ = drained.await;
        })
    }
}

impl Handler<NodeLost> for Supervisor {
    type Result = ();

    /// Another node declared this one dead and rescued its claims and group slots. The
    /// ready items go back through the fenced release: those rescued meanwhile are no
    /// longer this node's and stay as they are, while claims made since it registered
    /// again (a write may have been in flight) are put back properly. Which group slots
    /// it holds is read again from the store by the next write, for the same reason.
    fn handle(&mut self, _: NodeLost, ctx: &mut Self::Context) {
        self.node_lost(ctx);
    }
}

impl Handler<ClusterSync> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ClusterSync, ctx: &mut Self::Context) {
        self.cluster_sync(msg, ctx);
    }
}
