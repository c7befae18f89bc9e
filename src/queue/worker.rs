//! The Worker: runs the items of one processor kind as local futures.
//!
//! The Supervisor only hands a Worker as many items as the job's `parallel` and the kind's
//! limit allow, so the Worker needs no semaphore of its own: it starts what it is given and
//! reports each outcome back.

use crate::metrics::Metrics;
use crate::model::{now, ClaimedItem, FinishedItem, ItemOutcome};
use crate::processor::{Item, ItemContext, Processor};
use crate::queue::messages::{ItemFinished, RunItems};
use actix::prelude::*;
use futures_util::FutureExt;
use serde_json::json;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// Runs items of one kind.
pub struct Worker {
    processor: Arc<dyn Processor>,
    supervisor: Recipient<ItemFinished>,
    metrics: Arc<Metrics>,
}

impl Worker {
    /// A worker for `processor`'s kind that reports to `supervisor`.
    pub fn new(
        processor: Arc<dyn Processor>,
        supervisor: Recipient<ItemFinished>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Worker {
            processor,
            supervisor,
            metrics,
        }
    }
}

impl Actor for Worker {
    type Context = Context<Self>;
}

impl Handler<RunItems> for Worker {
    type Result = ();

    fn handle(&mut self, msg: RunItems, _: &mut Self::Context) {
        for claimed in msg.items {
            let job = msg.job.clone();
            let processor = self.processor.clone();
            let supervisor = self.supervisor.clone();
            let metrics = self.metrics.clone();
            actix::spawn(async move {
                let started = std::time::Instant::now();
                let ClaimedItem {
                    job_id,
                    index,
                    key,
                    payload,
                    attempt,
                } = claimed;
                let cancel = job.cancel.child_token();
                let item_secrets = crate::secrets::Redactor::of([&payload]);
                let outcome = if cancel.is_cancelled() {
                    ItemOutcome::cancelled(json!({"key": key, "status": "cancelled"}))
                } else {
                    let item = Item {
                        job_id: job_id.clone(),
                        index,
                        key: key.clone(),
                        payload,
                        attempt,
                    };
                    let ctx = ItemContext {
                        options: job.options.clone(),
                        cancel,
                        progress: job.progress.clone(),
                    };
                    // A panicking processor fails its item, not the worker thread.
                    let run = AssertUnwindSafe(processor.process(item, ctx)).catch_unwind();
                    // The job's `item_timeout_seconds` bounds every kind: past it the
                    // processor's future is dropped (its guards kill what it started).
                    let limit = job.item_timeout;
                    let finished = match limit {
                        Some(limit) => tokio::time::timeout(limit, run).await,
                        None => Ok(run.await),
                    };
                    match finished {
                        Err(_) => {
                            let secs = limit.map_or(0.0, |l| l.as_secs_f64());
                            let message = format!("timed out after {secs}s (item_timeout_seconds)");
                            ItemOutcome::error(
                                json!({"key": key, "status": "error", "error": message}),
                                message,
                            )
                        }
                        Ok(Ok(outcome)) if outcome.status.is_terminal() => outcome,
                        Ok(Ok(outcome)) => {
                            let message = format!(
                                "processor returned the non-final status '{}'",
                                outcome.status
                            );
                            log::error!("{job_id}[{index}]: {message}");
                            ItemOutcome::failed(outcome.result, message)
                        }
                        Ok(Err(panic)) => {
                            let what = panic
                                .downcast_ref::<&str>()
                                .map(|s| s.to_string())
                                .or_else(|| panic.downcast_ref::<String>().cloned())
                                .unwrap_or_else(|| "unknown panic".into());
                            log::error!("processor panicked on {job_id}[{index}]: {what}");
                            ItemOutcome::failed(
                                json!({"key": key, "status": "error", "error": format!("processor panicked: {what}")}),
                                format!("processor panicked: {what}"),
                            )
                        }
                    }
                };
                // Before the store sees it: every read surface and export then has it clean.
                let outcome = scrub(scrub(outcome, &job.secrets), &item_secrets);
                metrics.item_finished(processor.kind(), outcome.status.as_str(), started.elapsed());
                supervisor.do_send(ItemFinished(FinishedItem {
                    job_id,
                    index,
                    key,
                    outcome,
                    finished_at: now(),
                    attempt,
                    retry_at: None,
                }));
            });
        }
    }
}

/// `outcome` without the secret values of `secrets` in its result or error (an upstream
/// error message or a tool may echo the key it was given).
fn scrub(mut outcome: ItemOutcome, secrets: &crate::secrets::Redactor) -> ItemOutcome {
    if secrets.is_empty() {
        return outcome;
    }
    outcome.result = secrets.scrub(std::mem::take(&mut outcome.result));
    outcome.error = outcome.error.map(|e| secrets.scrub_str(&e).into_owned());
    outcome
}
