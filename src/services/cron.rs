//! Cron schedules: a stored job body (the `POST /batch/jobs` form) submitted once per tick
//! of a cron expression read in an IANA time zone.
//!
//! Each engine runs a [`Scheduler`] task. It sleeps until the earliest due tick (at most a
//! second, so schedules created through another node are seen), loads the unpaused
//! schedules whose `next_run_at` has passed and, for each, submits the job with the
//! idempotency key `schedule:<id>:<tick unix seconds>`, then moves `next_run_at` on with
//! an UPDATE guarded by the value it read. Exactly one job per tick follows, whatever the
//! number of nodes and restarts:
//! - two schedulers that read the same due tick submit the same key: the store's
//!   check-then-insert runs in one `BEGIN IMMEDIATE` transaction, so one creates the job and
//!   the other gets it back (`replayed`); only one of their guarded UPDATEs matches;
//! - a crash between the submission and the UPDATE leaves `next_run_at` on the tick, and
//!   the next start submits the same key again, which returns the job already created.
//!
//! Missed ticks (the engine was down, or the scheduler stalled): only the latest missed
//! tick runs, once; older ones are skipped. A tick whose job is wrong for good (its template
//! no longer passes the submission checks) is skipped, with the reason in `last_error`; one
//! that failed for a reason that may pass (the store failed, its kind is not registered on
//! this node) stays due and is tried again after a backoff (1 s doubling to 60 s), the
//! reason in `last_error` meanwhile. Just before submitting, the scheduler checks the
//! schedule again: one paused or deleted since it was read fires nothing.
//!
//! Expressions have 5 fields (`min hour dom month dow`) or 6 with seconds first; see
//! [`CronSchedule::parse`]. Daylight-saving changes follow the wall clock: a time that a
//! spring-forward gap skips runs at the first instant after the gap, a time that a
//! fall-back repeats runs once (at its first pass); interval patterns (`0 * * * *`) run
//! once per real hour.

use crate::model::{now, FieldError, NewJob};
use crate::queue::messages::EngineError;
use crate::queue::messages::SubmitJob;
use crate::store::Store;
use crate::store::{self, schedules::ScheduleRecord};
use actix::Recipient;
use chrono::TimeZone;
use chrono_tz::Tz;
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The time zone of a schedule that names none.
pub const DEFAULT_TIMEZONE: &str = "UTC";
/// Longest accepted cron expression.
const MAX_CRON_LEN: usize = 256;
/// Longest accepted schedule name.
pub const MAX_NAME_LEN: usize = 200;
/// Longest the scheduler sleeps, so schedules created or resumed through another node
/// are seen within about a second.
const MAX_SLEEP: Duration = Duration::from_secs(1);
/// How long after a tick's second the scheduler wakes, so the clock has surely passed it.
const TICK_SLACK: f64 = 0.005;
/// Due schedules handled per pass.
const DUE_BATCH: i64 = 100;

/// A parsed cron expression and the time zone it is read in.
#[derive(Debug, Clone)]
pub struct CronSchedule {
    cron: Cron,
    tz: Tz,
}

impl CronSchedule {
    /// Parses an expression of 5 fields (`minute hour day-of-month month day-of-week`) or 6
    /// (seconds first), with croner's extensions (`L`, `W`, `#`, names, `@daily` …), in an
    /// IANA time zone (`UTC`, `Europe/Berlin`). Errors name the field: `cron` or `timezone`.
    pub fn parse(expression: &str, timezone: &str) -> Result<CronSchedule, EngineError> {
        let cron = parse_cron(expression).map_err(|m| invalid("cron", m))?;
        let tz = parse_timezone(timezone).map_err(|m| invalid("timezone", m))?;
        Ok(CronSchedule { cron, tz })
    }

    /// The first tick strictly after `t` (unix seconds); `None` if there is none.
    pub fn next_after(&self, t: i64) -> Option<i64> {
        let at = self.tz.timestamp_opt(t, 0).single()?;
        self.cron
            .find_next_occurrence(&at, false)
            .ok()
            .map(|d| d.timestamp())
    }

    /// The latest tick at or before `t` (unix seconds); `None` if there is none.
    pub fn latest_at_or_before(&self, t: i64) -> Option<i64> {
        let at = self.tz.timestamp_opt(t, 0).single()?;
        self.cron
            .find_previous_occurrence(&at, true)
            .ok()
            .map(|d| d.timestamp())
    }

    /// [`next_after`](Self::next_after) on the blocking pool: an expression that matches
    /// rarely or never (`0 0 30 2 *`) makes the search take tens of milliseconds, which
    /// must not stall an event loop.
    pub async fn next_after_blocking(&self, t: i64) -> Result<Option<i64>, EngineError> {
        let schedule = self.clone();
        tokio::task::spawn_blocking(move || schedule.next_after(t))
            .await
            .map_err(|e| invalid("cron", format!("the next tick could not be computed: {e}")))
    }

    /// The tick to fire for a schedule whose stored next tick, `next_run_at`, is due at
    /// `now`: the latest tick not after `now` (older missed ticks are skipped), never one
    /// before `next_run_at`.
    pub fn due_tick(&self, next_run_at: i64, now: i64) -> i64 {
        self.latest_at_or_before(now)
            .unwrap_or(next_run_at)
            .max(next_run_at)
    }
}

/// Parses a cron expression: 5 fields, or 6 with seconds first.
pub fn parse_cron(expression: &str) -> Result<Cron, String> {
    let expression = expression.trim();
    if expression.is_empty() {
        return Err(
            "must not be empty; expected 5 fields (minute hour day-of-month month \
                    day-of-week) or 6 with seconds first"
                .into(),
        );
    }
    if expression.len() > MAX_CRON_LEN {
        return Err(format!("is longer than {MAX_CRON_LEN} bytes"));
    }
    CronParser::builder()
        .seconds(Seconds::Optional)
        .year(Year::Disallowed)
        .build()
        .parse(expression)
        .map_err(|e| format!("invalid cron expression '{expression}': {e}"))
}

/// Parses an IANA time zone name.
pub fn parse_timezone(name: &str) -> Result<Tz, String> {
    name.trim().parse::<Tz>().map_err(|_| {
        format!("unknown time zone '{name}': expected an IANA name such as UTC or Europe/Berlin")
    })
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> EngineError {
    FieldError::new(field, message).into()
}

pub use crate::submission::{tick_key, TICK_KEY_PREFIX};

/// Turns a schedule's job body into the job it submits, checked as `POST /batch/jobs`
/// checks it ([`crate::submission::template_job`]); errors name the field under `job.`
/// (`job.items`, `job.parallel`). With `tick`, the job carries `metadata.schedule_id`,
/// `metadata.scheduled_for` (the tick, unix seconds) and the tick's idempotency key.
pub fn job_from_template(
    template: &Value,
    schedule_id: &str,
    tick: Option<i64>,
) -> Result<NewJob, EngineError> {
    Ok(crate::submission::template_job(
        template,
        schedule_id,
        tick,
    )?)
}

/// A schedule as asked for, before it is checked and stored.
#[derive(Debug, Clone)]
pub struct NewSchedule {
    /// Optional unique name: creating a schedule whose name exists returns the existing
    /// one when its definition is the same, and is a conflict otherwise.
    pub name: Option<String>,
    /// The cron expression.
    pub cron: String,
    /// IANA time zone; [`DEFAULT_TIMEZONE`] when `None`.
    pub timezone: Option<String>,
    /// The job body (`POST /batch/jobs` form).
    pub job: Value,
}

/// A new schedule identifier, `sched-{12 hex}`.
pub fn new_schedule_id() -> String {
    let hex = uuid::Uuid::new_v4().simple().to_string();
    format!("sched-{}", &hex[..12])
}

/// The schedules' side of an engine: their store, and the ticker task's wake-up and stop.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<SchedulerInner>,
}

struct SchedulerInner {
    store: Store,
    wake: Notify,
    stop: CancellationToken,
}

impl Scheduler {
    pub(crate) fn new(store: Store) -> Scheduler {
        Scheduler {
            inner: Arc::new(SchedulerInner {
                store,
                wake: Notify::new(),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// Starts the engine's ticker task on the current actix arbiter; due ticks are
    /// submitted through `submit` (the Supervisor), like any other job.
    pub(crate) fn start(&self, submit: Recipient<SubmitJob>) {
        actix::spawn(run(self.clone(), submit));
    }

    /// Stops the ticker (at shutdown); a tick being submitted finishes first.
    pub(crate) fn stop(&self) {
        self.inner.stop.cancel();
    }

    pub(crate) fn wake(&self) {
        self.inner.wake.notify_one();
    }

    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }
}

/// What one pass over the due schedules found.
enum Pass {
    /// Every due schedule was handled; `full` when the batch limit was reached.
    Done { full: bool },
    /// The store failed; try again later.
    Failed,
    /// The engine is shutting down.
    Stop,
}

/// How one due schedule's turn ended.
enum Fired {
    /// Its tick was handled (submitted, found, skipped for good, or no longer due).
    Done,
    /// It could not be submitted for a reason that may pass (the store failed, its kind
    /// is not registered here): the tick stays due and is tried again after a backoff.
    RetryLater,
}

/// Longest wait before a schedule whose tick failed is tried again.
const MAX_RETRY_DELAY: f64 = 60.0;

/// Schedules waiting out a failed tick: id → (not before, failures in a row).
type Backoff = HashMap<String, (f64, u32)>;

/// The ids still waiting at `t`.
fn waiting(backoff: &Backoff, t: f64) -> Vec<String> {
    backoff
        .iter()
        .filter(|(_, (until, _))| *until > t)
        .map(|(id, _)| id.clone())
        .collect()
}

/// The ticker: fires due ticks until the engine stops.
async fn run(scheduler: Scheduler, submit: Recipient<SubmitJob>) {
    let store = scheduler.store().clone();
    let stop = scheduler.inner.stop.clone();
    let mut backoff = Backoff::new();
    loop {
        if stop.is_cancelled() {
            return;
        }
        let wait = match pass(&submit, &store, &mut backoff).await {
            Pass::Stop => return,
            Pass::Failed => MAX_SLEEP,
            Pass::Done { full: true } => Duration::ZERO,
            Pass::Done { full: false } => {
                let t = now();
                let except = waiting(&backoff, t);
                let retry = backoff
                    .values()
                    .map(|(until, _)| *until)
                    .filter(|until| *until > t)
                    .reduce(f64::min);
                match store
                    .read(move |conn| store::schedules::next_schedule_due(conn, &except))
                    .await
                {
                    Ok(next) => match next.into_iter().chain(retry).reduce(f64::min) {
                        Some(next) => {
                            Duration::from_secs_f64((next - now() + TICK_SLACK).clamp(0.0, 1.0))
                                .min(MAX_SLEEP)
                        }
                        None => MAX_SLEEP,
                    },
                    Err(e) => {
                        log::error!("scheduler: cannot read the next tick: {e}");
                        MAX_SLEEP
                    }
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = scheduler.inner.wake.notified() => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// Fires every due schedule once, but those waiting out a failure.
async fn pass(submit: &Recipient<SubmitJob>, store: &Store, backoff: &mut Backoff) -> Pass {
    let t = now();
    // Forget failures long past (a schedule deleted while it was failing).
    backoff.retain(|_, (until, _)| *until > t - 2.0 * MAX_RETRY_DELAY);
    let except = waiting(backoff, t);
    let due = match store
        .read(move |conn| store::schedules::due_schedules(conn, t, DUE_BATCH, &except))
        .await
    {
        Ok(due) => due,
        Err(e) => {
            log::error!("scheduler: cannot read the due schedules: {e}");
            return Pass::Failed;
        }
    };
    let full = due.len() as i64 == DUE_BATCH;
    for schedule in due {
        let id = schedule.id.clone();
        match fire(submit, store, schedule, t).await {
            Ok(Fired::Done) => {
                backoff.remove(&id);
            }
            Ok(Fired::RetryLater) => {
                let failures = backoff.get(&id).map_or(0, |(_, n)| *n) + 1;
                let delay = 2f64.powi(failures.min(16) as i32 - 1).min(MAX_RETRY_DELAY);
                backoff.insert(id, (now() + delay, failures));
            }
            Err(pass) => return pass,
        }
    }
    Pass::Done { full }
}

/// Fires a due schedule's tick: submits its job under the tick's key, then advances it.
/// A tick whose job is wrong for good (its template no longer passes the checks) is
/// skipped with the reason in `last_error`; one that failed for a reason that may pass
/// stays due ([`Fired::RetryLater`]).
async fn fire(
    submit: &Recipient<SubmitJob>,
    store: &Store,
    s: ScheduleRecord,
    t: f64,
) -> Result<Fired, Pass> {
    let expected = s.next_run_at;
    let id = s.id.clone();
    let schedule = match CronSchedule::parse(&s.cron, &s.timezone) {
        Ok(schedule) => schedule,
        Err(e) => {
            // Checked at creation; only a changed parser could get here.
            let why = format!("cannot read the schedule any more, paused: {e}");
            log::error!("schedule {id}: {why}");
            return Ok(
                match store
                    .write(move |conn| {
                        store::schedules::halt_schedule(conn, &id, expected, &why, t)
                    })
                    .await
                {
                    Ok(_) => Fired::Done,
                    Err(e) => {
                        log::error!("schedule {}: {e}", s.id);
                        Fired::RetryLater
                    }
                },
            );
        }
    };
    let tick = schedule.due_tick(expected as i64, t.floor() as i64);
    let job = serde_json::from_str::<Value>(&s.job)
        .map_err(|e| invalid("job", format!("stored job is not JSON: {e}")))
        .and_then(|template| job_from_template(&template, &id, Some(tick)));
    let submitted = match job {
        Ok(job) => {
            // Paused or deleted since it was read as due (or fired by another node)?
            let (check_id, check_expected) = (id.clone(), expected);
            match store
                .read(move |conn| {
                    store::schedules::schedule_still_due(conn, &check_id, check_expected)
                })
                .await
            {
                Ok(true) => submit
                    .send(SubmitJob(job))
                    .await
                    .unwrap_or_else(|e| Err(e.into())),
                Ok(false) => {
                    log::debug!(
                        "schedule {id}: tick {tick} no longer due (paused, deleted or fired)"
                    );
                    return Ok(Fired::Done);
                }
                Err(e) => Err(EngineError::Store(e)),
            }
        }
        Err(e) => Err(e),
    };
    let (job_id, error) = match submitted {
        Ok(view) => {
            log::info!(
                "schedule {id}: tick {tick} {} job {}",
                if view.replayed { "found" } else { "created" },
                view.record.id
            );
            (Some(view.record.id), None)
        }
        Err(EngineError::ShuttingDown | EngineError::Mailbox(_)) => return Err(Pass::Stop),
        Err(e @ (EngineError::Store(_) | EngineError::NoProcessor(_))) => {
            log::warn!("schedule {id}: tick {tick} not submitted, will retry: {e}");
            let why = format!("tick {tick} not submitted yet, retrying: {e}");
            if let Err(e) = store
                .write(move |conn| store::schedules::note_schedule_error(conn, &id, expected, &why))
                .await
            {
                log::error!("schedule {}: {e}", s.id);
            }
            return Ok(Fired::RetryLater);
        }
        Err(e) => {
            log::warn!("schedule {id}: tick {tick} skipped: {e}");
            (None, Some(e.to_string()))
        }
    };
    let next = schedule.next_after(tick);
    let written = store
        .write(move |conn| {
            let advanced = store::schedules::advance_schedule(
                conn,
                &id,
                expected,
                next.map_or(expected, |n| n as f64),
                tick as f64,
                job_id.as_deref(),
                error.as_deref(),
            )?;
            if advanced && next.is_none() {
                let why = format!("the expression matches no time after {tick}; paused");
                store::schedules::halt_schedule(conn, &id, expected, &why, t)?;
            }
            Ok(advanced)
        })
        .await;
    match written {
        Ok(true) => Ok(Fired::Done),
        Ok(false) => {
            log::debug!(
                "schedule {}: tick {tick} advanced by another node, or paused or deleted",
                s.id
            );
            Ok(Fired::Done)
        }
        Err(e) => {
            // The tick stays due; submitting it again finds the job under its key.
            log::error!("schedule {}: cannot advance past tick {tick}: {e}", s.id);
            Ok(Fired::RetryLater)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{TimeZone, Utc};

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> i64 {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s)
            .unwrap()
            .timestamp()
    }

    fn ticks(s: &CronSchedule, from: i64, n: usize) -> Vec<i64> {
        let mut t = from;
        (0..n)
            .map(|_| {
                t = s.next_after(t).unwrap();
                t
            })
            .collect()
    }

    #[test]
    fn five_and_six_field_expressions_parse_and_bad_ones_name_their_field() {
        assert!(CronSchedule::parse("*/5 * * * *", "UTC").is_ok());
        assert!(CronSchedule::parse("* * * * * *", "Europe/Berlin").is_ok());
        assert!(CronSchedule::parse("@daily", "America/New_York").is_ok());
        for bad in ["", "* * *", "61 * * * *", "* * * * * * *", "nonsense"] {
            match CronSchedule::parse(bad, "UTC") {
                Err(EngineError::Invalid { field, message }) => {
                    assert_eq!(field, "cron", "{bad}: {message}");
                    assert!(!message.is_empty());
                }
                other => panic!("{bad:?} parsed: {other:?}"),
            }
        }
        match CronSchedule::parse("* * * * *", "Mars/Olympus") {
            Err(EngineError::Invalid { field, message }) => {
                assert_eq!(field, "timezone");
                assert!(message.contains("Mars/Olympus"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn every_second_ticks_each_second() {
        let s = CronSchedule::parse("* * * * * *", "UTC").unwrap();
        let t = utc(2026, 11, 26, 12, 0, 0);
        assert_eq!(ticks(&s, t, 3), vec![t + 1, t + 2, t + 3]);
        assert_eq!(s.latest_at_or_before(t), Some(t));
    }

    #[test]
    fn a_daily_time_in_berlin_follows_the_wall_clock_across_spring_forward() {
        // 2026-03-29: Berlin goes from 02:00 CET (+1) to 03:00 CEST (+2).
        let s = CronSchedule::parse("0 9 * * *", "Europe/Berlin").unwrap();
        let from = utc(2026, 3, 27, 12, 0, 0);
        assert_eq!(
            ticks(&s, from, 3),
            vec![
                utc(2026, 3, 28, 8, 0, 0), // 09:00 CET
                utc(2026, 3, 29, 7, 0, 0), // 09:00 CEST
                utc(2026, 3, 30, 7, 0, 0),
            ]
        );
    }

    #[test]
    fn a_time_in_the_spring_forward_gap_runs_once_right_after_it() {
        // 02:30 does not exist in Berlin on 2026-03-29: it runs at 03:00 CEST, once.
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let from = utc(2026, 3, 28, 12, 0, 0);
        assert_eq!(
            ticks(&s, from, 2),
            vec![
                utc(2026, 3, 29, 1, 0, 0),  // 03:00 CEST, the first instant after the gap
                utc(2026, 3, 30, 0, 30, 0), // 02:30 CEST
            ]
        );
    }

    #[test]
    fn hourly_ticks_stay_an_hour_apart_across_both_changes() {
        let s = CronSchedule::parse("0 * * * *", "Europe/Berlin").unwrap();
        let spring = ticks(&s, utc(2026, 3, 28, 23, 30, 0), 4);
        assert_eq!(
            spring,
            vec![
                utc(2026, 3, 29, 0, 0, 0), // 01:00 CET
                utc(2026, 3, 29, 1, 0, 0), // 03:00 CEST (02:00 never happens)
                utc(2026, 3, 29, 2, 0, 0),
                utc(2026, 3, 29, 3, 0, 0),
            ]
        );
        // 2026-10-25: 03:00 CEST goes back to 02:00 CET; 02:00 happens twice.
        let autumn = ticks(&s, utc(2026, 10, 24, 23, 30, 0), 4);
        assert_eq!(
            autumn,
            vec![
                utc(2026, 10, 25, 0, 0, 0), // 02:00 CEST
                utc(2026, 10, 25, 1, 0, 0), // 02:00 CET
                utc(2026, 10, 25, 2, 0, 0), // 03:00 CET
                utc(2026, 10, 25, 3, 0, 0),
            ]
        );
    }

    #[test]
    fn a_daily_time_in_the_repeated_hour_runs_once() {
        let s = CronSchedule::parse("30 2 * * *", "Europe/Berlin").unwrap();
        let got = ticks(&s, utc(2026, 10, 24, 12, 0, 0), 2);
        assert_eq!(
            got,
            vec![
                utc(2026, 10, 25, 0, 30, 0), // 02:30 CEST, the first pass
                utc(2026, 10, 26, 1, 30, 0), // 02:30 CET the next day
            ]
        );
    }

    #[test]
    fn only_the_latest_missed_tick_is_due() {
        let s = CronSchedule::parse("0 3 * * *", "UTC").unwrap();
        let stored = utc(2026, 11, 20, 3, 0, 0);
        let now = utc(2026, 11, 26, 12, 0, 0);
        assert_eq!(s.due_tick(stored, now), utc(2026, 11, 26, 3, 0, 0));
        assert_eq!(
            s.next_after(s.due_tick(stored, now)),
            Some(utc(2026, 11, 27, 3, 0, 0))
        );
        // On time: the stored tick itself.
        assert_eq!(s.due_tick(stored, stored), stored);
    }

    #[test]
    fn templates_are_checked_like_submissions_and_carry_the_tick() {
        let body = serde_json::json!({"type": "noop", "items": [{"id": 1}], "metadata": {"a": 1}});
        let job = job_from_template(&body, "sched-1", Some(42)).unwrap();
        assert_eq!(job.kind, "noop");
        assert_eq!(
            job.schedule.idempotency_key.as_deref(),
            Some("schedule:sched-1:42")
        );
        assert_eq!(job.metadata["schedule_id"], "sched-1");
        assert_eq!(job.metadata["a"], 1);
        for (body, field) in [
            (serde_json::json!([1]), "job"),
            (serde_json::json!({"items": [1]}), "job.type"),
            (
                serde_json::json!({"type": "noop", "items": []}),
                "job.items",
            ),
            (
                serde_json::json!({"type": "noop", "items": [1], "parallel": 0}),
                "job.parallel",
            ),
            (
                serde_json::json!({"type": "noop", "items": [1], "run_at": 5}),
                "job.run_at",
            ),
            (
                serde_json::json!({"type": "noop", "items": [1], "idempotency_key": "k"}),
                "job.idempotency_key",
            ),
        ] {
            match job_from_template(&body, "s", None) {
                Err(EngineError::Invalid { field: f, .. }) => assert_eq!(f, field, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
    }
}
