//! The Tracker: live progress of running jobs, kept in memory.
//!
//! It hears committed counters from the Supervisor and notes from processors, and answers
//! snapshots with rate and ETA. The database stays the truth for counters; the Tracker adds
//! what is not worth storing (current item, rate).

use crate::actors::messages::{Counts, GetProgress, ProgressUpdate};
use crate::model::{now, JobRecord};
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A progress snapshot, in the seed's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Items in the job.
    pub total: u64,
    /// Items that reached succeeded, failed or skipped.
    pub processed: u64,
    /// Items that succeeded.
    pub successful: u64,
    /// Items that failed.
    pub failed: u64,
    /// Items skipped.
    pub skipped: u64,
    /// Items cancelled.
    pub cancelled: u64,
    /// processed / total, 0–100.
    pub percentage: f64,
    /// Seconds since the job started.
    pub elapsed_seconds: f64,
    /// Processing rate since the job started.
    pub items_per_second: f64,
    /// Estimate from the current rate; `null` until there is one.
    pub estimated_remaining_seconds: Option<f64>,
    /// What the job is doing now, as its processor last said.
    pub current_item: Option<String>,
}

impl Progress {
    /// Computes a snapshot from counters and the job's start time.
    pub fn compute(
        counts: Counts,
        started_at: Option<f64>,
        until: f64,
        current_item: Option<String>,
    ) -> Progress {
        let elapsed = started_at.map(|s| (until - s).max(0.0)).unwrap_or(0.0);
        let rate = if elapsed > 0.0 {
            counts.processed as f64 / elapsed
        } else {
            0.0
        };
        let remaining = counts
            .total
            .saturating_sub(counts.processed + counts.cancelled);
        let eta = if remaining == 0 {
            Some(0.0)
        } else if rate > 0.0 {
            Some(remaining as f64 / rate)
        } else {
            None
        };
        Progress {
            total: counts.total,
            processed: counts.processed,
            successful: counts.succeeded,
            failed: counts.failed,
            skipped: counts.skipped,
            cancelled: counts.cancelled,
            percentage: percentage(counts.processed, counts.total),
            elapsed_seconds: round3(elapsed),
            items_per_second: round3(rate),
            estimated_remaining_seconds: eta.map(round3),
            current_item,
        }
    }

    /// The snapshot a stored job implies, for jobs the Tracker does not follow.
    pub fn from_record(job: &JobRecord) -> Progress {
        let until = job.completed_at.unwrap_or_else(now);
        Progress::compute(job.counts(), job.started_at, until, None)
    }
}

/// processed / total as a percentage with two decimals.
pub fn percentage(processed: u64, total: u64) -> f64 {
    if total == 0 {
        return 100.0;
    }
    (processed as f64 * 10000.0 / total as f64).round() / 100.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

struct Live {
    counts: Counts,
    started_at: f64,
    current_item: Option<String>,
}

/// Keeps live progress per running job.
#[derive(Default)]
pub struct Tracker {
    live: HashMap<Arc<str>, Live>,
}

impl Actor for Tracker {
    type Context = Context<Self>;
}

impl Handler<ProgressUpdate> for Tracker {
    type Result = ();

    fn handle(&mut self, msg: ProgressUpdate, _: &mut Self::Context) {
        match msg {
            ProgressUpdate::Started {
                job_id,
                counts,
                started_at,
            } => {
                self.live.insert(
                    job_id,
                    Live {
                        counts,
                        started_at,
                        current_item: None,
                    },
                );
            }
            ProgressUpdate::Counts { job_id, counts } => {
                if let Some(live) = self.live.get_mut(&job_id) {
                    live.counts = counts;
                }
            }
            ProgressUpdate::CurrentItem { job_id, note } => {
                if let Some(live) = self.live.get_mut(&job_id) {
                    live.current_item = Some(note);
                }
            }
            ProgressUpdate::Finished { job_id } => {
                self.live.remove(&job_id);
            }
        }
    }
}

impl Handler<GetProgress> for Tracker {
    type Result = MessageResult<GetProgress>;

    fn handle(&mut self, msg: GetProgress, _: &mut Self::Context) -> Self::Result {
        let t = now();
        MessageResult(
            msg.job_ids
                .into_iter()
                .filter_map(|id| {
                    let live = self.live.get(id.as_str())?;
                    let p = Progress::compute(
                        live.counts,
                        Some(live.started_at),
                        t,
                        live.current_item.clone(),
                    );
                    Some((id, p))
                })
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_reports_rate_and_eta_from_counters() {
        let counts = Counts {
            total: 100,
            processed: 25,
            succeeded: 20,
            failed: 5,
            ..Counts::default()
        };
        let p = Progress::compute(counts, Some(1000.0), 1010.0, Some("x".into()));
        assert_eq!(p.percentage, 25.0);
        assert_eq!(p.items_per_second, 2.5);
        assert_eq!(p.estimated_remaining_seconds, Some(30.0));
        assert_eq!(p.successful, 20);
        assert_eq!(p.current_item.as_deref(), Some("x"));
    }

    #[test]
    fn progress_before_start_has_no_eta() {
        let counts = Counts {
            total: 3,
            ..Counts::default()
        };
        let p = Progress::compute(counts, None, 5.0, None);
        assert_eq!(p.percentage, 0.0);
        assert_eq!(p.estimated_remaining_seconds, None);
        assert_eq!(percentage(1, 3), 33.33);
    }
}
