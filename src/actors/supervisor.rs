//! The Supervisor: owns the queue.
//!
//! It admits jobs, claims items in chunks, starts them on the workers, records outcomes
//! with group commit, finalizes jobs, cancels them, and drains on shutdown. All database
//! work goes through [`Store`], which runs it on the blocking pool; the actor itself only
//! keeps the in-memory scheduling state.
//!
//! Scheduling. Each kind has a concurrency limit and each job its `parallel`; both bound
//! the items *running*. Claiming is decoupled from starting: besides its running items a
//! kind keeps up to `max(limit, 32)` claimed items ready in memory, so when an item
//! finishes the next one starts at once, without waiting for a database round trip, while
//! the buffer is refilled by a batched claim in the next write cycle. Both the claims and
//! the starts go round-robin over the kind's jobs, one item per turn, and a job that waits
//! with nothing ready is claimed for at once, so a small job submitted after a huge one
//! gets the next free slot instead of waiting for the huge one to drain.

use crate::actors::messages::*;
use crate::actors::tracker::Tracker;
use crate::actors::worker::Worker;
use crate::metrics::{Metrics, Snapshot};
use crate::model::{
    new_job_id, now, AdmittedJob, ClaimedItem, FinishedItem, ItemOutcome, ItemStatus, JobRecord,
    JobStatus, NewJob, QueueStats, RetryPolicy,
};
use crate::processor::{Processor, ProgressReporter};
use crate::store::queries::{self, CancelOutcome};
use crate::store::Store;
use actix::prelude::*;
use serde_json::json;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

/// Claimed-but-not-started items a kind keeps at least, so that kinds with small limits
/// still claim in batches rather than one item per transaction.
const MIN_BUFFER: u32 = 32;
/// How many jobs of a kind's rotation are looked at for one that waits with idle slots.
const HUNGRY_SCAN: usize = 64;
/// How long finished outcomes may wait for company before a commit, when few are pending.
const FLUSH_LINGER: Duration = Duration::from_millis(2);
/// Pending outcomes that make a commit start at once.
const FLUSH_BATCH: usize = 64;

/// How many claimed items a kind with this limit keeps ready.
fn buffer_target(limit: u32) -> u32 {
    limit.max(MIN_BUFFER)
}

/// How often the Supervisor looks for claimable work even when nothing woke it.
const PUMP_INTERVAL: Duration = Duration::from_secs(1);
/// Pause before retrying a failed store write.
const RETRY_DELAY: Duration = Duration::from_millis(500);
/// Anti-starvation: a job that could run but has had no item start or finish for this
/// long is served one priority level higher, and another level per further period.
pub const AGING_SECS: f64 = 30.0;

/// The priority a job is served at now: its own, plus one level per [`AGING_SECS`] it has
/// waited with nothing of it starting or finishing. Jobs at the highest level share the
/// slots in turn; a steady stream of higher-priority jobs therefore delays a lower one by
/// at most `AGING_SECS` per level of difference, never forever.
pub fn effective_priority(priority: i32, waiting_since: f64, now: f64) -> i64 {
    let waited = (now - waiting_since).max(0.0);
    i64::from(priority) + (waited / AGING_SECS) as i64
}

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
}

/// A named concurrency group: its limit and the items of it running now.
struct GroupSlot {
    limit: u32,
    active: u32,
    /// Shared by the nodes of a PostgreSQL queue: items start only on slots this node
    /// holds in `group_slots`.
    shared: bool,
    /// Slots held (shared groups).
    held: Vec<i32>,
    /// Slots to give back with the next write.
    releasing: Vec<i32>,
    /// An acquisition is in the write in flight.
    acquiring: bool,
    /// The last acquisition got fewer slots than asked: wait for a slot to be freed
    /// (a `groups` notification) or the next pump before asking again.
    starved: bool,
    /// This node was declared dead and its slots freed while items of the group still
    /// ran here: no slot is taken until those are done.
    lost: bool,
}

impl GroupSlot {
    /// Whether another item of the group may start here now.
    fn open(&self) -> bool {
        let cap = if self.shared {
            self.held.len() as u32
        } else {
            self.limit
        };
        self.active < cap
    }
}

struct KindSlot {
    processor: Arc<dyn Processor>,
    worker: Addr<Worker>,
    /// Most items of this kind running at once.
    limit: u32,
    /// Items running on the worker.
    active: u32,
    /// Items claimed and waiting in jobs' `ready` queues, plus claims in flight.
    buffered: u32,
    /// Jobs that may still have queued items, in round-robin order (pruned lazily).
    claimable: VecDeque<Arc<str>>,
    /// Jobs with ready items, in round-robin order (each at most once).
    startable: VecDeque<Arc<str>>,
    /// Paused as a whole: nothing of this kind is claimed or started.
    paused: bool,
}

/// Room reserved for one job in a claim in flight.
#[derive(Clone)]
struct Claim {
    job_id: Arc<str>,
    kind: String,
    n: u32,
    /// Nothing of the job was claimed by this engine yet: the store may have to mark it
    /// running.
    first: bool,
}

struct ActiveJob {
    ctx: Arc<JobContext>,
    kind: String,
    parallel: u32,
    /// Items running on the worker.
    active: u32,
    /// Items asked for in the claim in flight.
    claiming: u32,
    /// Claimed (`running` in the store) but not started yet.
    ready: VecDeque<ClaimedItem>,
    in_startable: bool,
    /// A claim came back short: no queued items are left.
    exhausted: bool,
    /// Queued items not claimed yet, when known.
    unclaimed: Option<u64>,
    cancelled: bool,
    /// Whether the Tracker has been told the job runs.
    announced: bool,
    counts: Counts,
    started_at: Option<f64>,
    priority: i32,
    /// Nothing is claimed before this time (Unix seconds).
    run_at: Option<f64>,
    /// Paused: running items finish, nothing new is claimed or started.
    paused: bool,
    /// Since when the job has waited with nothing of it starting or finishing (for
    /// [`effective_priority`]).
    waiting_since: f64,
    /// How its failed-by-error items are retried.
    retry: RetryPolicy,
    /// Items waiting out a retry delay: claimable again from these times.
    retry_wakeups: Vec<f64>,
    /// Jobs that must complete before this one starts (not yet seen completed).
    waiting_on: Vec<String>,
    /// Start even when a dependency failed or was cancelled.
    run_on_failure: bool,
    /// When it expires if not finished (Unix seconds).
    deadline: Option<f64>,
    /// The concurrency group its items count against.
    group: Option<String>,
}

impl ActiveJob {
    /// Nothing of this job is in the engine's hands any more.
    fn idle(&self) -> bool {
        self.active == 0 && self.claiming == 0 && self.ready.is_empty()
    }

    /// Whether the job may have items claimed or started now.
    fn runnable(&self, now: f64) -> bool {
        !self.cancelled
            && !self.paused
            && self.waiting_on.is_empty()
            && self.run_at.is_none_or(|t| t <= now)
    }

    /// The level it is served at now.
    fn level(&self, now: f64) -> i64 {
        let since = self
            .run_at
            .map_or(self.waiting_since, |t| t.max(self.waiting_since));
        effective_priority(self.priority, since, now)
    }
}

/// The distinct levels of the listed jobs that pass `filter`, highest first.
fn levels<'a>(
    ids: impl Iterator<Item = &'a Arc<str>>,
    jobs: &HashMap<Arc<str>, ActiveJob>,
    now: f64,
    filter: impl Fn(&ActiveJob) -> bool,
) -> Vec<i64> {
    let mut levels: Vec<i64> = ids
        .filter_map(|id| jobs.get(id))
        .filter(|j| j.runnable(now) && filter(j))
        .map(|j| j.level(now))
        .collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    levels
}

/// Owns the queue; see the module docs.
pub struct Supervisor {
    store: Store,
    tracker: Addr<Tracker>,
    node_id: Arc<str>,
    pending_processors: Vec<(Arc<dyn Processor>, u32)>,
    pending_jobs: Vec<JobRecord>,
    kinds: HashMap<String, KindSlot>,
    arbiters: Vec<ArbiterHandle>,
    jobs: HashMap<Arc<str>, ActiveJob>,
    /// Outcomes waiting for the next group commit.
    finished: Vec<FinishedItem>,
    /// Items claimed or stopped during shutdown, to be put back in the queue.
    to_release: Vec<queries::Release>,
    /// A write is in flight; see [`Supervisor::cycle`].
    writing: bool,
    /// A lingering flush is scheduled.
    flush_scheduled: bool,
    /// The linger is over: the next flush commits whatever is pending.
    flush_due: bool,
    releasing: bool,
    stopping: bool,
    /// Parent of every job's token: cancelling it stops all running items.
    shutdown_token: CancellationToken,
    drained: Vec<oneshot::Sender<()>>,
    /// Counters the Workers update and `GET /metrics` shows.
    metrics: Arc<Metrics>,
    /// Event subscribers; item events are built only while there are some.
    listening: Arc<std::sync::atomic::AtomicUsize>,
    /// Submissions waiting for the next insert transaction (group commit).
    pending_submits: Vec<PendingSubmit>,
    /// Claimed items of paused jobs and kinds, to be put back in the queue by the next
    /// write.
    pending_release: Vec<queries::Release>,
    /// Kinds paused as a whole, before the Workers exist.
    paused_kinds: Vec<String>,
    /// Retried items waiting out their delay, over all jobs.
    retries_waiting: usize,
    /// Jobs others depend on whose state must be read (admitted dependents, ended jobs).
    deps_to_check: Vec<String>,
    /// Jobs still waiting for dependencies.
    waiting_jobs: usize,
    /// Open jobs with a deadline.
    deadlines: usize,
    /// Named concurrency groups.
    groups: HashMap<String, GroupSlot>,
    /// The soonest retry wake-up (a gate for the scan), infinity when none.
    next_retry: f64,
    /// The soonest deadline (a gate for the scan), infinity when none.
    next_deadline: f64,
    /// See [`SupervisorConfig::lease`].
    lease: f64,
    /// See [`SupervisorConfig::cluster`].
    cluster: bool,
    /// What other nodes changed, to be read by the next [`Supervisor::sync`].
    sync_pending: SyncPending,
    /// A sync read is in flight.
    syncing: bool,
    /// Jobs this node changed while a sync read was in flight: that read may predate the
    /// change, so their part of it is dropped and they are read again.
    touched: std::collections::HashSet<String>,
    /// Kinds paused or resumed here while a sync read was in flight.
    touched_kinds: bool,
    /// Slots of shared concurrency groups to take with the next write: (group, limit, n).
    group_acquire: Vec<(String, u32, u32)>,
    /// The next write reads which group slots this node holds and takes that as the
    /// truth (after this node was declared dead).
    reconcile_slots: bool,
    /// The fallback poll's current period (doubles while it finds nothing).
    poll_delay: Duration,
}

/// Changes announced by other nodes (or found missing), accumulated between syncs.
#[derive(Default)]
struct SyncPending {
    all: bool,
    kinds: bool,
    jobs: std::collections::HashSet<String>,
}

/// What a sync read found.
struct Synced {
    /// Full records of jobs named by a notification or open and unknown here.
    records: Vec<JobRecord>,
    /// `(id, paused)` of known open jobs (a full sync).
    open: Vec<(String, bool)>,
    /// Known jobs no longer open.
    ended: Vec<String>,
    /// The kinds paused as a whole, when asked.
    paused_kinds: Option<Vec<String>>,
}

/// The fallback poll's shortest and longest period: LISTEN/NOTIFY wakes nodes at once;
/// the poll only catches what a lost notification (a reconnect) missed.
const POLL_MIN: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_secs(5);

type SubmitReply = oneshot::Sender<Result<JobView, EngineError>>;

/// What a submission became in a write.
enum Inserted {
    /// A new job, stored and queued.
    New(JobRecord),
    /// The job its idempotency key already names.
    Existing(JobRecord),
    /// The key names a job of another kind.
    KeyConflict(JobRecord),
    /// A job it depends on does not exist.
    UnknownDependency(crate::model::FieldError),
}

/// What one write committed.
struct Written {
    /// Jobs whose items were put back in the queue.
    released: Vec<String>,
    done: Vec<String>,
    counts: Vec<(String, Counts)>,
    inserted: Vec<Inserted>,
    claimed: Vec<(Claim, Vec<ClaimedItem>, Option<f64>)>,
    /// Shared group slots taken: (group, asked, got).
    slots: Vec<(String, u32, Vec<i32>)>,
    /// Every group slot this node holds, when the write was asked to read them.
    owned_slots: Option<Vec<(String, i32)>>,
    at: f64,
}

struct PendingSubmit {
    id: String,
    /// Shared with the insert closure, so a retry does not need a copy of a huge job.
    job: Arc<AdmittedJob>,
    reply: SubmitReply,
    /// Insert on its own: a shared insert it was part of failed.
    alone: bool,
}

fn cancelled_outcome(item: &ClaimedItem, t: f64) -> FinishedItem {
    FinishedItem {
        job_id: item.job_id.clone(),
        index: item.index,
        key: item.key.clone(),
        outcome: ItemOutcome::cancelled(json!({"key": item.key, "status": "cancelled"})),
        finished_at: t,
        attempt: item.attempt,
        retry_at: None,
    }
}

/// A random factor in [0, 1] for backoff jitter.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

impl Supervisor {
    /// A Supervisor that will spawn one Worker per processor when started.
    pub fn new(config: SupervisorConfig) -> Self {
        Supervisor {
            store: config.store,
            tracker: config.tracker,
            node_id: config.node_id,
            pending_processors: config.processors,
            pending_jobs: config.open_jobs,
            kinds: HashMap::new(),
            arbiters: Vec::new(),
            jobs: HashMap::new(),
            finished: Vec::new(),
            to_release: Vec::new(),
            writing: false,
            flush_scheduled: false,
            flush_due: false,
            releasing: false,
            stopping: false,
            shutdown_token: CancellationToken::new(),
            drained: Vec::new(),
            pending_submits: Vec::new(),
            metrics: Arc::default(),
            listening: config.listening,
            pending_release: Vec::new(),
            paused_kinds: config.paused_kinds,
            retries_waiting: 0,
            deps_to_check: Vec::new(),
            waiting_jobs: 0,
            deadlines: 0,
            next_retry: f64::INFINITY,
            next_deadline: f64::INFINITY,
            lease: config.lease,
            cluster: config.cluster,
            sync_pending: SyncPending::default(),
            syncing: false,
            touched: Default::default(),
            touched_kinds: false,
            group_acquire: Vec::new(),
            reconcile_slots: false,
            poll_delay: POLL_MIN,
            groups: config
                .groups
                .into_iter()
                .map(|(name, limit)| {
                    (
                        name,
                        GroupSlot {
                            limit,
                            active: 0,
                            shared: config.cluster,
                            held: Vec::new(),
                            releasing: Vec::new(),
                            acquiring: false,
                            starved: false,
                            lost: false,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Starts following an open job. `queued` is how many of its items are queued, when
    /// known (a job just inserted); it spares an empty claim at the end of every job.
    fn admit(&mut self, job: &JobRecord, queued: Option<u64>) {
        let id: Arc<str> = Arc::from(job.id.as_str());
        let deps = job.options.dependencies.clone();
        let deadline = job.options.deadline;
        let ctx = Arc::new(JobContext {
            id: id.clone(),
            options: Arc::new(job.spec.clone()),
            item_timeout: job.options.item_timeout,
            cancel: self.shutdown_token.child_token(),
            progress: ProgressReporter::new(id.clone(), self.tracker.clone()),
        });
        if let Some(slot) = self.kinds.get_mut(&job.kind) {
            slot.claimable.push_back(id.clone());
        }
        self.jobs.insert(
            id,
            ActiveJob {
                ctx,
                kind: job.kind.clone(),
                parallel: job.parallel.max(1),
                active: 0,
                claiming: 0,
                ready: VecDeque::new(),
                in_startable: false,
                exhausted: queued == Some(0),
                unclaimed: queued,
                cancelled: false,
                announced: false,
                counts: job.counts(),
                started_at: job.started_at,
                priority: job.priority,
                run_at: job.run_at,
                paused: job.paused_at.is_some(),
                waiting_since: now(),
                // Checked at submission; a stored job with bad options retries nothing.
                retry: job.options.retry,
                retry_wakeups: Vec::new(),
                waiting_on: deps.jobs.clone(),
                run_on_failure: deps.run_on_failure,
                deadline,
                group: job
                    .options
                    .concurrency_group
                    .clone()
                    .filter(|g| self.groups.contains_key(g)),
            },
        );
        if let Some(d) = deadline {
            self.deadlines += 1;
            self.next_deadline = self.next_deadline.min(d);
        }
        if !deps.jobs.is_empty() {
            self.waiting_jobs += 1;
        }
        self.deps_to_check.extend(deps.jobs);
    }

    /// Remembers when the retried items among committed outcomes become claimable.
    fn note_retries(&mut self, outcomes: &[FinishedItem]) {
        for f in outcomes {
            if let (Some(at), Some(job)) = (f.retry_at, self.jobs.get_mut(f.job_id.as_str())) {
                job.retry_wakeups.push(at);
                self.retries_waiting += 1;
                self.next_retry = self.next_retry.min(at);
            }
        }
    }

    /// Reopens the jobs whose retried items became claimable.
    fn wake_retries(&mut self, t: f64) {
        let due: Vec<Arc<str>> = self
            .jobs
            .iter_mut()
            .filter(|(_, j)| j.retry_wakeups.iter().any(|&at| at <= t))
            .map(|(id, j)| {
                let before = j.retry_wakeups.len();
                j.retry_wakeups.retain(|&at| at > t);
                (id.clone(), before - j.retry_wakeups.len())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|(id, woken)| {
                self.retries_waiting = self.retries_waiting.saturating_sub(woken);
                id
            })
            .collect();
        for id in due {
            self.reopen(&id);
        }
        self.next_retry = self
            .jobs
            .values()
            .flat_map(|j| j.retry_wakeups.iter().copied())
            .fold(f64::INFINITY, f64::min);
    }

    /// Makes a job claimable again after items of it went back to the queue.
    fn reopen(&mut self, job_id: &str) {
        let Some((id, job)) = self.jobs.get_key_value(job_id) else {
            return;
        };
        let (id, kind) = (id.clone(), job.kind.clone());
        if let Some(job) = self.jobs.get_mut(&id) {
            job.exhausted = false;
            job.unclaimed = None;
        }
        if let Some(slot) = self.kinds.get_mut(&kind) {
            if !slot.claimable.contains(&id) {
                slot.claimable.push_back(id);
            }
        }
    }

    /// Takes a job's claimed-but-not-started items back, to be released by the next write.
    fn unready(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        let ready: Vec<ClaimedItem> = job.ready.drain(..).collect();
        if let Some(slot) = self.kinds.get_mut(&job.kind) {
            slot.buffered = slot.buffered.saturating_sub(ready.len() as u32);
        }
        self.pending_release
            .extend(ready.into_iter().map(|i| (i.job_id, i.index, i.attempt)));
    }

    /// Stops following a job that reached a terminal state.
    fn forget(&mut self, job_id: &str) {
        if let Some((id, gone)) = self.jobs.remove_entry(job_id) {
            if gone.deadline.is_some() {
                self.deadlines = self.deadlines.saturating_sub(1);
            }
            self.retries_waiting = self
                .retries_waiting
                .saturating_sub(gone.retry_wakeups.len());
            if !gone.waiting_on.is_empty() {
                self.waiting_jobs = self.waiting_jobs.saturating_sub(1);
            }
            // Only scan for dependents while some job waits for others.
            if self.waiting_jobs > 0
                && self
                    .jobs
                    .values()
                    .any(|j| j.waiting_on.iter().any(|d| **d == *id))
            {
                self.deps_to_check.push(id.to_string());
            }
            self.tracker
                .do_send(ProgressUpdate::Finished { job_id: id });
        }
    }

    /// Reads how the jobs others wait for stand, then lets the waiting jobs start (a
    /// dependency completed) or cancels them (one failed or was cancelled, unless they
    /// run on failure).
    fn resolve_dependencies(&mut self, ctx: &mut Context<Self>) {
        let ids = std::mem::take(&mut self.deps_to_check);
        self.store
            .read(move |conn| {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    let status = queries::get_job_status(conn, &id)?;
                    found.push((id, status));
                }
                Ok(found)
            })
            .into_actor(self)
            .map(|res, act, ctx| {
                let found = match res {
                    Ok(found) => found,
                    Err(e) => {
                        log::error!("could not read dependencies: {e}; retrying");
                        let ids: Vec<String> = act
                            .jobs
                            .values()
                            .flat_map(|j| j.waiting_on.iter().cloned())
                            .collect();
                        act.deps_to_check.extend(ids);
                        return;
                    }
                };
                let mut to_cancel: Vec<(String, String)> = Vec::new();
                for (dep, status) in found {
                    // Gone means pruned by retention, which only deletes finished jobs; its
                    // existence was checked when the dependent was stored.
                    let status = status.unwrap_or(JobStatus::Completed);
                    if !status.is_terminal() {
                        continue; // still open: its end brings it back here
                    }
                    for (id, job) in act.jobs.iter_mut() {
                        if !job.waiting_on.contains(&dep) {
                            continue;
                        }
                        job.waiting_on.retain(|d| *d != dep);
                        if job.waiting_on.is_empty() {
                            act.waiting_jobs = act.waiting_jobs.saturating_sub(1);
                        }
                        if status != JobStatus::Completed && !job.run_on_failure && !job.cancelled {
                            to_cancel.push((
                                id.to_string(),
                                format!("dependency '{dep}' ended {status}"),
                            ));
                        } else {
                            job.waiting_since = now();
                        }
                    }
                }
                for (id, reason) in to_cancel {
                    act.end_for(ctx, id, reason, None);
                }
                act.cycle(ctx);
            })
            .spawn(ctx);
    }

    /// Expires the jobs whose deadline passed: their unfinished items are cancelled
    /// (running ones stopped), their finished results kept, their status `expired`.
    fn expire_overdue(&mut self, ctx: &mut Context<Self>) {
        let t = now();
        let overdue: Vec<(Arc<str>, f64)> = self
            .jobs
            .iter_mut()
            .filter(|(_, j)| !j.cancelled && j.deadline.is_some_and(|d| d <= t))
            .map(|(id, j)| {
                // Once: the store write below settles it.
                let d = j.deadline.take().unwrap_or(t);
                (id.clone(), d)
            })
            .collect();
        self.next_deadline = self
            .jobs
            .values()
            .filter(|j| !j.cancelled)
            .filter_map(|j| j.deadline)
            .fold(f64::INFINITY, f64::min);
        for (id, at) in overdue {
            self.deadlines = self.deadlines.saturating_sub(1);
            let reason = format!("deadline passed at {at:.3}");
            self.end_for(ctx, id.to_string(), reason, Some(at));
        }
    }

    /// Ends a job on the engine's own account, recording why in its `error`: `expired`
    /// when it is for the deadline `deadline`, else `cancelled`.
    fn end_for(
        &mut self,
        ctx: &mut Context<Self>,
        job_id: String,
        reason: String,
        deadline: Option<f64>,
    ) {
        let verb = if deadline.is_some() {
            "expired"
        } else {
            "cancelled"
        };
        log::info!("job {job_id}: {verb}: {reason}");
        let id = job_id.clone();
        let node = self.node_id.clone();
        self.store
            .write(move |conn| {
                let outcome = match deadline {
                    Some(_) => queries::expire_job(conn, &id, &reason, now())?,
                    None => queries::cancel_job_because(conn, &id, &reason, now())?,
                };
                queries::notify(conn, &format!("job:{id}:{node}"))?;
                Ok(outcome)
            })
            .into_actor(self)
            .map(move |res, act, ctx| match res {
                Ok(CancelOutcome::Cancelled { .. }) => {
                    act.touch(&job_id);
                    act.cancel_in_memory(&job_id);
                    act.cycle(ctx);
                }
                Ok(_) => {}
                Err(e) => {
                    log::error!("could not end job {job_id} ({verb}): {e}");
                    // A deadline is tried again by the next cycle.
                    if let (Some(at), Some(job)) = (deadline, act.jobs.get_mut(job_id.as_str())) {
                        job.deadline = Some(at);
                        act.deadlines += 1;
                        act.next_deadline = act.next_deadline.min(at);
                    }
                }
            })
            .spawn(ctx);
    }

    /// Shared concurrency groups (PostgreSQL): decides which slots to take or give back
    /// with the next write. A node wants as many slots as it has items of the group
    /// running or ready to start (up to the limit); slots beyond that go back, and a node
    /// keeps a slot while it has items of the group to run. Returns whether there is
    /// anything to write.
    fn plan_group_slots(&mut self) -> bool {
        if !self.cluster || self.groups.is_empty() {
            return false;
        }
        let t = now();
        // What could start now, per group and kind; a kind's part is capped by its free
        // slots, so a node whose kind is busy with other work does not sit on slots.
        let mut by_kind: HashMap<(&str, &str), u32> = HashMap::new();
        if !self.stopping {
            for job in self.jobs.values() {
                if let Some(g) = &job.group {
                    if job.runnable(t) && !job.ready.is_empty() {
                        let startable =
                            (job.ready.len() as u32).min(job.parallel.saturating_sub(job.active));
                        *by_kind.entry((g.as_str(), job.kind.as_str())).or_default() += startable;
                    }
                }
            }
        }
        let mut demand: HashMap<&str, u32> = HashMap::new();
        for ((group, kind), n) in by_kind {
            let room = self.kinds.get(kind).map_or(0, |k| {
                if k.paused {
                    0
                } else {
                    k.limit.saturating_sub(k.active)
                }
            });
            *demand.entry(group).or_default() += n.min(room);
        }
        let mut due = false;
        for (name, g) in self.groups.iter_mut() {
            let wanted = (g.active + demand.get(name.as_str()).copied().unwrap_or(0)).min(g.limit);
            let held = g.held.len() as u32;
            if held > wanted.max(g.active) && !g.acquiring {
                let surplus = (held - wanted.max(g.active)) as usize;
                let keep = g.held.len() - surplus;
                let freed: Vec<i32> = g.held.drain(keep..).collect();
                g.releasing.extend(freed);
            } else if held < wanted && !g.acquiring && !g.starved && (!g.lost || g.active == 0) {
                g.acquiring = true;
                self.group_acquire
                    .push((name.clone(), g.limit, wanted - held));
            }
            if g.lost && g.active == 0 {
                g.lost = false;
            }
            due |= !g.releasing.is_empty();
        }
        due || !self.group_acquire.is_empty()
    }

    /// Decides how many items to claim from which jobs, reserving buffer room: per kind at
    /// most `max(limit, 32)` items buffered (one more for a job that waits with nothing).
    fn plan_claims(&mut self) -> Vec<Claim> {
        let mut grants: HashMap<Arc<str>, (u32, bool)> = HashMap::new();
        let mut plan = Vec::new();
        let t = now();
        let Supervisor {
            kinds,
            jobs,
            cluster,
            ..
        } = self;
        for (kind, slot) in kinds.iter_mut() {
            if slot.paused {
                continue;
            }
            let target = buffer_target(slot.limit);
            let mut room = target.saturating_sub(slot.buffered);
            // Refill in batches: claim when half the buffer is gone, or at once when slots
            // sit idle with nothing ready.
            // A job that could run another item but has nothing ready or coming is served
            // at once, whatever the buffer holds for other jobs: a small job behind a big
            // one gets items ready, and `start_ready`'s rotation gives it the next free
            // slot. (Bounded look: the rotation brings every job to the front in turn.)
            let idle_slots = slot.active < slot.limit;
            let hungry = slot.claimable.iter().take(HUNGRY_SCAN).any(|id| {
                jobs.get(id).is_some_and(|j| {
                    !j.exhausted
                        && j.runnable(t)
                        && j.ready.is_empty()
                        && j.claiming == 0
                        && j.active < j.parallel
                })
            });
            let starving = (idle_slots && slot.buffered == 0) || hungry;
            if room * 2 < target && !starving {
                continue;
            }
            if room == 0 && hungry {
                room = 1;
            }
            // Highest level first; within a level, one item per job per turn.
            for level in levels(slot.claimable.iter(), jobs, t, |j| !j.exhausted) {
                let mut idle_turns = 0;
                while room > 0 && idle_turns < slot.claimable.len() {
                    let Some(id) = slot.claimable.pop_front() else {
                        break;
                    };
                    let Some(job) = jobs.get_mut(&id).filter(|j| !j.exhausted && !j.cancelled)
                    else {
                        continue; // dropped from the rotation for good
                    };
                    if !job.runnable(t) || job.level(t) != level {
                        idle_turns += 1;
                        slot.claimable.push_back(id);
                        continue;
                    }
                    let claimable_left = job
                        .unclaimed
                        .is_none_or(|left| left > u64::from(job.claiming));
                    // Several nodes share the queue: a node holds no more ready items of
                    // a job than it can start at once, so the others get the rest
                    // instead of idling while one node works through a hoard.
                    let cap = if *cluster {
                        job.parallel.min(target)
                    } else {
                        target
                    };
                    if (job.ready.len() as u32) + job.claiming < cap && claimable_left {
                        job.claiming += 1;
                        slot.buffered += 1;
                        room -= 1;
                        idle_turns = 0;
                        grants.entry(id.clone()).or_insert((0, !job.announced)).0 += 1;
                    } else {
                        idle_turns += 1;
                    }
                    slot.claimable.push_back(id);
                }
            }
            plan.extend(grants.drain().map(|(job_id, (n, first))| Claim {
                job_id,
                kind: kind.clone(),
                n,
                first,
            }));
        }
        plan
    }

    /// The one write path (group commit): in a single transaction it records every
    /// pending outcome, inserts every pending submission and claims items for every free
    /// buffer slot, unless a write is already in flight; whatever arrives meanwhile goes
    /// into the next one. A few outcomes alone wait `FLUSH_LINGER` for company.
    fn cycle(&mut self, ctx: &mut Context<Self>) {
        if !self.deps_to_check.is_empty() {
            self.resolve_dependencies(ctx);
        }
        if self.deadlines > 0 && now() >= self.next_deadline {
            self.expire_overdue(ctx);
        }
        if self.writing {
            return;
        }
        // A submission that failed inside a shared write is retried alone.
        if let Some(i) = self.pending_submits.iter().position(|p| p.alone) {
            let submit = self.pending_submits.remove(i);
            self.write(ctx, Vec::new(), vec![submit], Vec::new());
            return;
        }
        let plan = if self.stopping {
            Vec::new()
        } else {
            let t = now();
            if self.retries_waiting > 0 && t >= self.next_retry {
                self.wake_retries(t);
            }
            self.plan_claims()
        };
        let outcomes_due = !self.finished.is_empty()
            && (self.finished.len() >= FLUSH_BATCH || self.flush_due || self.stopping);
        let slots_due = self.plan_group_slots() || self.reconcile_slots;
        if plan.is_empty()
            && self.pending_submits.is_empty()
            && self.pending_release.is_empty()
            && !outcomes_due
            && !slots_due
        {
            if !self.finished.is_empty() && !self.flush_scheduled {
                self.flush_scheduled = true;
                ctx.run_later(FLUSH_LINGER, |act, ctx| {
                    act.flush_scheduled = false;
                    act.flush_due = true;
                    act.cycle(ctx);
                });
            }
            return;
        }
        self.flush_due = false;
        let outcomes = std::mem::take(&mut self.finished);
        let submits = std::mem::take(&mut self.pending_submits);
        self.write(ctx, outcomes, submits, plan);
    }

    fn write(
        &mut self,
        ctx: &mut Context<Self>,
        outcomes: Vec<FinishedItem>,
        submits: Vec<PendingSubmit>,
        plan: Vec<Claim>,
    ) {
        self.writing = true;
        let releases = std::mem::take(&mut self.pending_release);
        let for_release = releases.clone();
        let outcomes = Arc::new(outcomes);
        let for_store = outcomes.clone();
        let new_jobs: Vec<(String, Arc<AdmittedJob>)> = submits
            .iter()
            .map(|p| (p.id.clone(), p.job.clone()))
            .collect();
        let asked = plan.clone();
        let node = self.node_id.clone();
        let lease = self.lease;
        let acquire = std::mem::take(&mut self.group_acquire);
        let slot_releases: Vec<(String, Vec<i32>)> = self
            .groups
            .iter_mut()
            .filter(|(_, g)| !g.releasing.is_empty())
            .map(|(name, g)| (name.clone(), std::mem::take(&mut g.releasing)))
            .collect();
        let reconcile = std::mem::take(&mut self.reconcile_slots) && self.cluster;
        let for_slots = (acquire.clone(), slot_releases.clone());
        self.store
            .write(move |conn| {
                let t = now();
                // Every job row this write will lock, at once and in one order, so two
                // nodes' writes (and a cancel) never wait for each other crosswise.
                queries::lock_jobs(
                    conn,
                    for_release
                        .iter()
                        .map(|(id, _, _)| id.as_str())
                        .chain(for_store.iter().map(|f| f.job_id.as_str()))
                        .chain(plan.iter().filter(|c| c.first).map(|c| &*c.job_id)),
                )?;
                let mut released: Vec<String> = Vec::new();
                if !for_release.is_empty() {
                    queries::release_items(conn, &for_release, &node, t)?;
                    for (job_id, _, _) in &for_release {
                        if !released.contains(job_id) {
                            released.push(job_id.clone());
                        }
                    }
                }
                let mut done = Vec::new();
                let mut counts = Vec::new();
                if !for_store.is_empty() {
                    let recorded = queries::record_finished(conn, &for_store, &node, t)?;
                    // Other nodes following these jobs stop following them.
                    for id in &recorded.done {
                        queries::notify(conn, &format!("job:{id}:{node}"))?;
                    }
                    done = recorded.done;
                    counts = recorded.counts;
                }
                let mut inserted = Vec::with_capacity(new_jobs.len());
                for (id, job) in &new_jobs {
                    // The single writer makes check-then-insert race-free; a duplicate
                    // in the same write sees the first one's row.
                    let existing = match &job.schedule.idempotency_key {
                        Some(key) => queries::job_by_idempotency_key(conn, key)?,
                        None => None,
                    };
                    let mut missing = None;
                    for (i, dep) in job.options.dependencies.jobs.iter().enumerate() {
                        if queries::get_job_status(conn, dep)?.is_none() {
                            missing = Some((i, dep.clone()));
                            break;
                        }
                    }
                    inserted.push(match existing {
                        Some(e) if e.kind == job.kind => Inserted::Existing(e),
                        Some(e) => Inserted::KeyConflict(e),
                        None if missing.is_some() => {
                            let (i, dep) = missing.unwrap_or_default();
                            Inserted::UnknownDependency(crate::model::FieldError::new(
                                format!("depends_on[{i}]"),
                                format!("no job '{dep}' (a job can only depend on jobs that exist, so dependencies never form a cycle)"),
                            ))
                        }
                        None => {
                            queries::insert_admitted_job(conn, id, job, &job.options, t)?;
                            // Idle nodes wake up and claim from it too.
                            queries::notify(conn, &format!("new:{id}:{node}"))?;
                            Inserted::New(JobRecord::queued(id, job, t))
                        }
                    });
                }
                let (acquire, slot_releases) = for_slots;
                for (group, slots) in &slot_releases {
                    queries::release_group_slots(conn, group, &node, slots)?;
                }
                let mut slots = Vec::with_capacity(acquire.len());
                for (group, limit, n) in acquire {
                    let got = queries::acquire_group_slots(conn, &group, limit, &node, n)?;
                    slots.push((group, n, got));
                }
                let owned_slots = if reconcile {
                    Some(queries::owned_group_slots(conn, &node)?)
                } else {
                    None
                };
                let mut claimed = Vec::with_capacity(plan.len());
                for claim in plan {
                    let items =
                        queries::claim_items(
                            conn,
                            &claim.job_id,
                            claim.n,
                            &node,
                            t,
                            lease,
                            claim.first,
                        )?;
                    // A short claim: items waiting out a retry delay (maybe from before a
                    // restart) must bring the job back when they become claimable.
                    let next = if (items.len() as u32) < claim.n {
                        queries::next_available_at(conn, &claim.job_id, t)?
                    } else {
                        None
                    };
                    claimed.push((claim, items, next));
                }
                Ok(Written {
                    released,
                    done,
                    counts,
                    inserted,
                    claimed,
                    slots,
                    owned_slots,
                    at: t,
                })
            })
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.writing = false;
                match res {
                    Ok(w) => {
                        act.announce_items(&outcomes);
                        act.note_retries(&outcomes);
                        // Wake up when a retried item or a delayed job becomes claimable,
                        // rather than at the next once-a-second pump.
                        let wakeups = outcomes.iter().filter_map(|f| f.retry_at).chain(
                            w.inserted
                                .iter()
                                .flat_map(|i| match i {
                                    Inserted::New(r) => [r.run_at, r.options.deadline],
                                    _ => [None, None],
                                })
                                .flatten(),
                        );
                        // The soonest one; later ones are caught by it or by the pump.
                        let t = now();
                        let soonest = wakeups.filter(|&at| at > t).reduce(f64::min);
                        if let Some(at) = soonest {
                            ctx.run_later(
                                Duration::from_secs_f64((at - t).min(3600.0)),
                                |act, ctx| {
                                    act.flush_due = true;
                                    act.cycle(ctx);
                                },
                            );
                        }
                        act.written(w, submits)
                    }
                    Err(e) => {
                        let shared = submits.len() > 1 || !outcomes.is_empty() || !asked.is_empty();
                        log::error!(
                            "a write of {} outcomes, {} submissions and {} claims failed: {e}",
                            outcomes.len(),
                            submits.len(),
                            asked.len()
                        );
                        for claim in &asked {
                            act.settle_claim(claim);
                            // A job cancelled while this claim was in flight waited for it.
                            if act
                                .jobs
                                .get(&claim.job_id)
                                .is_some_and(|j| j.cancelled && j.idle())
                            {
                                act.forget(&claim.job_id);
                            }
                        }
                        act.pending_release.extend(releases);
                        act.reconcile_slots |= reconcile;
                        for (group, _, _) in &acquire {
                            if let Some(g) = act.groups.get_mut(group) {
                                g.acquiring = false;
                            }
                        }
                        for (group, slots) in slot_releases {
                            if let Some(g) = act.groups.get_mut(&group) {
                                g.releasing.extend(slots);
                            }
                        }
                        // Outcomes go back in front, to be retried.
                        let mut retry: Vec<FinishedItem> = outcomes.iter().cloned().collect();
                        retry.append(&mut act.finished);
                        act.finished = retry;
                        for p in submits {
                            if shared {
                                act.pending_submits.push(PendingSubmit { alone: true, ..p });
                            } else {
                                let _ = p.reply.send(Err(EngineError::Store(e.to_string().into())));
                            }
                        }
                        act.check_drained(ctx);
                        ctx.run_later(RETRY_DELAY, |act, ctx| {
                            act.flush_due = true;
                            act.cycle(ctx);
                        });
                        return;
                    }
                }
                act.start_ready();
                act.check_drained(ctx);
                act.cycle(ctx);
            })
            .spawn(ctx);
    }

    /// Tells the Tracker which items were just committed, when anyone listens.
    fn announce_items(&self, outcomes: &[FinishedItem]) {
        if outcomes.is_empty() || self.listening.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return;
        }
        let mut by_job: HashMap<&str, Vec<(u32, String, ItemStatus)>> = HashMap::new();
        for f in outcomes.iter().filter(|f| f.retry_at.is_none()) {
            by_job.entry(f.job_id.as_str()).or_default().push((
                f.index,
                f.key.clone(),
                f.outcome.status,
            ));
        }
        for (job_id, items) in by_job {
            self.tracker.do_send(ProgressUpdate::ItemsFinished {
                job_id: Arc::from(job_id),
                items,
            });
        }
    }

    /// Applies a committed write to the in-memory state and answers the submitters.
    fn written(&mut self, w: Written, submits: Vec<PendingSubmit>) {
        for (group, asked, got) in &w.slots {
            if let Some(g) = self.groups.get_mut(group) {
                g.acquiring = false;
                g.starved = (got.len() as u32) < *asked;
                g.held.extend(got);
            }
        }
        if let Some(owned) = &w.owned_slots {
            for (name, g) in self.groups.iter_mut() {
                g.held = owned
                    .iter()
                    .filter(|(group, _)| group == name)
                    .map(|(_, slot)| *slot)
                    .collect();
            }
        }
        if self.syncing {
            for id in &w.done {
                self.touch(id);
            }
            for inserted in &w.inserted {
                if let Inserted::New(r) = inserted {
                    self.touch(&r.id);
                }
            }
        }
        for job_id in &w.released {
            self.reopen(job_id);
        }
        for (job_id, c) in w.counts {
            if let Some(job) = self.jobs.get_mut(job_id.as_str()) {
                job.counts = c;
                self.tracker.do_send(ProgressUpdate::Counts {
                    job_id: job.ctx.id.clone(),
                    counts: c,
                });
            }
        }
        for job_id in w.done {
            match self.jobs.get(job_id.as_str()) {
                // Items of it still run here (claims rescued from this node while it was
                // cut off): stop them; the job is forgotten once they are back.
                Some(job) if !job.idle() => self.cancel_in_memory(&job_id),
                _ => self.forget(&job_id),
            }
        }
        for (inserted, pending) in w.inserted.into_iter().zip(submits) {
            let answer = match inserted {
                Inserted::New(record) => {
                    let queued = record.total;
                    // A sync may have admitted it already (it read the committed row first).
                    if !self.jobs.contains_key(record.id.as_str()) {
                        self.admit(&record, Some(queued));
                    }
                    Ok(JobView {
                        record,
                        live: None,
                        replayed: false,
                    })
                }
                Inserted::Existing(record) => Ok(JobView {
                    record,
                    live: None,
                    replayed: true,
                }),
                Inserted::KeyConflict(record) => Err(EngineError::Conflict(format!(
                    "idempotency key already used by job '{}' of kind '{}'",
                    record.id, record.kind
                ))),
                Inserted::UnknownDependency(e) => Err(e.into()),
            };
            let _ = pending.reply.send(answer);
        }
        for (claim, items, next) in w.claimed {
            if let (Some(at), Some(job)) = (next, self.jobs.get_mut(&claim.job_id)) {
                if !job.retry_wakeups.contains(&at) {
                    job.retry_wakeups.push(at);
                    self.retries_waiting += 1;
                    self.next_retry = self.next_retry.min(at);
                }
            }
            self.take_claimed(&claim, items, w.at);
        }
    }

    /// Ends the reservation a claim made. The kind's room is given back even when the job
    /// was finalized and forgotten while the claim was in flight.
    fn settle_claim(&mut self, claim: &Claim) {
        if let Some(slot) = self.kinds.get_mut(&claim.kind) {
            slot.buffered = slot.buffered.saturating_sub(claim.n);
        }
        if let Some(job) = self.jobs.get_mut(&claim.job_id) {
            job.claiming = job.claiming.saturating_sub(claim.n);
        }
    }

    /// Puts claimed items in their job's ready queue (or straight back, or cancelled).
    fn take_claimed(&mut self, claim: &Claim, items: Vec<ClaimedItem>, t: f64) {
        self.settle_claim(claim);
        let job_id = &claim.job_id;
        let got = items.len() as u32;
        let stopping = self.stopping;
        let Some(job) = self.jobs.get_mut(job_id) else {
            if got > 0 {
                log::error!(
                    "claimed {got} items for unknown job {job_id}; they are recovered at next start"
                );
            }
            return;
        };
        if let Some(left) = job.unclaimed.as_mut() {
            *left = left.saturating_sub(u64::from(got));
        }
        if got < claim.n || job.unclaimed == Some(0) {
            job.exhausted = true;
        }
        // Cancellation wins over shutdown: a cancelled job's items never go back to the queue.
        if job.cancelled {
            self.finished
                .extend(items.iter().map(|i| cancelled_outcome(i, t)));
            if job.idle() && got == 0 {
                self.forget(job_id);
            }
            return;
        }
        if stopping {
            // Claimed while shutdown began: put them straight back.
            self.to_release
                .extend(items.into_iter().map(|i| (i.job_id, i.index, i.attempt)));
            return;
        }
        let kind_paused = self.kinds.get(&claim.kind).is_some_and(|k| k.paused);
        if job.paused || kind_paused {
            // Paused while the claim was in flight: back to the queue with the next write.
            self.pending_release
                .extend(items.into_iter().map(|i| (i.job_id, i.index, i.attempt)));
            return;
        }
        if got == 0 {
            return;
        }
        if !job.announced {
            job.announced = true;
            self.tracker.do_send(ProgressUpdate::Started {
                job_id: job_id.clone(),
                counts: job.counts,
                started_at: job.started_at.unwrap_or(t),
            });
        }
        job.ready.extend(items);
        let slot = self
            .kinds
            .get_mut(&claim.kind)
            .expect("claims name a registered kind");
        slot.buffered += got;
        if !job.in_startable {
            job.in_startable = true;
            slot.startable.push_back(job_id.clone());
        }
    }

    /// Starts ready items while their kind and job have free slots.
    fn start_ready(&mut self) {
        if self.stopping {
            return;
        }
        let t = now();
        let Supervisor {
            kinds,
            jobs,
            groups,
            ..
        } = self;
        // A job whose group is full waits like one at its own `parallel`.
        let group_open = |groups: &HashMap<String, GroupSlot>, j: &ActiveJob| {
            j.group
                .as_ref()
                .and_then(|g| groups.get(g))
                .is_none_or(GroupSlot::open)
        };
        for slot in kinds.values_mut() {
            if slot.paused || slot.active >= slot.limit {
                continue;
            }
            let mut batches: HashMap<Arc<str>, Vec<ClaimedItem>> = HashMap::new();
            // Highest level first; within a level, one item per job per turn.
            let open = |j: &ActiveJob| {
                j.active < j.parallel && !j.ready.is_empty() && group_open(groups, j)
            };
            for level in levels(slot.startable.iter(), jobs, t, open) {
                let mut idle_turns = 0;
                while slot.active < slot.limit && idle_turns < slot.startable.len() {
                    let Some(id) = slot.startable.pop_front() else {
                        break;
                    };
                    let Some(job) = jobs.get_mut(&id) else {
                        continue;
                    };
                    if job.ready.is_empty() {
                        // Its ready items were taken back (paused): out of the rotation,
                        // without counting as a turn.
                        job.in_startable = false;
                        continue;
                    }
                    if job.active < job.parallel
                        && job.runnable(t)
                        && job.level(t) == level
                        && group_open(groups, job)
                    {
                        if let Some(item) = job.ready.pop_front() {
                            if let Some(g) = job.group.as_ref().and_then(|g| groups.get_mut(g)) {
                                g.active += 1;
                            }
                            job.active += 1;
                            job.waiting_since = t;
                            slot.active += 1;
                            slot.buffered -= 1;
                            batches.entry(id.clone()).or_default().push(item);
                            idle_turns = 0;
                        }
                    } else {
                        idle_turns += 1;
                    }
                    if job.ready.is_empty() {
                        job.in_startable = false;
                    } else {
                        slot.startable.push_back(id);
                    }
                }
            }
            for (id, items) in batches {
                let job = &jobs[&id];
                slot.worker.do_send(RunItems {
                    job: job.ctx.clone(),
                    items,
                });
            }
        }
    }

    /// During shutdown, answers the waiters once nothing is in flight anymore.
    fn check_drained(&mut self, ctx: &mut Context<Self>) {
        if !self.stopping || self.drained.is_empty() {
            return;
        }
        let active: u32 = self.kinds.values().map(|k| k.active).sum();
        if active > 0 || self.writing || self.releasing || !self.finished.is_empty() {
            return;
        }
        if !self.to_release.is_empty() {
            self.releasing = true;
            let items = std::mem::take(&mut self.to_release);
            let node = self.node_id.clone();
            self.store
                .write(move |conn| {
                    queries::lock_jobs(conn, items.iter().map(|(id, _, _)| id.as_str()))?;
                    queries::release_items(conn, &items, &node, now())
                })
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.releasing = false;
                    match res {
                        Ok(n) => log::info!("shutdown: put {n} interrupted items back in the queue"),
                        Err(e) => log::error!(
                            "shutdown: could not requeue interrupted items ({e}); they are recovered at next start"
                        ),
                    }
                    act.check_drained(ctx);
                })
                .spawn(ctx);
            return;
        }
        for waiter in self.drained.drain(..) {
            let _ = waiter.send(());
        }
    }
}

impl Actor for Supervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        for (processor, limit) in std::mem::take(&mut self.pending_processors) {
            let kind = processor.kind().to_string();
            let paused = self.paused_kinds.contains(&kind);
            let supervisor = ctx.address();
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
            self.kinds.insert(
                kind,
                KindSlot {
                    processor,
                    worker,
                    limit: limit.max(1),
                    active: 0,
                    buffered: 0,
                    claimable: VecDeque::new(),
                    startable: VecDeque::new(),
                    paused,
                },
            );
        }
        for job in std::mem::take(&mut self.pending_jobs) {
            if self.can_run_here(&job) {
                self.admit(&job, None);
                continue;
            }
            if self.kinds.contains_key(&job.kind) {
                // Its concurrency group is not configured here (cluster only).
                continue;
            }
            if self.cluster {
                // Another node of the cluster may serve this kind.
                log::info!(
                    "job {}: no processor for kind '{}' on this node; left to the others",
                    job.id,
                    job.kind
                );
                continue;
            }
            let error = format!("no processor registered for kind '{}'", job.kind);
            log::warn!("job {}: {error}; marking it failed", job.id);
            let id = job.id.clone();
            let ended: Arc<str> = Arc::from(job.id.as_str());
            self.store
                .write(move |conn| queries::fail_job(conn, &id, &error, now()))
                .into_actor(self)
                .map(move |res, act, _| match res {
                    // Event streams opened meanwhile saw the job queued: tell them it ended.
                    Ok(()) => {
                        act.deps_to_check.push(ended.to_string());
                        act.tracker
                            .do_send(ProgressUpdate::Finished { job_id: ended })
                    }
                    Err(e) => log::error!("could not mark a job failed: {e}"),
                })
                .spawn(ctx);
        }
        ctx.run_interval(PUMP_INTERVAL, |act, ctx| {
            act.flush_due = true;
            // A missed `groups` notification costs at most one pump interval.
            for g in act.groups.values_mut() {
                g.starved = false;
            }
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
        if self.stopping {
            return Box::pin(fut::ready(Err(EngineError::ShuttingDown)));
        }
        let options = match crate::submission::check_job(&job, &self.admission_rules(&job.kind)) {
            Ok(options) => options,
            Err(refusal) => return Box::pin(fut::ready(Err(refusal.into()))),
        };
        let (reply, answer) = oneshot::channel();
        self.pending_submits.push(PendingSubmit {
            id: new_job_id(&job.kind),
            job: Arc::new(AdmittedJob { job, options }),
            reply,
            alone: false,
        });
        self.cycle(ctx);
        Box::pin(fut::wrap_future(async move {
            answer.await.unwrap_or(Err(EngineError::ShuttingDown))
        }))
    }
}

impl Handler<ItemFinished> for Supervisor {
    type Result = ();

    fn handle(&mut self, ItemFinished(mut item): ItemFinished, ctx: &mut Self::Context) {
        let mut release = false;
        if let Some(job) = self.jobs.get_mut(item.job_id.as_str()) {
            // An item stopped by shutdown (not by its job's cancellation) goes back.
            // So does one that failed by an error it could retry: the next start retries it.
            release = self.stopping
                && !job.cancelled
                && (item.outcome.status == ItemStatus::Cancelled
                    || (item.outcome.retryable
                        && item.outcome.status == ItemStatus::Failed
                        && item.attempt < job.retry.max_attempts));
            job.active = job.active.saturating_sub(1);
            if let Some(g) = job.group.as_ref().and_then(|g| self.groups.get_mut(g)) {
                g.active = g.active.saturating_sub(1);
            }
            let t = now();
            job.waiting_since = t;
            if item.outcome.retryable
                && item.outcome.status == ItemStatus::Failed
                && !job.cancelled
                && !self.stopping
                && item.attempt < job.retry.max_attempts
            {
                item.retry_at = Some(t + job.retry.backoff(item.attempt, jitter()));
            }
            if let Some(slot) = self.kinds.get_mut(&job.kind) {
                slot.active = slot.active.saturating_sub(1);
            }
        }
        if release {
            self.to_release
                .push((item.job_id, item.index, item.attempt));
        } else {
            self.finished.push(item);
        }
        self.start_ready();
        self.cycle(ctx);
        self.check_drained(ctx);
    }
}

impl Handler<CancelJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<CancelOutcome, EngineError>>;

    fn handle(&mut self, msg: CancelJob, _: &mut Self::Context) -> Self::Result {
        let job_id = msg.job_id;
        let id = job_id.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    let outcome = queries::cancel_job(conn, &id, now())?;
                    // Nodes running items of it stop them.
                    queries::notify(conn, &format!("job:{id}:{node}"))?;
                    Ok(outcome)
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let outcome = res?;
                    if let CancelOutcome::Cancelled { .. } = outcome {
                        act.touch(&job_id);
                        act.cancel_in_memory(&job_id);
                        act.cycle(ctx);
                    }
                    Ok(outcome)
                }),
        )
    }
}

impl Supervisor {
    /// After the store cancelled a job: stop its running items, record its ready ones as
    /// cancelled, and forget it once nothing of it is left in the engine.
    fn cancel_in_memory(&mut self, job_id: &str) {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return;
        };
        job.cancelled = true;
        // Fires every running item's token: their processes are killed now.
        job.ctx.cancel.cancel();
        let t = now();
        let ready: Vec<ClaimedItem> = job.ready.drain(..).collect();
        if let Some(slot) = self.kinds.get_mut(&job.kind) {
            slot.buffered = slot.buffered.saturating_sub(ready.len() as u32);
        }
        if ready.is_empty() && job.idle() {
            // Nothing runs any more and the cancelling transaction built the result. With
            // ready items, the commit of their cancelled outcomes finalizes the job and
            // forgets it then, so the end event carries the final job.
            self.forget(job_id);
        }
        self.finished
            .extend(ready.iter().map(|i| cancelled_outcome(i, t)));
    }
}

impl Handler<GetJob> for Supervisor {
    type Result = ResponseFuture<Result<Option<JobView>, EngineError>>;

    fn handle(&mut self, msg: GetJob, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let id = msg.job_id;
            let Some(record) = store.read(move |conn| queries::get_job(conn, &id)).await? else {
                return Ok(None);
            };
            let mut views = with_live(&tracker, vec![record]).await;
            Ok(views.pop())
        })
    }
}

impl Handler<ListJobs> for Supervisor {
    type Result = ResponseFuture<Result<JobPage, EngineError>>;

    fn handle(&mut self, msg: ListJobs, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let (records, total) = store
                .read(move |conn| {
                    queries::list_jobs(conn, msg.status, msg.kind.as_deref(), msg.limit, msg.offset)
                })
                .await?;
            Ok(JobPage {
                jobs: with_live(&tracker, records).await,
                total,
            })
        })
    }
}

/// Joins stored jobs with the Tracker's live progress for those still running.
async fn with_live(tracker: &Addr<Tracker>, records: Vec<JobRecord>) -> Vec<JobView> {
    let open: Vec<String> = records
        .iter()
        .filter(|r| r.status == JobStatus::Running)
        .map(|r| r.id.clone())
        .collect();
    let mut live = if open.is_empty() {
        HashMap::new()
    } else {
        tracker
            .send(GetProgress { job_ids: open })
            .await
            .unwrap_or_default()
    };
    records
        .into_iter()
        .map(|record| JobView {
            live: live.remove(&record.id),
            record,
            replayed: false,
        })
        .collect()
}

impl Handler<ListItems> for Supervisor {
    type Result = ResponseFuture<Result<Option<ItemPage>, EngineError>>;

    fn handle(&mut self, msg: ListItems, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let page = store
                .read(move |conn| {
                    if queries::get_job_status(conn, &msg.job_id)?.is_none() {
                        return Ok(None);
                    }
                    let (items, total) =
                        queries::list_items(conn, &msg.job_id, msg.status, msg.limit, msg.offset)?;
                    Ok(Some(ItemPage { items, total }))
                })
                .await?;
            Ok(page)
        })
    }
}

impl Handler<ReadResults> for Supervisor {
    type Result = ResponseFuture<Result<Option<Vec<queries::ResultRow>>, EngineError>>;

    fn handle(&mut self, msg: ReadResults, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            Ok(store
                .read(move |conn| {
                    if queries::get_job_status(conn, &msg.job_id)?.is_none() {
                        return Ok(None);
                    }
                    queries::result_rows_after(conn, &msg.job_id, msg.after, msg.limit as i64)
                        .map(Some)
                })
                .await?)
        })
    }
}

impl Handler<GetMetrics> for Supervisor {
    type Result = ResponseFuture<Result<String, EngineError>>;

    fn handle(&mut self, _: GetMetrics, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let metrics = self.metrics.clone();
        let mut running: Vec<(String, u32, u32)> = self
            .kinds
            .iter()
            .map(|(kind, slot)| (kind.clone(), slot.active, slot.limit))
            .collect();
        running.sort();
        // The queue depth counts items waiting to start: those claimed into the ready
        // buffer still wait, only the ones running leave it.
        let held: u64 = self.jobs.values().map(|j| u64::from(j.active)).sum();
        Box::pin(async move {
            let (stats, unfinished) = store
                .read(|conn| {
                    Ok((
                        queries::queue_stats(conn)?,
                        queries::unfinished_items(conn)?,
                    ))
                })
                .await?;
            let snapshot = Snapshot {
                jobs: vec![
                    ("queued", stats.queued),
                    ("running", stats.running),
                    ("completed", stats.completed),
                    ("failed", stats.failed),
                    ("cancelled", stats.cancelled),
                    ("expired", stats.expired),
                ],
                queued_items: unfinished.saturating_sub(held),
                running,
                store_writes: store.write_latency(),
            };
            Ok(crate::metrics::render(&snapshot, &metrics))
        })
    }
}

impl Handler<Subscribe> for Supervisor {
    type Result = ResponseFuture<tokio::sync::mpsc::Receiver<crate::actors::tracker::TrackerEvent>>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let tracker = self.tracker.clone();
        Box::pin(async move {
            tracker.send(msg).await.unwrap_or_else(|_| {
                // No Tracker: a receiver that is already closed ends the stream at once.
                tokio::sync::mpsc::channel(1).1
            })
        })
    }
}

impl Handler<GetStats> for Supervisor {
    type Result = ResponseFuture<Result<QueueStats, EngineError>>;

    fn handle(&mut self, _: GetStats, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { Ok(store.read(queries::queue_stats).await?) })
    }
}

impl Handler<Ping> for Supervisor {
    type Result = ResponseFuture<Result<(), EngineError>>;

    fn handle(&mut self, _: Ping, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { Ok(store.read(queries::ping).await?) })
    }
}

impl Handler<Shutdown> for Supervisor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, msg: Shutdown, ctx: &mut Self::Context) -> Self::Result {
        self.stopping = true;
        // Claimed but never started: straight back to the queue (the store turns those of
        // jobs cancelled meanwhile into cancelled items).
        for job in self.jobs.values_mut() {
            job.in_startable = false;
            self.to_release
                .extend(job.ready.drain(..).map(|i| (i.job_id, i.index, i.attempt)));
        }
        for slot in self.kinds.values_mut() {
            slot.startable.clear();
        }
        let (tx, rx) = oneshot::channel();
        self.drained.push(tx);
        let token = self.shutdown_token.clone();
        ctx.run_later(msg.grace, move |_, _| {
            log::info!("shutdown: grace period over, stopping running items");
            token.cancel();
        });
        self.cycle(ctx);
        self.check_drained(ctx);
        Box::pin(async move {
            let _ = rx.await;
        })
    }
}

impl Handler<PauseJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<queries::PauseOutcome, EngineError>>;

    fn handle(&mut self, msg: PauseJob, _: &mut Self::Context) -> Self::Result {
        let PauseJob { job_id, paused } = msg;
        let id = job_id.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    let outcome = queries::set_job_paused(conn, &id, paused, now())?;
                    queries::notify(conn, &format!("job:{id}:{node}"))?;
                    Ok(outcome)
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let outcome = res?;
                    if let queries::PauseOutcome::Done(_) = &outcome {
                        act.touch(&job_id);
                        if let Some(job) = act.jobs.get_mut(job_id.as_str()) {
                            job.paused = paused;
                            job.waiting_since = now();
                        }
                        if paused {
                            act.unready(&job_id);
                        }
                        act.start_ready();
                        act.cycle(ctx);
                    }
                    Ok(outcome)
                }),
        )
    }
}

impl Supervisor {
    /// Pauses or resumes a kind here: paused, its jobs' ready items go back to the queue.
    fn pause_kind_in_memory(&mut self, kind: &str, paused: bool) {
        if let Some(slot) = self.kinds.get_mut(kind) {
            slot.paused = paused;
        }
        if paused {
            let of_kind: Vec<Arc<str>> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.kind == kind)
                .map(|(id, _)| id.clone())
                .collect();
            for id in of_kind {
                self.unready(&id);
            }
        } else {
            let t = now();
            for job in self.jobs.values_mut().filter(|j| j.kind == kind) {
                job.waiting_since = t;
            }
        }
    }

    fn kind_info(&self, kind: &str) -> Option<KindInfo> {
        self.kinds.get(kind).map(|slot| KindInfo {
            kind: kind.to_string(),
            limit: slot.limit,
            running: slot.active,
            paused: slot.paused,
        })
    }
}

impl Handler<PauseKind> for Supervisor {
    type Result = ResponseActFuture<Self, Result<KindInfo, EngineError>>;

    fn handle(&mut self, msg: PauseKind, _: &mut Self::Context) -> Self::Result {
        let PauseKind { kind, paused } = msg;
        if !self.kinds.contains_key(&kind) {
            return Box::pin(fut::ready(Err(EngineError::NoProcessor(kind))));
        }
        let k = kind.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    queries::set_kind_paused(conn, &k, paused, now())?;
                    queries::notify(conn, &format!("kinds::{node}"))
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res?;
                    act.touched_kinds |= act.syncing;
                    act.pause_kind_in_memory(&kind, paused);
                    act.start_ready();
                    act.cycle(ctx);
                    act.kind_info(&kind)
                        .ok_or_else(|| EngineError::NoProcessor(kind.clone()))
                }),
        )
    }
}

impl Handler<ListKinds> for Supervisor {
    type Result = MessageResult<ListKinds>;

    fn handle(&mut self, _: ListKinds, _: &mut Self::Context) -> Self::Result {
        let mut kinds: Vec<&String> = self.kinds.keys().collect();
        kinds.sort();
        MessageResult(
            kinds
                .into_iter()
                .filter_map(|k| self.kind_info(k))
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_raises_the_level_one_step_per_aging_period() {
        let t = 1_000.0;
        assert_eq!(effective_priority(0, t, t), 0);
        assert_eq!(effective_priority(-5, t, t + AGING_SECS - 0.1), -5);
        assert_eq!(effective_priority(-5, t, t + AGING_SECS), -4);
        // A job of priority 0 that waited ten periods is served beside fresh priority-10 work.
        assert_eq!(
            effective_priority(0, t, t + 10.0 * AGING_SECS),
            effective_priority(10, t + 10.0 * AGING_SECS, t + 10.0 * AGING_SECS)
        );
        // A clock that moved back never lowers a level.
        assert_eq!(effective_priority(3, t, t - 100.0), 3);
    }
}

impl Handler<RetryJob> for Supervisor {
    type Result = ResponseActFuture<Self, Result<queries::RetryOutcome, EngineError>>;

    fn handle(&mut self, msg: RetryJob, _: &mut Self::Context) -> Self::Result {
        let RetryJob { job_id, statuses } = msg;
        if self.stopping {
            return Box::pin(fut::ready(Err(EngineError::ShuttingDown)));
        }
        if self.jobs.contains_key(job_id.as_str()) {
            // Finished in the store but still stopping here (cancelled, items winding down).
            return Box::pin(fut::ready(Err(EngineError::Conflict(format!(
                "job '{job_id}' is still stopping; retry it once it has"
            )))));
        }
        let id = job_id.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    let outcome = queries::retry_job(conn, &id, &statuses)?;
                    queries::notify(conn, &format!("job:{id}:{node}"))?;
                    Ok(outcome)
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let outcome = res?;
                    if let queries::RetryOutcome::Requeued { items, job } = &outcome {
                        act.touch(&job_id);
                        if act.kinds.contains_key(&job.kind)
                            && !act.jobs.contains_key(job_id.as_str())
                        {
                            if let Some(slot) = act.kinds.get_mut(&job.kind) {
                                // A stale rotation entry would give it two turns.
                                slot.claimable.retain(|id| **id != *job_id);
                                slot.startable.retain(|id| **id != *job_id);
                            }
                            act.admit(job, Some(*items));
                            act.cycle(ctx);
                        }
                    }
                    Ok(outcome)
                }),
        )
    }
}

impl Supervisor {
    /// Whether this node may run a job of the shared queue: it registers the kind, and it
    /// knows the job's concurrency group (running its items without the group's slots
    /// would break the group's limit for the whole cluster).
    fn can_run_here(&self, job: &JobRecord) -> bool {
        if !self.kinds.contains_key(&job.kind) {
            return false;
        }
        match job.options.concurrency_group.as_deref() {
            Some(g) if self.cluster && !self.groups.contains_key(g) => {
                log::warn!(
                    "job {}: concurrency group '{g}' is not configured on this node; left to the nodes that have it (--concurrency-group {g}=N)",
                    job.id
                );
                false
            }
            _ => true,
        }
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
        let ids: Vec<Arc<str>> = self.jobs.keys().cloned().collect();
        for id in ids {
            self.unready(&id);
            self.reopen(&id);
        }
        self.reconcile_slots = true;
        for g in self.groups.values_mut() {
            g.lost = g.active > 0;
        }
        self.cycle(ctx);
    }
}

impl Handler<ClusterSync> for Supervisor {
    type Result = ();

    fn handle(&mut self, msg: ClusterSync, ctx: &mut Self::Context) {
        self.sync_pending.all |= msg.all;
        self.sync_pending.kinds |= msg.kinds;
        self.sync_pending.jobs.extend(msg.jobs);
        if msg.groups {
            // A slot was freed somewhere: groups that found none ask again.
            for g in self.groups.values_mut() {
                g.starved = false;
            }
            self.cycle(ctx);
        }
        self.sync(ctx);
    }
}

impl Supervisor {
    /// The fallback poll: a full sync now and then, sooner after one that found changes.
    fn schedule_poll(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.poll_delay, |act, ctx| {
            act.sync_pending.all = true;
            act.sync(ctx);
            act.schedule_poll(ctx);
        });
    }

    /// Reads what other nodes changed (jobs they submitted, ended, paused or requeued;
    /// kinds they paused) and follows it here: unknown open jobs are admitted, ended ones
    /// stopped (their running items cancelled), pauses applied, requeued ones reopened.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.syncing || self.stopping {
            return;
        }
        let pending = std::mem::take(&mut self.sync_pending);
        if !pending.all && !pending.kinds && pending.jobs.is_empty() {
            return;
        }
        self.syncing = true;
        let known: std::collections::HashSet<String> = if pending.all {
            self.jobs.keys().map(|id| id.to_string()).collect()
        } else {
            Default::default()
        };
        let full = pending.all;
        self.store
            .read(move |conn| {
                let mut synced = Synced {
                    records: Vec::new(),
                    open: Vec::new(),
                    ended: Vec::new(),
                    paused_kinds: None,
                };
                let mut asked = pending.jobs;
                if pending.all {
                    let open = queries::open_job_states(conn)?;
                    let open_ids: std::collections::HashSet<&str> =
                        open.iter().map(|(id, _)| id.as_str()).collect();
                    synced.ended = known
                        .iter()
                        .filter(|id| !open_ids.contains(id.as_str()))
                        .cloned()
                        .collect();
                    for (id, paused) in open {
                        if known.contains(&id) {
                            synced.open.push((id, paused));
                        } else {
                            asked.insert(id);
                        }
                    }
                }
                for id in asked {
                    if let Some(record) = queries::get_job(conn, &id)? {
                        synced.records.push(record);
                    }
                }
                if pending.kinds || pending.all {
                    synced.paused_kinds = Some(queries::paused_kinds(conn)?);
                }
                Ok(synced)
            })
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.syncing = false;
                match res {
                    Ok(synced) => {
                        let changed = act.follow(synced);
                        if full {
                            act.poll_delay = if changed {
                                POLL_MIN
                            } else {
                                (act.poll_delay * 2).min(POLL_MAX)
                            };
                        }
                    }
                    Err(e) => {
                        log::warn!("could not read the shared queue: {e}; retrying");
                        act.sync_pending.all = true;
                        act.touched.clear();
                        act.touched_kinds = false;
                    }
                }
                act.start_ready();
                act.cycle(ctx);
                if act.sync_pending.all
                    || act.sync_pending.kinds
                    || !act.sync_pending.jobs.is_empty()
                {
                    act.sync(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Notes a job this node changed in the store (see `touched`).
    fn touch(&mut self, job_id: &str) {
        if self.syncing {
            self.touched.insert(job_id.to_string());
        }
    }

    /// Applies a sync read; returns whether anything changed here.
    fn follow(&mut self, mut synced: Synced) -> bool {
        let touched = std::mem::take(&mut self.touched);
        if !touched.is_empty() {
            synced.records.retain(|r| !touched.contains(&r.id));
            synced.open.retain(|(id, _)| !touched.contains(id));
            synced.ended.retain(|id| !touched.contains(id));
            self.sync_pending.jobs.extend(touched);
        }
        if std::mem::take(&mut self.touched_kinds) && synced.paused_kinds.is_some() {
            synced.paused_kinds = None;
            self.sync_pending.kinds = true;
        }
        let mut changed = false;
        for record in &synced.records {
            let paused = record.paused_at.is_some();
            changed |= self.follow_job(&record.id, record.status, paused, Some(record));
        }
        for (id, paused) in &synced.open {
            changed |= self.follow_job(id, JobStatus::Running, *paused, None);
        }
        for id in &synced.ended {
            if self.jobs.contains_key(id.as_str()) {
                self.cancel_in_memory(id);
                changed = true;
            }
        }
        if let Some(paused) = synced.paused_kinds {
            let flips: Vec<(String, bool)> = self
                .kinds
                .iter()
                .filter(|(kind, slot)| slot.paused != paused.contains(*kind))
                .map(|(kind, slot)| (kind.clone(), !slot.paused))
                .collect();
            for (kind, now_paused) in flips {
                self.pause_kind_in_memory(&kind, now_paused);
                changed = true;
            }
        }
        changed
    }

    /// Follows one job's stored state (see [`Supervisor::sync`]).
    fn follow_job(
        &mut self,
        id: &str,
        status: JobStatus,
        paused: bool,
        record: Option<&JobRecord>,
    ) -> bool {
        if status.is_terminal() {
            if self.jobs.contains_key(id) {
                // Ended elsewhere (cancelled, expired, finished): stop what runs here.
                self.cancel_in_memory(id);
                return true;
            }
            return false;
        }
        let Some(job) = self.jobs.get_mut(id) else {
            return match record {
                Some(r) if self.can_run_here(r) => {
                    self.admit(r, None);
                    true
                }
                _ => false,
            };
        };
        if job.cancelled {
            // Retried elsewhere after it was cancelled here: once nothing of the old run
            // is left here, follow the reopened job afresh.
            if let Some(r) = record.filter(|_| job.idle()) {
                let r = r.clone();
                self.forget(id);
                if let Some(slot) = self.kinds.get_mut(&r.kind) {
                    slot.claimable.retain(|c| **c != *id);
                    slot.startable.retain(|c| **c != *id);
                }
                self.admit(&r, None);
                return true;
            }
            return false;
        }
        if paused != job.paused {
            job.paused = paused;
            job.waiting_since = now();
            if paused {
                self.unready(id);
            } else {
                self.reopen(id);
            }
            return true;
        }
        if job.exhausted && job.claiming == 0 {
            // Items may have gone back to the queue elsewhere (a rescue, a retry): look.
            self.reopen(id);
        }
        false
    }
}

/// Checks a job as [`SubmitJob`] would (every admission check,
/// [`crate::submission::check_job`]) without storing anything: cron schedules check their
/// job template with it.
#[derive(Message)]
#[rtype(result = "Result<(), EngineError>")]
pub struct ValidateJob(pub NewJob);

impl Handler<ValidateJob> for Supervisor {
    type Result = Result<(), EngineError>;

    fn handle(&mut self, ValidateJob(job): ValidateJob, _: &mut Self::Context) -> Self::Result {
        crate::submission::check_job(&job, &self.admission_rules(&job.kind))?;
        Ok(())
    }
}

impl Supervisor {
    /// What a job of `kind` is admitted against: its processor and the configured groups.
    fn admission_rules(&self, kind: &str) -> crate::submission::AdmissionRules<'_> {
        crate::submission::AdmissionRules {
            processor: self.kinds.get(kind).map(|slot| &*slot.processor),
            groups: self.groups.keys().map(String::as_str).collect(),
        }
    }
}
