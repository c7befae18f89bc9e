//! Shutdown: stop claiming, let running items finish for a grace period, then stop them,
//! put everything claimed but unfinished back in the queue, and answer the waiters once
//! nothing is in flight.

use super::Supervisor;
use crate::model::now;
use crate::store;
use actix::prelude::*;
use std::time::Duration;
use tokio::sync::oneshot;

/// How far the Supervisor is in stopping.
#[derive(Default, PartialEq, Eq)]
pub(super) enum Phase {
    /// Running: claims and starts go on.
    #[default]
    Running,
    /// Shutting down: nothing new is claimed or started; waiting for running items.
    Draining,
    /// Shutting down, and the interrupted items' release is being written.
    Requeueing,
}

/// The shutdown's state.
#[derive(Default)]
pub(super) struct Drain {
    pub(super) phase: Phase,
    /// Items claimed or stopped during shutdown, to be put back in the queue.
    pub(super) to_release: Vec<store::items::Release>,
    /// Answered once everything in flight is settled in the store.
    waiters: Vec<oneshot::Sender<()>>,
}

impl Drain {
    /// Whether shutdown has begun.
    pub(super) fn stopping(&self) -> bool {
        self.phase != Phase::Running
    }
}

impl Supervisor {
    /// Begins the shutdown (see [`crate::queue::messages::Shutdown`]); the receiver hears
    /// when it is done.
    pub(super) fn shutdown(
        &mut self,
        grace: Duration,
        ctx: &mut Context<Self>,
    ) -> oneshot::Receiver<()> {
        if self.drain.phase == Phase::Running {
            self.drain.phase = Phase::Draining;
        }
        // Claimed but never started: straight back to the queue (the store turns those of
        // jobs cancelled meanwhile into cancelled items).
        for job in self.rotation.jobs.values_mut() {
            job.in_startable = false;
            self.drain
                .to_release
                .extend(job.ready.drain(..).map(|i| (i.job_id, i.index, i.attempt)));
        }
        for slot in self.rotation.kinds.values_mut() {
            slot.startable.clear();
        }
        let (tx, rx) = oneshot::channel();
        self.drain.waiters.push(tx);
        let token = self.shutdown_token.clone();
        ctx.run_later(grace, move |_, _| {
            log::info!("shutdown: grace period over, stopping running items");
            token.cancel();
        });
        self.cycle(ctx);
        self.check_drained(ctx);
        rx
    }

    /// During shutdown, answers the waiters once nothing is in flight anymore.
    pub(super) fn check_drained(&mut self, ctx: &mut Context<Self>) {
        if !self.drain.stopping() || self.drain.waiters.is_empty() {
            return;
        }
        let active: u32 = self.rotation.kinds.values().map(|k| k.active).sum();
        if active > 0
            || self.pipeline.writing
            || self.drain.phase == Phase::Requeueing
            || !self.pipeline.finished.is_empty()
        {
            return;
        }
        if !self.drain.to_release.is_empty() {
            self.drain.phase = Phase::Requeueing;
            let items = std::mem::take(&mut self.drain.to_release);
            let node = self.node_id.clone();
            self.store
                .write(move |conn| {
                    store::jobs::lock_jobs(conn, items.iter().map(|(id, _, _)| id.as_str()))?;
                    store::items::release_items(conn, &items, &node, now())
                })
                .into_actor(self)
                .map(|res, act, ctx| {
                    act.drain.phase = Phase::Draining;
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
        for waiter in self.drain.waiters.drain(..) {
            let _ = waiter.send(());
        }
    }
}
