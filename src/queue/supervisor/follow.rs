//! Following a shared queue (PostgreSQL, several nodes): what other nodes submit, end,
//! pause and requeue is announced by `LISTEN/NOTIFY` ([`ClusterSync`]), found by a
//! rescue, or caught by a fallback poll; the Supervisor reads it and follows here.

use super::Supervisor;
use crate::model::{now, JobRecord, JobStatus};
use crate::queue::messages::ClusterSync;
use crate::store;
use crate::store::{Conn, StoreError};
use actix::prelude::*;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

/// The fallback poll's shortest and longest period: LISTEN/NOTIFY wakes nodes at once;
/// the poll only catches what a lost notification (a reconnect) missed.
const POLL_MIN: Duration = Duration::from_millis(500);
const POLL_MAX: Duration = Duration::from_secs(5);

/// Changes announced by other nodes (or found missing), accumulated between syncs.
#[derive(Default)]
struct SyncPending {
    all: bool,
    kinds: bool,
    jobs: HashSet<String>,
}

impl SyncPending {
    /// Whether anything is to be read.
    fn any(&self) -> bool {
        self.all || self.kinds || !self.jobs.is_empty()
    }
}

/// What a sync read found.
struct Synced {
    /// Full records of jobs named by a notification or open and unknown here.
    records: Vec<JobRecord>,
    /// `(id, paused)` of known open jobs (a full sync).
    open: Vec<(String, bool)>,
    /// Known jobs no longer open.
    ended: Vec<String>,
    /// The kinds paused as a whole, when asked.
    paused_kinds: Option<Vec<String>>,
}

/// Whether a sync read is in flight, and what this node changed meanwhile: that read
/// may predate the change, so its part of it is dropped and read again.
#[derive(Default)]
enum SyncRead {
    #[default]
    Idle,
    InFlight {
        /// Jobs this node changed in the store.
        touched: HashSet<String>,
        /// Kinds paused or resumed here.
        kinds: bool,
    },
}

/// The following's state.
pub(super) struct Following {
    /// What other nodes changed, to be read by the next sync.
    pending: SyncPending,
    read: SyncRead,
    /// The fallback poll's current period (doubles while it finds nothing).
    poll_delay: Duration,
}

impl Default for Following {
    fn default() -> Self {
        Following {
            pending: SyncPending::default(),
            read: SyncRead::Idle,
            poll_delay: POLL_MIN,
        }
    }
}

impl Following {
    /// Whether a sync read is in flight.
    pub(super) fn syncing(&self) -> bool {
        matches!(self.read, SyncRead::InFlight { .. })
    }

    /// Notes that kinds were paused or resumed here (see [`SyncRead`]).
    pub(super) fn touch_kinds(&mut self) {
        if let SyncRead::InFlight { kinds, .. } = &mut self.read {
            *kinds = true;
        }
    }

    /// Ends the read in flight; returns what was touched meanwhile.
    fn read_done(&mut self) -> (HashSet<String>, bool) {
        match std::mem::take(&mut self.read) {
            SyncRead::InFlight { touched, kinds } => (touched, kinds),
            SyncRead::Idle => Default::default(),
        }
    }
}

/// Reads what a sync asks for; `known` are the jobs followed here (a full sync).
fn read_changes(
    conn: &mut Conn,
    pending: SyncPending,
    known: HashSet<String>,
) -> Result<Synced, StoreError> {
    let mut synced = Synced {
        records: Vec::new(),
        open: Vec::new(),
        ended: Vec::new(),
        paused_kinds: None,
    };
    let mut asked = pending.jobs;
    if pending.all {
        let open = store::jobs::open_job_states(conn)?;
        let open_ids: HashSet<&str> = open.iter().map(|(id, _)| id.as_str()).collect();
        synced.ended = known
            .iter()
            .filter(|id| !open_ids.contains(id.as_str()))
            .cloned()
            .collect();
        for (id, paused) in open {
            if known.contains(&id) {
                synced.open.push((id, paused));
            } else {
                asked.insert(id);
            }
        }
    }
    for id in asked {
        if let Some(record) = store::jobs::get_job(conn, &id)? {
            synced.records.push(record);
        }
    }
    if pending.kinds || pending.all {
        synced.paused_kinds = Some(store::job_control::paused_kinds(conn)?);
    }
    Ok(synced)
}

impl Supervisor {
    /// Other nodes changed the shared queue: note what to read, and read it.
    pub(super) fn cluster_sync(&mut self, msg: ClusterSync, ctx: &mut Context<Self>) {
        let pending = &mut self.following.pending;
        pending.all |= msg.all;
        pending.kinds |= msg.kinds;
        pending.jobs.extend(msg.jobs);
        if msg.groups {
            // A slot was freed somewhere: groups that found none ask again.
            self.groups.unstarve();
            self.cycle(ctx);
        }
        self.sync(ctx);
    }

    /// This node was declared dead (see [`crate::queue::messages::NodeLost`]).
    pub(super) fn node_lost(&mut self, ctx: &mut Context<Self>) {
        let ids: Vec<Arc<str>> = self.rotation.jobs.keys().cloned().collect();
        for id in ids {
            self.unready(&id);
            self.rotation.reopen(&id);
        }
        self.groups.lost();
        self.cycle(ctx);
    }

    /// The fallback poll: a full sync now and then, sooner after one that found changes.
    pub(super) fn schedule_poll(&mut self, ctx: &mut Context<Self>) {
        ctx.run_later(self.following.poll_delay, |act, ctx| {
            act.following.pending.all = true;
            act.sync(ctx);
            act.schedule_poll(ctx);
        });
    }

    /// Reads what other nodes changed (jobs they submitted, ended, paused or requeued;
    /// kinds they paused) and follows it here: unknown open jobs are admitted, ended ones
    /// stopped (their running items cancelled), pauses applied, requeued ones reopened.
    fn sync(&mut self, ctx: &mut Context<Self>) {
        if self.following.syncing() || self.drain.stopping() {
            return;
        }
        let pending = std::mem::take(&mut self.following.pending);
        if !pending.any() {
            return;
        }
        self.following.read = SyncRead::InFlight {
            touched: HashSet::new(),
            kinds: false,
        };
        let known: HashSet<String> = if pending.all {
            self.rotation.jobs.keys().map(|id| id.to_string()).collect()
        } else {
            Default::default()
        };
        let full = pending.all;
        self.store
            .read(move |conn| read_changes(conn, pending, known))
            .into_actor(self)
            .map(move |res, act, ctx| {
                let touched = act.following.read_done();
                match res {
                    Ok(synced) => {
                        let changed = act.follow(synced, touched);
                        if full {
                            let delay = &mut act.following.poll_delay;
                            *delay = if changed {
                                POLL_MIN
                            } else {
                                (*delay * 2).min(POLL_MAX)
                            };
                        }
                    }
                    Err(e) => {
                        // What was touched meanwhile is read again with everything.
                        log::warn!("could not read the shared queue: {e}; retrying");
                        act.following.pending.all = true;
                    }
                }
                act.start_ready();
                act.cycle(ctx);
                if act.following.pending.any() {
                    act.sync(ctx);
                }
            })
            .spawn(ctx);
    }

    /// Notes a job this node changed in the store (see [`SyncRead`]).
    pub(super) fn touch(&mut self, job_id: &str) {
        if let SyncRead::InFlight { touched, .. } = &mut self.following.read {
            touched.insert(job_id.to_string());
        }
    }

    /// Applies a sync read, leaving out what this node changed meanwhile (`touched`, to
    /// be read again); returns whether anything changed here.
    fn follow(
        &mut self,
        mut synced: Synced,
        (touched, touched_kinds): (HashSet<String>, bool),
    ) -> bool {
        if !touched.is_empty() {
            synced.records.retain(|r| !touched.contains(&r.id));
            synced.open.retain(|(id, _)| !touched.contains(id));
            synced.ended.retain(|id| !touched.contains(id));
            self.following.pending.jobs.extend(touched);
        }
        if touched_kinds && synced.paused_kinds.is_some() {
            synced.paused_kinds = None;
            self.following.pending.kinds = true;
        }
        let mut changed = false;
        for record in &synced.records {
            let paused = record.paused_at.is_some();
            changed |= self.follow_job(&record.id, record.status, paused, Some(record));
        }
        for (id, paused) in &synced.open {
            changed |= self.follow_job(id, JobStatus::Running, *paused, None);
        }
        for id in &synced.ended {
            if self.rotation.jobs.contains_key(id.as_str()) {
                self.cancel_in_memory(id);
                changed = true;
            }
        }
        if let Some(paused) = synced.paused_kinds {
            let flips: Vec<(String, bool)> = self
                .rotation
                .kinds
                .iter()
                .filter(|(kind, slot)| slot.paused != paused.contains(*kind))
                .map(|(kind, slot)| (kind.clone(), !slot.paused))
                .collect();
            for (kind, now_paused) in flips {
                self.pause_kind_in_memory(&kind, now_paused);
                changed = true;
            }
        }
        changed
    }

    /// Follows one job's stored state (see [`Supervisor::sync`]).
    fn follow_job(
        &mut self,
        id: &str,
        status: JobStatus,
        paused: bool,
        record: Option<&JobRecord>,
    ) -> bool {
        if status.is_terminal() {
            if self.rotation.jobs.contains_key(id) {
                // Ended elsewhere (cancelled, expired, finished): stop what runs here.
                self.cancel_in_memory(id);
                return true;
            }
            return false;
        }
        let Some(job) = self.rotation.jobs.get_mut(id) else {
            return match record {
                Some(r) if self.can_run_here(r) => {
                    self.admit(r, None);
                    true
                }
                _ => false,
            };
        };
        if job.cancelled {
            // Retried elsewhere after it was cancelled here: once nothing of the old run
            // is left here, follow the reopened job afresh.
            if let Some(r) = record.filter(|_| job.idle()) {
                let r = r.clone();
                self.forget(id);
                if let Some(slot) = self.rotation.kinds.get_mut(&r.kind) {
                    slot.claimable.retain(|c| **c != *id);
                    slot.startable.retain(|c| **c != *id);
                }
                self.admit(&r, None);
                return true;
            }
            return false;
        }
        if paused != job.paused {
            job.paused = paused;
            job.waiting_since = now();
            if paused {
                self.unready(id);
            } else {
                self.rotation.reopen(id);
            }
            return true;
        }
        if job.exhausted && job.claiming == 0 {
            // Items may have gone back to the queue elsewhere (a rescue, a retry): look.
            self.rotation.reopen(id);
        }
        false
    }
}
