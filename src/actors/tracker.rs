//! The Tracker: live progress of running jobs, kept in memory, and the event streams.
//!
//! It hears committed counters and finished items from the Supervisor and notes from
//! processors, answers snapshots with rate and ETA, and fans events out to subscribers
//! (`GET /batch/jobs/{id}/events`, `GET /batch/events`): progress snapshots coalesced to
//! at most ten a second per job, one event per finished item, and a job's end. The database
//! stays the truth for counters; the Tracker adds what is not worth storing.

use crate::actors::messages::{Counts, GetProgress, ProgressUpdate, Subscribe};
use crate::model::{now, JobRecord};
use actix::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// A progress snapshot, in the seed's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
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

/// How often coalesced progress events go out.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

/// One event for a subscriber.
#[derive(Debug, Clone, PartialEq)]
pub struct TrackerEvent {
    /// Increasing over the Tracker's life, for the SSE `id:` field.
    pub id: u64,
    /// The job it is about.
    pub job_id: Arc<str>,
    /// What happened.
    pub kind: TrackerEventKind,
}

/// What a [`TrackerEvent`] says.
#[derive(Debug, Clone, PartialEq)]
pub enum TrackerEventKind {
    /// A progress snapshot.
    Progress(Progress),
    /// An item reached its final state (committed).
    Item {
        /// Its index in the job.
        index: u32,
        /// Its id.
        key: String,
        /// Its final status.
        status: crate::model::ItemStatus,
    },
    /// The job reached a terminal state; read it from the store for its final form.
    End,
}

struct Subscriber {
    /// `None` follows every job.
    job_id: Option<Arc<str>>,
    tx: tokio::sync::mpsc::Sender<TrackerEvent>,
}

/// Events a subscriber may have unread before it is dropped: a client that stops reading
/// must not make the engine hold every event of every job for it. Its stream then ends,
/// and a reconnect starts from the stored state.
const SUBSCRIBER_BACKLOG: usize = 10_000;

/// Keeps live progress per running job and the event subscribers.
#[derive(Default)]
pub struct Tracker {
    live: HashMap<Arc<str>, Live>,
    subscribers: Vec<Subscriber>,
    /// Jobs whose progress changed since the last coalesced event.
    dirty: std::collections::HashSet<Arc<str>>,
    next_event: u64,
    /// Subscriber count shared with the Supervisor, which skips building item events
    /// nobody listens to.
    listening: Arc<std::sync::atomic::AtomicUsize>,
}

impl Tracker {
    /// The shared count of subscribers.
    pub fn listening(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.listening.clone()
    }

    fn emit(&mut self, job_id: &Arc<str>, kind: TrackerEventKind) {
        if self.subscribers.is_empty() {
            return;
        }
        self.next_event += 1;
        let event = TrackerEvent {
            id: self.next_event,
            job_id: job_id.clone(),
            kind,
        };
        self.subscribers.retain(|s| {
            if s.job_id.as_ref().is_some_and(|j| j != job_id) {
                return !s.tx.is_closed();
            }
            match s.tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                    log::warn!("dropping an event subscriber that stopped reading");
                    false
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        self.listening
            .store(self.subscribers.len(), std::sync::atomic::Ordering::Relaxed);
    }

    fn flush_progress(&mut self) {
        let t = now();
        for job_id in std::mem::take(&mut self.dirty) {
            let Some(live) = self.live.get(&job_id) else {
                continue;
            };
            let p = Progress::compute(
                live.counts,
                Some(live.started_at),
                t,
                live.current_item.clone(),
            );
            self.emit(&job_id, TrackerEventKind::Progress(p));
        }
    }
}

impl Actor for Tracker {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.run_interval(PROGRESS_INTERVAL, |act, _| act.flush_progress());
    }
}

impl Handler<Subscribe> for Tracker {
    type Result = MessageResult<Subscribe>;

    fn handle(&mut self, msg: Subscribe, _: &mut Self::Context) -> Self::Result {
        let (tx, rx) = tokio::sync::mpsc::channel(SUBSCRIBER_BACKLOG);
        self.subscribers.push(Subscriber {
            job_id: msg.job_id.map(|j| Arc::from(j.as_str())),
            tx,
        });
        self.listening
            .store(self.subscribers.len(), std::sync::atomic::Ordering::Relaxed);
        MessageResult(rx)
    }
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
                    self.dirty.insert(job_id);
                }
            }
            ProgressUpdate::CurrentItem { job_id, note } => {
                if let Some(live) = self.live.get_mut(&job_id) {
                    live.current_item = Some(note);
                    self.dirty.insert(job_id);
                }
            }
            ProgressUpdate::ItemsFinished { job_id, items } => {
                for (index, key, status) in items {
                    self.emit(&job_id, TrackerEventKind::Item { index, key, status });
                }
            }
            ProgressUpdate::Finished { job_id } => {
                // The last progress first, then the end.
                if self.dirty.contains(&job_id) {
                    self.flush_progress();
                }
                self.live.remove(&job_id);
                self.dirty.remove(&job_id);
                self.emit(&job_id, TrackerEventKind::End);
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
