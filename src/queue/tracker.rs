//! The Tracker: live progress of running jobs, kept in memory, and the event streams.
//!
//! It hears committed counters and finished items from the Supervisor and notes from
//! processors, answers snapshots with rate and ETA, and fans events out to subscribers
//! (`GET /batch/jobs/{id}/events`, `GET /batch/events`): progress snapshots coalesced to
//! at most ten a second per job, one event per finished item, and a job's end. The database
//! stays the truth for counters; the Tracker adds what is not worth storing.

use crate::model::now;
use crate::queue::messages::{Counts, GetProgress, ProgressUpdate, Subscribe};
use actix::prelude::*;
use std::collections::HashMap;
use std::sync::Arc;

// The snapshot and event types are part of the protocol; re-exported where readers look.
pub use crate::queue::messages::{percentage, Progress, TrackerEvent, TrackerEventKind};

struct Live {
    counts: Counts,
    started_at: f64,
    current_item: Option<String>,
    /// Token totals, once the Supervisor told any.
    tokens: Option<crate::agent::llm::Usage>,
}

/// How often coalesced progress events go out.
const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

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
            )
            .with_tokens(live.tokens);
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
                        tokens: None,
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
            ProgressUpdate::Tokens { job_id, usage } => {
                if let Some(live) = self.live.get_mut(&job_id) {
                    live.tokens = Some(usage);
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
                    )
                    .with_tokens(live.tokens);
                    Some((id, p))
                })
                .collect(),
        )
    }
}
