//! A job's life after admission, beyond claiming and starting: finished items and their
//! retries, deadlines, dependencies between jobs, cancel, pause (of a job or a kind) and
//! the retry of a finished job. [`Gates`] keeps the counters and soonest times that spare
//! the cycle a scan over every job when nothing waits.

use super::commit::cancelled_because;
use super::Supervisor;
use crate::model::{now, ClaimedItem, FinishedItem, ItemStatus, JobStatus};
use crate::queue::messages::{EngineError, KindInfo, ProgressUpdate};
use crate::store::{self, job_control::CancelOutcome};
use actix::prelude::*;
use std::sync::Arc;

/// Why the engine ends a job on its own account.
#[derive(Debug, Clone, Copy)]
pub(super) enum Ending {
    /// A dependency did not complete: `cancelled`.
    Dependency,
    /// Its deadline (Unix seconds) passed: `expired`.
    Deadline(f64),
    /// Its `max_total_tokens` is spent: `cancelled`, its unstarted items naming the budget.
    Budget,
}

/// What waits on a time or on another job, counted so the cycle looks only when due.
pub(super) struct Gates {
    /// Retried items waiting out their delay, over all jobs.
    pub(super) retries_waiting: usize,
    /// The soonest retry wake-up (a gate for the scan), infinity when none.
    pub(super) next_retry: f64,
    /// Open jobs with a deadline.
    pub(super) deadlines: usize,
    /// The soonest deadline (a gate for the scan), infinity when none.
    pub(super) next_deadline: f64,
    /// Jobs still waiting for dependencies.
    pub(super) waiting_jobs: usize,
    /// Jobs others depend on whose state must be read (admitted dependents, ended jobs).
    pub(super) deps_to_check: Vec<String>,
    /// Jobs just admitted that ran before, whose spent tokens must be read.
    pub(super) token_seeds: Vec<Arc<str>>,
}

impl Default for Gates {
    fn default() -> Self {
        Gates {
            retries_waiting: 0,
            next_retry: f64::INFINITY,
            deadlines: 0,
            next_deadline: f64::INFINITY,
            waiting_jobs: 0,
            deps_to_check: Vec::new(),
            token_seeds: Vec::new(),
        }
    }
}

impl Gates {
    /// One more retried item becomes claimable at `at`.
    pub(super) fn retry_at(&mut self, at: f64) {
        self.retries_waiting += 1;
        self.next_retry = self.next_retry.min(at);
    }

    /// One more open job expires at `at`.
    pub(super) fn deadline_set(&mut self, at: f64) {
        self.deadlines += 1;
        self.next_deadline = self.next_deadline.min(at);
    }

    /// Whether a retried item may have become claimable by `t`.
    pub(super) fn retry_due(&self, t: f64) -> bool {
        self.retries_waiting > 0 && t >= self.next_retry
    }

    /// Whether a deadline may have passed.
    pub(super) fn deadline_due(&self) -> bool {
        self.deadlines > 0 && now() >= self.next_deadline
    }
}

/// A random factor in [0, 1] for backoff jitter.
fn jitter() -> f64 {
    (uuid::Uuid::new_v4().as_u128() >> 75) as f64 / (1u64 << 53) as f64
}

impl Supervisor {
    /// An item finished on a Worker: free its slots, decide whether it is retried (or,
    /// during shutdown, put back in the queue), and queue its outcome for the next write.
    pub(super) fn item_finished(&mut self, mut item: FinishedItem, ctx: &mut Context<Self>) {
        let mut release = false;
        let stopping = self.drain.stopping();
        if let Some(job) = self.rotation.jobs.get_mut(item.job_id.as_str()) {
            // An item stopped by shutdown (not by its job's cancellation) goes back.
            // So does one that failed by an error it could retry: the next start retries it.
            release = stopping
                && !job.cancelled
                && (item.outcome.status == ItemStatus::Cancelled
                    || (item.outcome.retryable
                        && item.outcome.status == ItemStatus::Failed
                        && item.attempt < job.retry.max_attempts));
            job.active = job.active.saturating_sub(1);
            if let Some(g) = job
                .group
                .as_ref()
                .and_then(|g| self.groups.slots.get_mut(g))
            {
                g.active = g.active.saturating_sub(1);
            }
            let t = now();
            job.waiting_since = t;
            if item.outcome.retryable
                && item.outcome.status == ItemStatus::Failed
                && !job.cancelled
                && !stopping
                && item.attempt < job.retry.max_attempts
            {
                item.retry_at = Some(t + job.retry.backoff(item.attempt, jitter()));
            }
            if let Some(slot) = self.rotation.kinds.get_mut(&job.kind) {
                slot.active = slot.active.saturating_sub(1);
            }
        }
        self.count_tokens(&item, ctx);
        if release {
            self.drain
                .to_release
                .push((item.job_id, item.index, item.attempt));
        } else {
            self.pipeline.finished.push(item);
        }
        self.start_ready();
        self.cycle(ctx);
        self.check_drained(ctx);
    }

    /// Remembers when the retried items among committed outcomes become claimable.
    pub(super) fn note_retries(&mut self, outcomes: &[FinishedItem]) {
        for f in outcomes {
            if let (Some(at), Some(job)) =
                (f.retry_at, self.rotation.jobs.get_mut(f.job_id.as_str()))
            {
                job.retry_wakeups.push(at);
                self.gates.retry_at(at);
            }
        }
    }

    /// Reopens the jobs whose retried items became claimable.
    pub(super) fn wake_retries(&mut self, t: f64) {
        let due: Vec<Arc<str>> = self
            .rotation
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
                self.gates.retries_waiting = self.gates.retries_waiting.saturating_sub(woken);
                id
            })
            .collect();
        for id in due {
            self.rotation.reopen(&id);
        }
        self.gates.next_retry = self
            .rotation
            .jobs
            .values()
            .flat_map(|j| j.retry_wakeups.iter().copied())
            .fold(f64::INFINITY, f64::min);
    }

    /// Takes a job's claimed-but-not-started items back, to be released by the next write.
    pub(super) fn unready(&mut self, job_id: &str) {
        let released = self.rotation.unready(job_id);
        self.pipeline.releases.extend(released);
    }

    /// Stops following a job that reached a terminal state.
    pub(super) fn forget(&mut self, job_id: &str) {
        if let Some((id, gone)) = self.rotation.jobs.remove_entry(job_id) {
            if gone.deadline.is_some() {
                self.gates.deadlines = self.gates.deadlines.saturating_sub(1);
            }
            self.gates.retries_waiting = self
                .gates
                .retries_waiting
                .saturating_sub(gone.retry_wakeups.len());
            if !gone.waiting_on.is_empty() {
                self.gates.waiting_jobs = self.gates.waiting_jobs.saturating_sub(1);
            }
            // Only scan for dependents while some job waits for others.
            if self.gates.waiting_jobs > 0
                && self
                    .rotation
                    .jobs
                    .values()
                    .any(|j| j.waiting_on.iter().any(|d| **d == *id))
            {
                self.gates.deps_to_check.push(id.to_string());
            }
            self.tracker
                .do_send(ProgressUpdate::Finished { job_id: id });
        }
    }

    /// Reads how the jobs others wait for stand, then lets the waiting jobs start (a
    /// dependency completed) or cancels them (one failed or was cancelled, unless they
    /// run on failure).
    pub(super) fn resolve_dependencies(&mut self, ctx: &mut Context<Self>) {
        let ids = std::mem::take(&mut self.gates.deps_to_check);
        self.store
            .read(move |conn| {
                let mut found = Vec::with_capacity(ids.len());
                for id in ids {
                    let status = store::jobs::get_job_status(conn, &id)?;
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
                            .rotation
                            .jobs
                            .values()
                            .flat_map(|j| j.waiting_on.iter().cloned())
                            .collect();
                        act.gates.deps_to_check.extend(ids);
                        return;
                    }
                };
                act.dependencies_read(ctx, found);
            })
            .spawn(ctx);
    }

    /// Applies what `resolve_dependencies` read.
    fn dependencies_read(
        &mut self,
        ctx: &mut Context<Self>,
        found: Vec<(String, Option<JobStatus>)>,
    ) {
        let mut to_cancel: Vec<(String, String)> = Vec::new();
        for (dep, status) in found {
            // Gone means pruned by retention, which only deletes finished jobs; its
            // existence was checked when the dependent was stored.
            let status = status.unwrap_or(JobStatus::Completed);
            if !status.is_terminal() {
                continue; // still open: its end brings it back here
            }
            for (id, job) in self.rotation.jobs.iter_mut() {
                if !job.waiting_on.contains(&dep) {
                    continue;
                }
                job.waiting_on.retain(|d| *d != dep);
                if job.waiting_on.is_empty() {
                    self.gates.waiting_jobs = self.gates.waiting_jobs.saturating_sub(1);
                }
                if status != JobStatus::Completed && !job.run_on_failure && !job.cancelled {
                    to_cancel.push((id.to_string(), format!("dependency '{dep}' ended {status}")));
                } else {
                    job.waiting_since = now();
                }
            }
        }
        for (id, reason) in to_cancel {
            self.end_for(ctx, id, reason, Ending::Dependency);
        }
        self.cycle(ctx);
    }

    /// Expires the jobs whose deadline passed: their unfinished items are cancelled
    /// (running ones stopped), their finished results kept, their status `expired`.
    pub(super) fn expire_overdue(&mut self, ctx: &mut Context<Self>) {
        let t = now();
        let overdue: Vec<(Arc<str>, f64)> = self
            .rotation
            .jobs
            .iter_mut()
            .filter(|(_, j)| !j.cancelled && j.deadline.is_some_and(|d| d <= t))
            .map(|(id, j)| {
                // Once: the store write below settles it.
                let d = j.deadline.take().unwrap_or(t);
                (id.clone(), d)
            })
            .collect();
        self.gates.next_deadline = self
            .rotation
            .jobs
            .values()
            .filter(|j| !j.cancelled)
            .filter_map(|j| j.deadline)
            .fold(f64::INFINITY, f64::min);
        for (id, at) in overdue {
            self.gates.deadlines = self.gates.deadlines.saturating_sub(1);
            let reason = format!("deadline passed at {at:.3}");
            self.end_for(ctx, id.to_string(), reason, Ending::Deadline(at));
        }
    }

    /// Ends a job on the engine's own account, recording why in its `error`: `expired`
    /// for its deadline, else `cancelled`.
    pub(super) fn end_for(
        &mut self,
        ctx: &mut Context<Self>,
        job_id: String,
        reason: String,
        ending: Ending,
    ) {
        let verb = match ending {
            Ending::Deadline(_) => "expired",
            Ending::Dependency | Ending::Budget => "cancelled",
        };
        log::info!("job {job_id}: {verb}: {reason}");
        let id = job_id.clone();
        let node = self.node_id.clone();
        self.store
            .write(move |conn| {
                let t = now();
                let outcome = match ending {
                    Ending::Deadline(_) => store::job_control::expire_job(conn, &id, &reason, t)?,
                    Ending::Dependency => {
                        store::job_control::cancel_job_because(conn, &id, &reason, t)?
                    }
                    Ending::Budget => store::job_control::stop_job_because(conn, &id, &reason, t)?,
                };
                store::notice::notify(conn, &format!("job:{id}:{node}"))?;
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
                    if let (Ending::Deadline(at), Some(job)) =
                        (ending, act.rotation.jobs.get_mut(job_id.as_str()))
                    {
                        job.deadline = Some(at);
                        act.gates.deadline_set(at);
                    }
                }
            })
            .spawn(ctx);
    }

    /// Cancels a job in the store, then stops it here.
    pub(super) fn cancel_job(
        &mut self,
        job_id: String,
    ) -> ResponseActFuture<Self, Result<CancelOutcome, EngineError>> {
        let id = job_id.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    let outcome = store::job_control::cancel_job(conn, &id, now())?;
                    // Nodes running items of it stop them.
                    store::notice::notify(conn, &format!("job:{id}:{node}"))?;
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

    /// After the store cancelled a job: stop its running items, record its ready ones as
    /// cancelled, and forget it once nothing of it is left in the engine.
    pub(super) fn cancel_in_memory(&mut self, job_id: &str) {
        let Some(job) = self.rotation.jobs.get_mut(job_id) else {
            return;
        };
        job.cancelled = true;
        // Fires every running item's token: their processes are killed now.
        job.ctx.cancel.cancel();
        let t = now();
        let ready: Vec<ClaimedItem> = job.ready.drain(..).collect();
        let reason = job.stop_reason.clone();
        if let Some(slot) = self.rotation.kinds.get_mut(&job.kind) {
            slot.buffered = slot.buffered.saturating_sub(ready.len() as u32);
        }
        if ready.is_empty() && job.idle() {
            // Nothing runs any more and the cancelling transaction built the result. With
            // ready items, the commit of their cancelled outcomes finalizes the job and
            // forgets it then, so the end event carries the final job.
            self.forget(job_id);
        }
        self.pipeline.finished.extend(
            ready
                .iter()
                .map(|i| cancelled_because(i, t, reason.as_deref())),
        );
    }

    /// Pauses or resumes a job in the store, then here.
    pub(super) fn pause_job(
        &mut self,
        job_id: String,
        paused: bool,
    ) -> ResponseActFuture<Self, Result<store::job_control::PauseOutcome, EngineError>> {
        let id = job_id.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    let outcome = store::job_control::set_job_paused(conn, &id, paused, now())?;
                    store::notice::notify(conn, &format!("job:{id}:{node}"))?;
                    Ok(outcome)
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let outcome = res?;
                    if let store::job_control::PauseOutcome::Done(_) = &outcome {
                        act.touch(&job_id);
                        if let Some(job) = act.rotation.jobs.get_mut(job_id.as_str()) {
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

    /// Pauses or resumes a kind here: paused, its jobs' ready items go back to the queue.
    pub(super) fn pause_kind_in_memory(&mut self, kind: &str, paused: bool) {
        if let Some(slot) = self.rotation.kinds.get_mut(kind) {
            slot.paused = paused;
        }
        if paused {
            let of_kind: Vec<Arc<str>> = self
                .rotation
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
            for job in self.rotation.jobs.values_mut().filter(|j| j.kind == kind) {
                job.waiting_since = t;
            }
        }
    }

    /// Pauses or resumes a kind in the store, then here.
    pub(super) fn pause_kind(
        &mut self,
        kind: String,
        paused: bool,
    ) -> ResponseActFuture<Self, Result<KindInfo, EngineError>> {
        if !self.rotation.kinds.contains_key(&kind) {
            return Box::pin(fut::ready(Err(EngineError::NoProcessor(kind))));
        }
        let k = kind.clone();
        let node = self.node_id.clone();
        Box::pin(
            self.store
                .write(move |conn| {
                    store::job_control::set_kind_paused(conn, &k, paused, now())?;
                    store::notice::notify(conn, &format!("kinds::{node}"))
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    res?;
                    act.following.touch_kinds();
                    act.pause_kind_in_memory(&kind, paused);
                    act.start_ready();
                    act.cycle(ctx);
                    act.kind_info(&kind)
                        .ok_or_else(|| EngineError::NoProcessor(kind.clone()))
                }),
        )
    }

    /// Requeues a finished job's items of these statuses in the store, then follows it.
    pub(super) fn retry_job(
        &mut self,
        job_id: String,
        statuses: Vec<ItemStatus>,
    ) -> ResponseActFuture<Self, Result<store::job_control::RetryOutcome, EngineError>> {
        if self.drain.stopping() {
            return Box::pin(fut::ready(Err(EngineError::ShuttingDown)));
        }
        if self.rotation.jobs.contains_key(job_id.as_str()) {
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
                    let outcome = store::job_control::retry_job(conn, &id, &statuses)?;
                    store::notice::notify(conn, &format!("job:{id}:{node}"))?;
                    Ok(outcome)
                })
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let outcome = res?;
                    if let store::job_control::RetryOutcome::Requeued { items, job } = &outcome {
                        act.touch(&job_id);
                        if act.rotation.kinds.contains_key(&job.kind)
                            && !act.rotation.jobs.contains_key(job_id.as_str())
                        {
                            if let Some(slot) = act.rotation.kinds.get_mut(&job.kind) {
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
