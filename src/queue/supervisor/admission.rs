//! Admission: the checks a job passes before anything is stored (a submission, or a
//! schedule's template), and following a stored job once it is open (`admit`). The option
//! checks live here together so that they change in one place.

use super::rotation::ActiveJob;
use super::Supervisor;
use crate::model::{now, AdmittedJob, JobRecord, NewJob};
use crate::processor::ProgressReporter;
use crate::queue::messages::{EngineError, JobContext, ProgressUpdate};
use crate::store;
use crate::submission::{check_job, AdmissionRules};
use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;

impl Supervisor {
    /// Whether a submission may be queued: the engine is not stopping, and the one
    /// admission check ([`crate::submission::check_job`]) passes; answers the job with its
    /// options read once.
    pub(super) fn check_submission(&self, job: NewJob) -> Result<AdmittedJob, EngineError> {
        if self.drain.stopping() {
            return Err(EngineError::ShuttingDown);
        }
        let options = check_job(&job, &self.admission_rules(&job.kind))?;
        Ok(AdmittedJob { job, options })
    }

    /// What a job of `kind` is admitted against here: its processor and the configured
    /// concurrency groups.
    pub(super) fn admission_rules(&self, kind: &str) -> AdmissionRules<'_> {
        AdmissionRules {
            processor: self.workers.get(kind).map(|k| &*k.processor),
            groups: self
                .groups
                .names()
                .into_iter()
                .map(String::as_str)
                .collect(),
        }
    }

    /// Starts following an open job. `queued` is how many of its items are queued, when
    /// known (a job just inserted); it spares an empty claim at the end of every job.
    pub(super) fn admit(&mut self, job: &JobRecord, queued: Option<u64>) {
        let id: Arc<str> = Arc::from(job.id.as_str());
        let deps = job.options.dependencies.clone();
        let deadline = job.options.deadline;
        let tracker = self.tracker.clone();
        let ctx = Arc::new(JobContext {
            id: id.clone(),
            secrets: crate::secrets::Redactor::of([&job.spec]).and(&self.secrets),
            options: Arc::new(job.spec.clone()),
            item_timeout: job.options.item_timeout,
            cancel: self.shutdown_token.child_token(),
            progress: ProgressReporter::new(id.clone(), move |job_id: &Arc<str>, note| {
                tracker.do_send(ProgressUpdate::CurrentItem {
                    job_id: job_id.clone(),
                    note,
                })
            }),
        });
        if let Some(slot) = self.rotation.kinds.get_mut(&job.kind) {
            slot.claimable.push_back(id.clone());
        }
        let id_for_seed = id.clone();
        self.rotation.jobs.insert(
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
                    .filter(|g| self.groups.contains(g)),
                tokens: Default::default(),
                token_budget: job.options.max_total_tokens,
                stop_reason: None,
            },
        );
        if job.started_at.is_some()
            && (job.options.max_total_tokens.is_some() || super::budget::counts_tokens(&job.kind))
        {
            self.gates.token_seeds.push(id_for_seed);
        }
        if let Some(d) = deadline {
            self.gates.deadline_set(d);
        }
        if !deps.jobs.is_empty() {
            self.gates.waiting_jobs += 1;
        }
        self.gates.deps_to_check.extend(deps.jobs);
    }

    /// Whether this node may run a job of the shared queue: it registers the kind, and it
    /// knows the job's concurrency group (running its items without the group's slots
    /// would break the group's limit for the whole cluster).
    pub(super) fn can_run_here(&self, job: &JobRecord) -> bool {
        if !self.rotation.kinds.contains_key(&job.kind) {
            return false;
        }
        match job.options.concurrency_group.as_deref() {
            Some(g) if self.cluster && !self.groups.contains(g) => {
                log::warn!(
                    "job {}: concurrency group '{g}' is not configured on this node; left to the nodes that have it (--concurrency-group {g}=N)",
                    job.id
                );
                false
            }
            _ => true,
        }
    }

    /// Follows the jobs found open at start; those of a kind nobody registers fail
    /// (alone) or are left to the other nodes (cluster).
    pub(super) fn admit_stored(&mut self, ctx: &mut Context<Self>) {
        for job in std::mem::take(&mut self.pending_jobs) {
            if self.can_run_here(&job) {
                self.admit(&job, None);
                continue;
            }
            if self.rotation.kinds.contains_key(&job.kind) {
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
                .write(move |conn| store::job_control::fail_job(conn, &id, &error, now()))
                .into_actor(self)
                .map(move |res, act, _| match res {
                    // Event streams opened meanwhile saw the job queued: tell them it ended.
                    Ok(()) => {
                        act.gates.deps_to_check.push(ended.to_string());
                        act.tracker
                            .do_send(ProgressUpdate::Finished { job_id: ended })
                    }
                    Err(e) => log::error!("could not mark a job failed: {e}"),
                })
                .spawn(ctx);
        }
    }
}
