//! Requests answered from the store and the Tracker alone: reading jobs, items, results,
//! counts and metrics, and subscribing to events. They change nothing in the queue, so
//! they run as plain futures beside the actor's own work.

use super::Supervisor;
use crate::metrics::Snapshot;
use crate::model::{JobRecord, JobStatus, QueueStats};
use crate::queue::messages::*;
use crate::queue::tracker::Tracker;
use crate::store;
use actix::prelude::*;
use std::collections::HashMap;

impl Handler<GetJob> for Supervisor {
    type Result = ResponseFuture<Result<Option<JobView>, EngineError>>;

    fn handle(&mut self, msg: GetJob, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let tracker = self.tracker.clone();
        Box::pin(async move {
            let id = msg.job_id;
            let Some(record) = store
                .read(move |conn| store::jobs::get_job(conn, &id))
                .await?
            else {
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
                    store::jobs::list_jobs(
                        conn,
                        msg.status,
                        msg.kind.as_deref(),
                        msg.search.as_deref(),
                        msg.limit,
                        msg.offset,
                    )
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
                    if store::jobs::get_job_status(conn, &msg.job_id)?.is_none() {
                        return Ok(None);
                    }
                    let (items, total) = store::items::list_items(
                        conn,
                        &msg.job_id,
                        msg.status,
                        msg.limit,
                        msg.offset,
                    )?;
                    Ok(Some(ItemPage { items, total }))
                })
                .await?;
            Ok(page)
        })
    }
}

impl Handler<ReadResults> for Supervisor {
    type Result = ResponseFuture<Result<Option<Vec<store::results::ResultRow>>, EngineError>>;

    fn handle(&mut self, msg: ReadResults, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            Ok(store
                .read(move |conn| {
                    if store::jobs::get_job_status(conn, &msg.job_id)?.is_none() {
                        return Ok(None);
                    }
                    store::results::result_rows_after(
                        conn,
                        &msg.job_id,
                        msg.after,
                        msg.limit as i64,
                    )
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
            .rotation
            .kinds
            .iter()
            .map(|(kind, slot)| (kind.clone(), slot.active, slot.limit))
            .collect();
        running.sort();
        // The queue depth counts items waiting to start: those claimed into the ready
        // buffer still wait, only the ones running leave it.
        let held: u64 = self
            .rotation
            .jobs
            .values()
            .map(|j| u64::from(j.active))
            .sum();
        Box::pin(async move {
            let (stats, unfinished) = store
                .read(|conn| {
                    Ok((
                        store::stats::queue_stats(conn)?,
                        store::stats::unfinished_items(conn)?,
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
    type Result = ResponseFuture<tokio::sync::mpsc::Receiver<crate::queue::tracker::TrackerEvent>>;

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
        Box::pin(async move { Ok(store.read(store::stats::queue_stats).await?) })
    }
}

impl Handler<Ping> for Supervisor {
    type Result = ResponseFuture<Result<(), EngineError>>;

    fn handle(&mut self, _: Ping, _: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move { Ok(store.read(store::stats::ping).await?) })
    }
}
