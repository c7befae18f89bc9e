//! The group-commit cycle: one write path for everything the Supervisor changes in the
//! store as part of running jobs. Outcomes, submissions, claims, releases and group slots
//! pending at once go into one transaction ([`crate::store::commit`]); at most one such
//! write is in flight, and whatever arrives meanwhile waits for the next one. `cycle` is
//! the single entry point, called whenever something may have become due.

use super::groups::SlotAsk;
use super::rotation::{Claim, Start};
use super::Supervisor;
use crate::model::{
    new_job_id, now, AdmittedJob, ClaimedItem, FinishedItem, ItemOutcome, ItemStatus,
};
use crate::queue::messages::{EngineError, JobView, ProgressUpdate};
use crate::store::commit::{self as transaction, Batch, ClaimAsk, Committed, Inserted};
use crate::store::items::Release;
use crate::store::StoreError;
use actix::prelude::*;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

/// How long finished outcomes may wait for company before a commit, when few are pending.
const FLUSH_LINGER: Duration = Duration::from_millis(2);
/// Pending outcomes that make a commit start at once.
const FLUSH_BATCH: usize = 64;
/// Pause before retrying a failed store write.
const RETRY_DELAY: Duration = Duration::from_millis(500);

type SubmitReply = oneshot::Sender<Result<JobView, EngineError>>;

/// A submission waiting for its insert.
pub(super) struct PendingSubmit {
    id: String,
    /// Shared with the insert closure, so a retry does not need a copy of a huge job.
    job: Arc<AdmittedJob>,
    reply: SubmitReply,
    /// A shared write it was part of failed: the next write inserts it inside a savepoint
    /// of its own, so that if it fails again it fails alone and the rest commits.
    isolated: bool,
}

/// What waits for the next group commit, and where the commit stands.
///
/// The three flags are independent facts, not phases of one state: a write may be in
/// flight while a linger timer runs, and the pump may make outcomes due while either is
/// the case.
#[derive(Default)]
pub(super) struct Pipeline {
    /// Outcomes waiting for the next group commit.
    pub(super) finished: Vec<FinishedItem>,
    /// Submissions waiting for the next insert transaction.
    pub(super) submits: Vec<PendingSubmit>,
    /// Claimed items of paused jobs and kinds, to be put back in the queue by the next
    /// write.
    pub(super) releases: Vec<Release>,
    /// Items picked to start: their start is written first and their processors begin
    /// only once it committed, so an attempt is charged exactly when an item runs.
    pub(super) starting: Vec<Start>,
    /// A write is in flight: nothing else is written until it is back.
    pub(super) writing: bool,
    /// A linger timer runs (`FLUSH_LINGER`); when it fires, the outcomes become due.
    pub(super) linger_armed: bool,
    /// The next write commits whatever outcomes are pending, however few (set by the end
    /// of a linger, the pump, a retry after a failed write, a timed wake-up).
    pub(super) flush_due: bool,
}

/// What a write took from the Supervisor, kept to apply its result or to undo it.
struct InFlight {
    outcomes: Arc<Vec<FinishedItem>>,
    submits: Vec<PendingSubmit>,
    claims: Vec<Claim>,
    releases: Vec<Release>,
    starting: Vec<Start>,
    slot_asks: Vec<SlotAsk>,
    slot_releases: Vec<(String, Vec<i32>)>,
    reconcile: bool,
}

/// The outcome recorded for a claimed item of a cancelled job, with the engine's reason
/// as its error when it gave one (a spent token budget).
pub(super) fn cancelled_because(item: &ClaimedItem, t: f64, reason: Option<&str>) -> FinishedItem {
    let mut outcome = ItemOutcome::cancelled(json!({"key": item.key, "status": "cancelled"}));
    if let Some(r) = reason {
        outcome.error = Some(r.to_string());
    }
    FinishedItem {
        job_id: item.job_id.clone(),
        index: item.index,
        key: item.key.clone(),
        outcome,
        finished_at: t,
        attempt: item.attempt,
        retry_at: None,
    }
}

impl Supervisor {
    /// Queues a checked submission for the next write; the receiver gets the stored job.
    pub(super) fn queue_submission(
        &mut self,
        job: AdmittedJob,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<Result<JobView, EngineError>> {
        let (reply, answer) = oneshot::channel();
        self.pipeline.submits.push(PendingSubmit {
            id: new_job_id(&job.kind),
            job: Arc::new(job),
            reply,
            isolated: false,
        });
        self.cycle(ctx);
        answer
    }

    /// The one write path (group commit): in a single transaction it records every
    /// pending outcome, inserts every pending submission and claims items for every free
    /// buffer slot, unless a write is already in flight; whatever arrives meanwhile goes
    /// into the next one. A few outcomes alone wait `FLUSH_LINGER` for company.
    pub(super) fn cycle(&mut self, ctx: &mut Context<Self>) {
        if !self.gates.deps_to_check.is_empty() {
            self.resolve_dependencies(ctx);
        }
        if self.gates.deadline_due() {
            self.expire_overdue(ctx);
        }
        if !self.gates.token_seeds.is_empty() {
            self.seed_tokens(ctx);
        }
        if self.pipeline.writing {
            return;
        }
        let stopping = self.drain.stopping();
        let plan = if stopping {
            Vec::new()
        } else {
            let t = now();
            if self.gates.retry_due(t) {
                self.wake_retries(t);
            }
            self.rotation.plan_claims(self.cluster, now())
        };
        let pipeline = &self.pipeline;
        let outcomes_due = !pipeline.finished.is_empty()
            && (pipeline.finished.len() >= FLUSH_BATCH || pipeline.flush_due || stopping);
        let slots_due = self.plan_group_slots() || self.groups.reconcile;
        if plan.is_empty()
            && self.pipeline.submits.is_empty()
            && self.pipeline.releases.is_empty()
            && self.pipeline.starting.is_empty()
            && !outcomes_due
            && !slots_due
        {
            if !self.pipeline.finished.is_empty() && !self.pipeline.linger_armed {
                self.pipeline.linger_armed = true;
                ctx.run_later(FLUSH_LINGER, |act, ctx| {
                    act.pipeline.linger_armed = false;
                    act.pipeline.flush_due = true;
                    act.cycle(ctx);
                });
            }
            return;
        }
        self.pipeline.flush_due = false;
        let outcomes = std::mem::take(&mut self.pipeline.finished);
        let submits = std::mem::take(&mut self.pipeline.submits);
        self.write(ctx, outcomes, submits, plan);
    }

    /// Shared concurrency groups (PostgreSQL): plans the slots to take or give back with
    /// the next write; returns whether there is anything to write.
    fn plan_group_slots(&mut self) -> bool {
        if !self.groups.plans_slots() {
            return false;
        }
        let demand = if self.drain.stopping() {
            HashMap::new()
        } else {
            self.rotation.group_demand(now())
        };
        self.groups.plan(&demand)
    }

    /// Starts one write of these outcomes, submissions and claims, with the pending
    /// releases and group slot changes.
    fn write(
        &mut self,
        ctx: &mut Context<Self>,
        outcomes: Vec<FinishedItem>,
        submits: Vec<PendingSubmit>,
        claims: Vec<Claim>,
    ) {
        self.pipeline.writing = true;
        let sent = InFlight {
            outcomes: Arc::new(outcomes),
            submits,
            claims,
            releases: std::mem::take(&mut self.pipeline.releases),
            starting: std::mem::take(&mut self.pipeline.starting),
            slot_asks: std::mem::take(&mut self.groups.acquire),
            slot_releases: self.groups.take_releases(),
            reconcile: std::mem::take(&mut self.groups.reconcile) && self.cluster,
        };
        let batch = Batch {
            node: self.node_id.clone(),
            lease: self.lease,
            releases: sent.releases.clone(),
            starts: sent
                .starting
                .iter()
                .flat_map(|(_, _, items)| items.iter())
                .map(|i| (i.job_id.clone(), i.index, i.attempt))
                .collect(),
            outcomes: sent.outcomes.clone(),
            submissions: sent
                .submits
                .iter()
                .map(|p| (p.id.clone(), p.job.clone()))
                .collect(),
            isolate_submissions: sent.submits.iter().any(|p| p.isolated),
            slot_releases: sent.slot_releases.clone(),
            slot_asks: sent.slot_asks.clone(),
            read_owned_slots: sent.reconcile,
            claims: sent
                .claims
                .iter()
                .map(|c| ClaimAsk {
                    job_id: c.job_id.clone(),
                    n: c.n,
                    first: c.first,
                })
                .collect(),
        };
        self.store
            .write(move |conn| transaction::commit(conn, batch))
            .into_actor(self)
            .map(move |res, act, ctx| {
                act.pipeline.writing = false;
                match res {
                    Ok(committed) => act.committed(ctx, committed, sent),
                    Err(e) => act.write_failed(ctx, e, sent),
                }
            })
            .spawn(ctx);
    }

    /// A write committed: apply it, start what became ready, and go on.
    fn committed(&mut self, ctx: &mut Context<Self>, committed: Committed, mut sent: InFlight) {
        self.run_started(std::mem::take(&mut sent.starting));
        self.announce_items(&sent.outcomes);
        self.note_retries(&sent.outcomes);
        self.wake_later(ctx, &sent.outcomes, &committed.inserted);
        self.written(committed, sent.submits, sent.claims);
        self.start_ready();
        self.check_drained(ctx);
        self.cycle(ctx);
    }

    /// Wakes up when a retried item or a delayed job becomes claimable, or a new job's
    /// deadline passes, rather than at the next once-a-second pump.
    fn wake_later(
        &mut self,
        ctx: &mut Context<Self>,
        outcomes: &[FinishedItem],
        inserted: &[Inserted],
    ) {
        let wakeups = outcomes.iter().filter_map(|f| f.retry_at).chain(
            inserted
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
            ctx.run_later(Duration::from_secs_f64((at - t).min(3600.0)), |act, ctx| {
                act.pipeline.flush_due = true;
                act.cycle(ctx);
            });
        }
    }

    /// A write failed: everything it took goes back to be written again. A submission
    /// that shared the write is retried at once inside a savepoint of its own (if it was
    /// the cause, only it fails then, and nobody else waits out a retry delay); one alone,
    /// or one that already had its own savepoint, is answered with the error.
    fn write_failed(&mut self, ctx: &mut Context<Self>, e: StoreError, sent: InFlight) {
        let InFlight {
            outcomes,
            submits,
            claims: asked,
            releases,
            starting,
            slot_asks,
            slot_releases,
            reconcile,
        } = sent;
        let shared = submits.len() > 1 || !outcomes.is_empty() || !asked.is_empty();
        log::error!(
            "a write of {} outcomes, {} submissions and {} claims failed: {e}",
            outcomes.len(),
            submits.len(),
            asked.len()
        );
        for claim in &asked {
            self.rotation.settle_claim(claim);
            // A job cancelled while this claim was in flight waited for it.
            if self
                .rotation
                .jobs
                .get(&claim.job_id)
                .is_some_and(|j| j.cancelled && j.idle())
            {
                self.forget(&claim.job_id);
            }
        }
        self.pipeline.releases.extend(releases);
        // Starts go back in front: their processors begin once a write records them.
        let mut again = starting;
        again.append(&mut self.pipeline.starting);
        self.pipeline.starting = again;
        self.groups.reconcile |= reconcile;
        self.groups.failed(&slot_asks, slot_releases);
        // Outcomes go back in front, to be retried.
        let mut retry: Vec<FinishedItem> = outcomes.iter().cloned().collect();
        retry.append(&mut self.pipeline.finished);
        self.pipeline.finished = retry;
        let mut isolating = false;
        for p in submits {
            if shared && !p.isolated {
                isolating = true;
                self.pipeline.submits.push(PendingSubmit {
                    isolated: true,
                    ..p
                });
            } else {
                let _ = p.reply.send(Err(EngineError::Store(e.to_string().into())));
            }
        }
        self.check_drained(ctx);
        let delay = if isolating {
            Duration::ZERO
        } else {
            RETRY_DELAY
        };
        ctx.run_later(delay, |act, ctx| {
            act.pipeline.flush_due = true;
            act.cycle(ctx);
        });
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
    fn written(&mut self, w: Committed, submits: Vec<PendingSubmit>, claims: Vec<Claim>) {
        self.groups.committed(&w.slots, w.owned_slots.as_ref());
        if self.following.syncing() {
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
            self.rotation.reopen(job_id);
        }
        for (job_id, c) in w.counts {
            if let Some(job) = self.rotation.jobs.get_mut(job_id.as_str()) {
                job.counts = c;
                self.tracker.do_send(ProgressUpdate::Counts {
                    job_id: job.ctx.id.clone(),
                    counts: c,
                });
            }
        }
        for job_id in w.done {
            match self.rotation.jobs.get(job_id.as_str()) {
                // Items of it still run here (claims rescued from this node while it was
                // cut off): stop them; the job is forgotten once they are back.
                Some(job) if !job.idle() => self.cancel_in_memory(&job_id),
                _ => self.forget(&job_id),
            }
        }
        for (inserted, pending) in w.inserted.into_iter().zip(submits) {
            let answer = self.answer(inserted);
            let _ = pending.reply.send(answer);
        }
        for (claim, (items, next)) in claims.into_iter().zip(w.claimed) {
            if let (Some(at), Some(job)) = (next, self.rotation.jobs.get_mut(&claim.job_id)) {
                if !job.retry_wakeups.contains(&at) {
                    job.retry_wakeups.push(at);
                    self.gates.retry_at(at);
                }
            }
            self.take_claimed(&claim, items, w.at);
        }
    }

    /// What a submission's insert answers; a new job is followed from now on.
    fn answer(&mut self, inserted: Inserted) -> Result<JobView, EngineError> {
        match inserted {
            Inserted::New(record) => {
                let queued = record.total;
                // A sync may have admitted it already (it read the committed row first).
                if !self.rotation.jobs.contains_key(record.id.as_str()) {
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
            Inserted::Failed(e) => Err(EngineError::Store(e.to_string().into())),
        }
    }

    /// Puts claimed items in their job's ready queue (or straight back, or cancelled).
    fn take_claimed(&mut self, claim: &Claim, items: Vec<ClaimedItem>, t: f64) {
        self.rotation.settle_claim(claim);
        let job_id = &claim.job_id;
        let got = items.len() as u32;
        let stopping = self.drain.stopping();
        let Some(job) = self.rotation.jobs.get_mut(job_id) else {
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
            let reason = job.stop_reason.as_deref();
            self.pipeline
                .finished
                .extend(items.iter().map(|i| cancelled_because(i, t, reason)));
            if job.idle() && got == 0 {
                self.forget(job_id);
            }
            return;
        }
        if stopping {
            // Claimed while shutdown began: put them straight back.
            self.drain
                .to_release
                .extend(items.into_iter().map(|i| (i.job_id, i.index, i.attempt)));
            return;
        }
        let kind_paused = self
            .rotation
            .kinds
            .get(&claim.kind)
            .is_some_and(|k| k.paused);
        if job.paused || kind_paused {
            // Paused while the claim was in flight: back to the queue with the next write.
            self.pipeline
                .releases
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
            .rotation
            .kinds
            .get_mut(&claim.kind)
            .expect("claims name a registered kind");
        slot.buffered += got;
        if !job.in_startable {
            job.in_startable = true;
            slot.startable.push_back(job_id.clone());
        }
    }
}
