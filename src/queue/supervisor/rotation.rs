//! Claim and start rotation: which jobs of a kind get the next claimed items and the next
//! free slots. Plain state and logic, no actor, so it can be tested on its own; the
//! Supervisor calls it and acts on what it returns.
//!
//! Each kind has a concurrency limit and each job its `parallel`; both bound the items
//! *running*. Claiming is decoupled from starting: besides its running items a kind keeps
//! up to `max(limit, 32)` claimed items ready in memory, so when an item finishes the next
//! one starts at once, without waiting for a database round trip, while the buffer is
//! refilled by a batched claim in the next write cycle. Both the claims and the starts go
//! round-robin over the kind's jobs, one item per turn, highest priority level first, and
//! a job that waits with nothing ready is claimed for at once, so a small job submitted
//! after a huge one gets the next free slot instead of waiting for the huge one to drain.

use super::groups::{GroupSlot, Groups};
use crate::model::{ClaimedItem, RetryPolicy};
use crate::queue::messages::{Counts, JobContext};
use crate::store;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

/// Claimed-but-not-started items a kind keeps at least, so that kinds with small limits
/// still claim in batches rather than one item per transaction.
const MIN_BUFFER: u32 = 32;
/// How many jobs of a kind's rotation are looked at for one that waits with idle slots.
const HUNGRY_SCAN: usize = 64;

/// How many claimed items a kind with this limit keeps ready.
pub(super) fn buffer_target(limit: u32) -> u32 {
    limit.max(MIN_BUFFER)
}

/// Anti-starvation: a job that could run but has had no item start or finish for this
/// long is served one priority level higher, and another level per further period.
pub const AGING_SECS: f64 = 30.0;

/// The priority a job is served at now: its own, plus one level per [`AGING_SECS`] it has
/// waited with nothing of it starting or finishing. Jobs at the highest level share the
/// slots in turn; a steady stream of higher-priority jobs therefore delays a lower one by
/// at most `AGING_SECS` per level of difference, never forever.
pub fn effective_priority(priority: i32, waiting_since: f64, now: f64) -> i64 {
    let waited = (now - waiting_since).max(0.0);
    i64::from(priority) + (waited / AGING_SECS) as i64
}

/// One registered kind: its limit, what runs and waits, and its two rotations.
pub(super) struct KindSlot {
    /// Most items of this kind running at once.
    pub(super) limit: u32,
    /// Items running on the worker.
    pub(super) active: u32,
    /// Items claimed and waiting in jobs' `ready` queues, plus claims in flight.
    pub(super) buffered: u32,
    /// Jobs that may still have queued items, in round-robin order (pruned lazily).
    pub(super) claimable: VecDeque<Arc<str>>,
    /// Jobs with ready items, in round-robin order (each at most once).
    pub(super) startable: VecDeque<Arc<str>>,
    /// Paused as a whole: nothing of this kind is claimed or started.
    pub(super) paused: bool,
}

impl KindSlot {
    /// A kind with nothing claimed or running yet.
    pub(super) fn new(limit: u32, paused: bool) -> Self {
        KindSlot {
            limit: limit.max(1),
            active: 0,
            buffered: 0,
            claimable: VecDeque::new(),
            startable: VecDeque::new(),
            paused,
        }
    }
}

/// Room reserved for one job in a claim in flight.
#[derive(Clone)]
pub(super) struct Claim {
    pub(super) job_id: Arc<str>,
    pub(super) kind: String,
    pub(super) n: u32,
    /// Nothing of the job was claimed by this engine yet: the store may have to mark it
    /// running.
    pub(super) first: bool,
}

/// An open job this engine follows.
pub(super) struct ActiveJob {
    pub(super) ctx: Arc<JobContext>,
    pub(super) kind: String,
    pub(super) parallel: u32,
    /// Items running on the worker.
    pub(super) active: u32,
    /// Items asked for in the claim in flight.
    pub(super) claiming: u32,
    /// Claimed (`running` in the store) but not started yet.
    pub(super) ready: VecDeque<ClaimedItem>,
    pub(super) in_startable: bool,
    /// A claim came back short: no queued items are left.
    pub(super) exhausted: bool,
    /// Queued items not claimed yet, when known.
    pub(super) unclaimed: Option<u64>,
    pub(super) cancelled: bool,
    /// Whether the Tracker has been told the job runs.
    pub(super) announced: bool,
    pub(super) counts: Counts,
    pub(super) started_at: Option<f64>,
    pub(super) priority: i32,
    /// Nothing is claimed before this time (Unix seconds).
    pub(super) run_at: Option<f64>,
    /// Paused: running items finish, nothing new is claimed or started.
    pub(super) paused: bool,
    /// Since when the job has waited with nothing of it starting or finishing (for
    /// [`effective_priority`]).
    pub(super) waiting_since: f64,
    /// How its failed-by-error items are retried.
    pub(super) retry: RetryPolicy,
    /// Items waiting out a retry delay: claimable again from these times.
    pub(super) retry_wakeups: Vec<f64>,
    /// Jobs that must complete before this one starts (not yet seen completed).
    pub(super) waiting_on: Vec<String>,
    /// Start even when a dependency failed or was cancelled.
    pub(super) run_on_failure: bool,
    /// When it expires if not finished (Unix seconds).
    pub(super) deadline: Option<f64>,
    /// The concurrency group its items count against.
    pub(super) group: Option<String>,
    /// Tokens its items reported (see `budget.rs`).
    pub(super) tokens: crate::agent::llm::Usage,
    /// Its `max_total_tokens`, until the budget is spent.
    pub(super) token_budget: Option<u64>,
    /// Why the engine stops it, for its claimed items' errors (a spent budget).
    pub(super) stop_reason: Option<String>,
}

impl ActiveJob {
    /// Nothing of this job is in the engine's hands any more.
    pub(super) fn idle(&self) -> bool {
        self.active == 0 && self.claiming == 0 && self.ready.is_empty()
    }

    /// Whether the job may have items claimed or started now.
    pub(super) fn runnable(&self, now: f64) -> bool {
        !self.cancelled
            && !self.paused
            && self.waiting_on.is_empty()
            && self.run_at.is_none_or(|t| t <= now)
    }

    /// The level it is served at now.
    pub(super) fn level(&self, now: f64) -> i64 {
        let since = self
            .run_at
            .map_or(self.waiting_since, |t| t.max(self.waiting_since));
        effective_priority(self.priority, since, now)
    }
}

/// The distinct levels of the listed jobs that pass `filter`, highest first.
fn levels<'a>(
    ids: impl Iterator<Item = &'a Arc<str>>,
    jobs: &HashMap<Arc<str>, ActiveJob>,
    now: f64,
    filter: impl Fn(&ActiveJob) -> bool,
) -> Vec<i64> {
    let mut levels: Vec<i64> = ids
        .filter_map(|id| jobs.get(id))
        .filter(|j| j.runnable(now) && filter(j))
        .map(|j| j.level(now))
        .collect();
    levels.sort_unstable_by(|a, b| b.cmp(a));
    levels.dedup();
    levels
}

/// Items to start on a kind's Worker: the kind, their job, the items.
pub(super) type Start = (String, Arc<JobContext>, Vec<ClaimedItem>);

/// The registered kinds and the open jobs, with the rotations over them.
#[derive(Default)]
pub(super) struct Rotation {
    pub(super) kinds: HashMap<String, KindSlot>,
    pub(super) jobs: HashMap<Arc<str>, ActiveJob>,
}

impl Rotation {
    /// Decides how many items to claim from which jobs, reserving buffer room: per kind at
    /// most `max(limit, 32)` items buffered (one more for a job that waits with nothing).
    /// With `cluster`, a job holds no more ready items here than it can start at once.
    pub(super) fn plan_claims(&mut self, cluster: bool, t: f64) -> Vec<Claim> {
        let mut grants: HashMap<Arc<str>, (u32, bool)> = HashMap::new();
        let mut plan = Vec::new();
        let Rotation { kinds, jobs } = self;
        for (kind, slot) in kinds.iter_mut() {
            if slot.paused {
                continue;
            }
            let target = buffer_target(slot.limit);
            let mut room = target.saturating_sub(slot.buffered);
            // Refill in batches: claim when half the buffer is gone, or at once when slots
            // sit idle with nothing ready.
            // A job that could run another item but has nothing ready or coming is served
            // at once, whatever the buffer holds for other jobs: a small job behind a big
            // one gets items ready, and `start_ready`'s rotation gives it the next free
            // slot. (Bounded look: the rotation brings every job to the front in turn.)
            let idle_slots = slot.active < slot.limit;
            let hungry = slot.claimable.iter().take(HUNGRY_SCAN).any(|id| {
                jobs.get(id).is_some_and(|j| {
                    !j.exhausted
                        && j.runnable(t)
                        && j.ready.is_empty()
                        && j.claiming == 0
                        && j.active < j.parallel
                })
            });
            let starving = (idle_slots && slot.buffered == 0) || hungry;
            if room * 2 < target && !starving {
                continue;
            }
            if room == 0 && hungry {
                room = 1;
            }
            // Highest level first; within a level, one item per job per turn.
            for level in levels(slot.claimable.iter(), jobs, t, |j| !j.exhausted) {
                let mut idle_turns = 0;
                while room > 0 && idle_turns < slot.claimable.len() {
                    let Some(id) = slot.claimable.pop_front() else {
                        break;
                    };
                    let Some(job) = jobs.get_mut(&id).filter(|j| !j.exhausted && !j.cancelled)
                    else {
                        continue; // dropped from the rotation for good
                    };
                    if !job.runnable(t) || job.level(t) != level {
                        idle_turns += 1;
                        slot.claimable.push_back(id);
                        continue;
                    }
                    let claimable_left = job
                        .unclaimed
                        .is_none_or(|left| left > u64::from(job.claiming));
                    // Several nodes share the queue: a node holds no more ready items of
                    // a job than it can start at once, so the others get the rest
                    // instead of idling while one node works through a hoard.
                    let cap = if cluster {
                        job.parallel.min(target)
                    } else {
                        target
                    };
                    if (job.ready.len() as u32) + job.claiming < cap && claimable_left {
                        job.claiming += 1;
                        slot.buffered += 1;
                        room -= 1;
                        idle_turns = 0;
                        grants.entry(id.clone()).or_insert((0, !job.announced)).0 += 1;
                    } else {
                        idle_turns += 1;
                    }
                    slot.claimable.push_back(id);
                }
            }
            plan.extend(grants.drain().map(|(job_id, (n, first))| Claim {
                job_id,
                kind: kind.clone(),
                n,
                first,
            }));
        }
        plan
    }

    /// Takes ready items off their jobs while their kind, job and group have free slots,
    /// counting them as running; the caller hands them to the Workers.
    pub(super) fn start_ready(&mut self, groups: &mut Groups, t: f64) -> Vec<Start> {
        let mut starts = Vec::new();
        let Rotation { kinds, jobs } = self;
        let groups = &mut groups.slots;
        // A job whose group is full waits like one at its own `parallel`.
        let group_open = |groups: &HashMap<String, GroupSlot>, j: &ActiveJob| {
            j.group
                .as_ref()
                .and_then(|g| groups.get(g))
                .is_none_or(GroupSlot::open)
        };
        for (kind, slot) in kinds.iter_mut() {
            if slot.paused || slot.active >= slot.limit {
                continue;
            }
            let mut batches: HashMap<Arc<str>, Vec<ClaimedItem>> = HashMap::new();
            // Highest level first; within a level, one item per job per turn.
            let open = |j: &ActiveJob| {
                j.active < j.parallel && !j.ready.is_empty() && group_open(groups, j)
            };
            for level in levels(slot.startable.iter(), jobs, t, open) {
                let mut idle_turns = 0;
                while slot.active < slot.limit && idle_turns < slot.startable.len() {
                    let Some(id) = slot.startable.pop_front() else {
                        break;
                    };
                    let Some(job) = jobs.get_mut(&id) else {
                        continue;
                    };
                    if job.ready.is_empty() {
                        // Its ready items were taken back (paused): out of the rotation,
                        // without counting as a turn.
                        job.in_startable = false;
                        continue;
                    }
                    if job.active < job.parallel
                        && job.runnable(t)
                        && job.level(t) == level
                        && group_open(groups, job)
                    {
                        if let Some(item) = job.ready.pop_front() {
                            if let Some(g) = job.group.as_ref().and_then(|g| groups.get_mut(g)) {
                                g.active += 1;
                            }
                            job.active += 1;
                            job.waiting_since = t;
                            slot.active += 1;
                            slot.buffered -= 1;
                            batches.entry(id.clone()).or_default().push(item);
                            idle_turns = 0;
                        }
                    } else {
                        idle_turns += 1;
                    }
                    if job.ready.is_empty() {
                        job.in_startable = false;
                    } else {
                        slot.startable.push_back(id);
                    }
                }
            }
            for (id, items) in batches {
                let job = &jobs[&id];
                starts.push((kind.clone(), job.ctx.clone(), items));
            }
        }
        starts
    }

    /// Makes a job claimable again after items of it went back to the queue.
    pub(super) fn reopen(&mut self, job_id: &str) {
        let Some((id, job)) = self.jobs.get_key_value(job_id) else {
            return;
        };
        let (id, kind) = (id.clone(), job.kind.clone());
        if let Some(job) = self.jobs.get_mut(&id) {
            job.exhausted = false;
            job.unclaimed = None;
        }
        if let Some(slot) = self.kinds.get_mut(&kind) {
            if !slot.claimable.contains(&id) {
                slot.claimable.push_back(id);
            }
        }
    }

    /// Takes a job's claimed-but-not-started items back; the caller puts them back in the
    /// queue with the next write.
    pub(super) fn unready(&mut self, job_id: &str) -> Vec<store::items::Release> {
        let Some(job) = self.jobs.get_mut(job_id) else {
            return Vec::new();
        };
        let ready: Vec<ClaimedItem> = job.ready.drain(..).collect();
        if let Some(slot) = self.kinds.get_mut(&job.kind) {
            slot.buffered = slot.buffered.saturating_sub(ready.len() as u32);
        }
        ready
            .into_iter()
            .map(|i| (i.job_id, i.index, i.attempt))
            .collect()
    }

    /// Ends the reservation a claim made. The kind's room is given back even when the job
    /// was finalized and forgotten while the claim was in flight.
    pub(super) fn settle_claim(&mut self, claim: &Claim) {
        if let Some(slot) = self.kinds.get_mut(&claim.kind) {
            slot.buffered = slot.buffered.saturating_sub(claim.n);
        }
        if let Some(job) = self.jobs.get_mut(&claim.job_id) {
            job.claiming = job.claiming.saturating_sub(claim.n);
        }
    }

    /// What could start now per concurrency group: the ready items of runnable jobs, up
    /// to their `parallel`, a kind's part capped by its free slots (so a node whose kind
    /// is busy with other work does not sit on group slots).
    pub(super) fn group_demand(&self, t: f64) -> HashMap<&str, u32> {
        let mut by_kind: HashMap<(&str, &str), u32> = HashMap::new();
        for job in self.jobs.values() {
            if let Some(g) = &job.group {
                if job.runnable(t) && !job.ready.is_empty() {
                    let startable =
                        (job.ready.len() as u32).min(job.parallel.saturating_sub(job.active));
                    *by_kind.entry((g.as_str(), job.kind.as_str())).or_default() += startable;
                }
            }
        }
        let mut demand: HashMap<&str, u32> = HashMap::new();
        for ((group, kind), n) in by_kind {
            let room = self.kinds.get(kind).map_or(0, |k| {
                if k.paused {
                    0
                } else {
                    k.limit.saturating_sub(k.active)
                }
            });
            *demand.entry(group).or_default() += n.min(room);
        }
        demand
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use crate::processor::ProgressReporter;
    use tokio_util::sync::CancellationToken;

    const T: f64 = 1_000.0;

    /// An open job of `kind` with nothing claimed, waiting since `T`.
    fn job(id: &str, kind: &str, priority: i32, parallel: u32) -> ActiveJob {
        ActiveJob {
            ctx: Arc::new(JobContext {
                id: Arc::from(id),
                options: Arc::new(serde_json::json!({})),
                secrets: Default::default(),
                item_timeout: None,
                cancel: CancellationToken::new(),
                progress: ProgressReporter::detached(id),
            }),
            kind: kind.into(),
            parallel,
            active: 0,
            claiming: 0,
            ready: VecDeque::new(),
            in_startable: false,
            exhausted: false,
            unclaimed: None,
            cancelled: false,
            announced: false,
            counts: Counts::default(),
            started_at: None,
            priority,
            run_at: None,
            paused: false,
            waiting_since: T,
            retry: RetryPolicy::default(),
            retry_wakeups: Vec::new(),
            waiting_on: Vec::new(),
            run_on_failure: false,
            deadline: None,
            group: None,
            tokens: Default::default(),
            token_budget: None,
            stop_reason: None,
        }
    }

    /// A rotation with one kind of this limit and these jobs, claimable in this order.
    fn rotation(limit: u32, jobs: Vec<ActiveJob>) -> Rotation {
        let mut r = Rotation::default();
        let mut slot = KindSlot::new(limit, false);
        for j in jobs {
            let id = j.ctx.id.clone();
            slot.claimable.push_back(id.clone());
            r.jobs.insert(id, j);
        }
        r.kinds.insert("k".into(), slot);
        r
    }

    /// Claims per job, by id, from one plan.
    fn granted(plan: &[Claim]) -> Vec<(String, u32)> {
        let mut got: Vec<(String, u32)> =
            plan.iter().map(|c| (c.job_id.to_string(), c.n)).collect();
        got.sort();
        got
    }

    /// Makes `n` ready items of a job, as a committed claim would.
    fn make_ready(r: &mut Rotation, id: &str, n: u32) {
        let job = r.jobs.get_mut(id).unwrap();
        for index in 0..n {
            job.ready.push_back(ClaimedItem {
                job_id: id.into(),
                index,
                key: format!("{id}-{index}"),
                payload: serde_json::Value::Null,
                attempt: 1,
            });
        }
        job.in_startable = true;
        let slot = r.kinds.get_mut("k").unwrap();
        slot.buffered += n;
        slot.startable.push_back(Arc::from(id));
    }

    #[test]
    fn waiting_raises_the_level_one_step_per_aging_period() {
        let t = 1_000.0;
        assert_eq!(effective_priority(0, t, t), 0);
        assert_eq!(effective_priority(-5, t, t + AGING_SECS - 0.1), -5);
        assert_eq!(effective_priority(-5, t, t + AGING_SECS), -4);
        // A job of priority 0 that waited ten periods is served beside fresh priority-10 work.
        assert_eq!(
            effective_priority(0, t, t + 10.0 * AGING_SECS),
            effective_priority(10, t + 10.0 * AGING_SECS, t + 10.0 * AGING_SECS)
        );
        // A clock that moved back never lowers a level.
        assert_eq!(effective_priority(3, t, t - 100.0), 3);
    }

    #[test]
    fn the_buffer_is_the_limit_but_at_least_a_batch() {
        assert_eq!(buffer_target(1), MIN_BUFFER);
        assert_eq!(buffer_target(100), 100);
    }

    #[test]
    fn claims_share_the_buffer_round_robin_within_the_highest_level() {
        let mut r = rotation(
            4,
            vec![
                job("a", "k", 0, 100),
                job("b", "k", 0, 100),
                job("low", "k", -1, 100),
            ],
        );
        let plan = r.plan_claims(false, T);
        // The whole buffer (32) goes to the two jobs of the highest level, one item each per
        // turn; the lower one gets nothing while they can take more.
        assert_eq!(granted(&plan), vec![("a".into(), 16), ("b".into(), 16)]);
        assert!(plan.iter().all(|c| c.first && c.kind == "k"));
        assert_eq!(r.kinds["k"].buffered, 32);
        assert_eq!(r.jobs["a"].claiming, 16);
        // With the buffer full, a job waiting with nothing ready or coming (`low`) still
        // makes room for one more item, which the highest level takes first.
        assert_eq!(granted(&r.plan_claims(false, T)), vec![("a".into(), 1)]);
        // Once the higher jobs have nothing left to claim, the lower one is served.
        for id in ["a", "b"] {
            r.jobs.get_mut(id).unwrap().exhausted = true;
        }
        assert_eq!(granted(&r.plan_claims(false, T)), vec![("low".into(), 1)]);
    }

    #[test]
    fn a_job_that_waited_long_enough_is_claimed_for_beside_higher_ones() {
        let mut low = job("low", "k", -1, 100);
        low.waiting_since = T - AGING_SECS;
        let mut r = rotation(4, vec![job("a", "k", 0, 100), low]);
        assert_eq!(
            granted(&r.plan_claims(false, T)),
            vec![("a".into(), 16), ("low".into(), 16)]
        );
    }

    #[test]
    fn a_hungry_job_is_claimed_for_even_with_a_full_buffer() {
        let mut r = rotation(4, vec![job("big", "k", 0, 100)]);
        r.plan_claims(false, T);
        assert_eq!(r.kinds["k"].buffered, 32);
        // A small job arrives behind the big one, which holds the whole buffer.
        let small = job("small", "k", 0, 1);
        r.kinds
            .get_mut("k")
            .unwrap()
            .claimable
            .push_back(small.ctx.id.clone());
        r.jobs.insert(small.ctx.id.clone(), small);
        assert_eq!(granted(&r.plan_claims(false, T)), vec![("small".into(), 1)]);
    }

    #[test]
    fn in_a_cluster_a_job_holds_no_more_than_it_can_start() {
        let mut r = rotation(4, vec![job("a", "k", 0, 3)]);
        assert_eq!(granted(&r.plan_claims(true, T)), vec![("a".into(), 3)]);
        let mut r = rotation(4, vec![job("a", "k", 0, 3)]);
        assert_eq!(granted(&r.plan_claims(false, T)), vec![("a".into(), 32)]);
    }

    #[test]
    fn paused_delayed_and_waiting_jobs_are_not_claimed_for() {
        let mut paused = job("paused", "k", 0, 10);
        paused.paused = true;
        let mut later = job("later", "k", 0, 10);
        later.run_at = Some(T + 1.0);
        let mut waiting = job("waiting", "k", 0, 10);
        waiting.waiting_on = vec!["other".into()];
        let mut r = rotation(4, vec![paused, later, waiting]);
        assert!(r.plan_claims(false, T).is_empty());
        // Its start time come, the delayed one is (a whole buffer: `parallel` bounds
        // what runs, not what is claimed, on a queue of its own).
        assert_eq!(
            granted(&r.plan_claims(false, T + 1.0)),
            vec![("later".into(), 32)]
        );
    }

    #[test]
    fn starts_alternate_between_jobs_up_to_the_kind_limit_and_each_parallel() {
        let mut r = rotation(3, vec![job("a", "k", 0, 10), job("b", "k", 0, 1)]);
        make_ready(&mut r, "a", 5);
        make_ready(&mut r, "b", 5);
        let mut groups = Groups::new(HashMap::new(), false);
        let starts = r.start_ready(&mut groups, T);
        let mut per_job: Vec<(String, usize)> = starts
            .iter()
            .map(|(kind, job, items)| {
                assert_eq!(kind, "k");
                (job.id.to_string(), items.len())
            })
            .collect();
        per_job.sort();
        // b runs one at a time; a takes the rest of the kind's three slots.
        assert_eq!(per_job, vec![("a".into(), 2), ("b".into(), 1)]);
        assert_eq!(r.kinds["k"].active, 3);
        assert_eq!(r.kinds["k"].buffered, 7);
        assert_eq!(r.jobs["a"].ready.front().map(|i| i.index), Some(2));
        // Nothing more starts while the kind is full.
        assert!(r.start_ready(&mut groups, T).is_empty());
    }

    #[test]
    fn starts_go_to_the_highest_level_first() {
        let mut r = rotation(2, vec![job("low", "k", 0, 10), job("high", "k", 5, 10)]);
        make_ready(&mut r, "low", 2);
        make_ready(&mut r, "high", 2);
        let starts = r.start_ready(&mut Groups::new(HashMap::new(), false), T);
        assert_eq!(starts.len(), 1);
        assert_eq!(&*starts[0].1.id, "high");
        assert_eq!(starts[0].2.len(), 2);
    }

    #[test]
    fn a_full_group_holds_its_jobs_back() {
        let mut grouped = job("g", "k", 0, 10);
        grouped.group = Some("gpu".into());
        let mut r = rotation(10, vec![grouped, job("free", "k", 0, 10)]);
        make_ready(&mut r, "g", 3);
        make_ready(&mut r, "free", 3);
        let mut groups = Groups::new(HashMap::from([("gpu".to_string(), 1)]), false);
        let mut per_job: Vec<(String, usize)> = r
            .start_ready(&mut groups, T)
            .iter()
            .map(|(_, job, items)| (job.id.to_string(), items.len()))
            .collect();
        per_job.sort();
        assert_eq!(per_job, vec![("free".into(), 3), ("g".into(), 1)]);
        assert_eq!(groups.slots["gpu"].active, 1);
    }

    #[test]
    fn unready_gives_back_the_buffer_and_reopen_rejoins_the_claim_rotation() {
        let mut r = rotation(4, vec![job("a", "k", 0, 10)]);
        make_ready(&mut r, "a", 2);
        let released = r.unready("a");
        assert_eq!(released, vec![("a".into(), 0, 1), ("a".into(), 1, 1)]);
        assert_eq!(r.kinds["k"].buffered, 0);
        r.kinds.get_mut("k").unwrap().claimable.clear();
        r.jobs.get_mut("a").unwrap().exhausted = true;
        r.reopen("a");
        r.reopen("a");
        assert_eq!(r.kinds["k"].claimable.len(), 1);
        assert!(!r.jobs["a"].exhausted);
    }
}
