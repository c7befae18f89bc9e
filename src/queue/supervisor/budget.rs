//! Token accounting per job: the prompt and completion tokens its items' results report
//! (`usage`, written by `batch_llm` and agent tasks), summed while the job runs here, told
//! to the Tracker for live progress, and held against the job's `max_total_tokens`.
//!
//! The sums are kept in memory, as the Tracker's progress is. A job this engine starts to
//! follow after it ran elsewhere or before a restart is seeded once from the store (its
//! items' stored usage); on PostgreSQL each node adds what its own items spent to that
//! seed, so a budget may be overshot by what other nodes spent meanwhile.

use super::lifecycle::Ending;
use super::Supervisor;
use crate::agent::llm::{usage_of, Usage};
use crate::model::FinishedItem;
use crate::queue::messages::ProgressUpdate;
use crate::store;
use actix::prelude::*;
use std::sync::Arc;

/// Whether jobs of `kind` report tokens (their progress carries token totals).
pub(super) fn counts_tokens(kind: &str) -> bool {
    kind == crate::processors::llm_batch::KIND || kind == crate::processors::agent::KIND
}

/// The reason a job whose budget is spent is cancelled with.
pub(super) fn budget_reason(spent: u64, budget: u64) -> String {
    format!("token budget spent: {spent} tokens used of max_total_tokens {budget}")
}

impl Supervisor {
    /// Adds the tokens a finished item reports to its job; cancels the job once its
    /// budget is reached.
    pub(super) fn count_tokens(&mut self, item: &FinishedItem, ctx: &mut Context<Self>) {
        let usage = usage_of(&item.outcome.result);
        if usage == Usage::default() {
            return;
        }
        let Some(job) = self.rotation.jobs.get_mut(item.job_id.as_str()) else {
            return;
        };
        job.tokens += usage;
        let totals = job.tokens;
        let id = job.ctx.id.clone();
        self.tracker.do_send(ProgressUpdate::Tokens {
            job_id: id.clone(),
            usage: totals,
        });
        self.check_budget(&id, ctx);
    }

    /// Cancels `job_id` when its spent tokens reached its `max_total_tokens`.
    fn check_budget(&mut self, job_id: &Arc<str>, ctx: &mut Context<Self>) {
        let Some(job) = self.rotation.jobs.get_mut(job_id) else {
            return;
        };
        let spent = job.tokens.prompt_tokens + job.tokens.completion_tokens;
        match job.token_budget {
            Some(budget) if spent >= budget && !job.cancelled => {
                // Once: the cancellation settles it. Nothing of it starts from now on,
                // before the store has it cancelled.
                job.token_budget = None;
                job.cancelled = true;
                let reason = budget_reason(spent, budget);
                job.stop_reason = Some(format!("cancelled: {reason}"));
                self.end_for(ctx, job_id.to_string(), reason, Ending::Budget);
            }
            _ => {}
        }
    }

    /// Reads the tokens already spent by jobs this engine just started to follow that
    /// ran before (elsewhere, or before a restart).
    pub(super) fn seed_tokens(&mut self, ctx: &mut Context<Self>) {
        for id in std::mem::take(&mut self.gates.token_seeds) {
            let job_id = id.to_string();
            self.store
                .read(move |conn| store::llm_files::token_totals(conn, &job_id))
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok((prompt_tokens, completion_tokens)) => {
                        let Some(job) = act.rotation.jobs.get_mut(&id) else {
                            return;
                        };
                        job.tokens += Usage {
                            prompt_tokens,
                            completion_tokens,
                        };
                        act.tracker.do_send(ProgressUpdate::Tokens {
                            job_id: id.clone(),
                            usage: job.tokens,
                        });
                        act.check_budget(&id, ctx);
                    }
                    Err(e) => log::warn!("job {id}: cannot read the tokens it spent: {e}"),
                })
                .spawn(ctx);
        }
    }
}
