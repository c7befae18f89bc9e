//! The `schedules` table: cron schedules and where their ticks stand (see
//! `crate::services::cron`). Every tick transition is guarded by the `next_run_at` its caller
//! read, so two schedulers never both advance one tick.

use super::schema::schedules;
use super::{Conn, StoreError};
use diesel::prelude::*;

/// A stored cron schedule: its definition and where its ticks stand.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Insertable)]
#[diesel(table_name = schedules, check_for_backend(diesel::sqlite::Sqlite, diesel::pg::Pg))]
pub struct ScheduleRecord {
    /// `sched-{12 hex}`.
    pub id: String,
    /// Optional unique name.
    pub name: Option<String>,
    /// The cron expression, as given.
    pub cron: String,
    /// IANA time zone the expression is read in.
    pub timezone: String,
    /// The job body (`POST /batch/jobs` form), JSON text.
    pub job: String,
    /// Unix seconds; set while paused.
    pub paused_at: Option<f64>,
    /// Unix seconds of the next tick.
    pub next_run_at: f64,
    /// Unix seconds of the last tick that fired.
    pub last_run_at: Option<f64>,
    /// The job the last tick created (or found, when another node created it).
    pub last_job_id: Option<String>,
    /// Why the last tick could not submit its job, if it could not.
    pub last_error: Option<String>,
    /// Unix seconds.
    pub created_at: f64,
}

/// Schedule creation: inserts a schedule.
pub fn insert_schedule(conn: &mut Conn, schedule: &ScheduleRecord) -> Result<(), StoreError> {
    diesel::insert_into(schedules::table)
        .values(schedule)
        .execute(conn)?;
    Ok(())
}

/// Read: every schedule, oldest first.
pub fn list_schedules(conn: &mut Conn) -> Result<Vec<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .order((schedules::created_at.asc(), schedules::id.asc()))
        .select(ScheduleRecord::as_select())
        .load(conn)?)
}

/// Read: one schedule.
pub fn get_schedule(conn: &mut Conn, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .filter(schedules::id.eq(id))
        .select(ScheduleRecord::as_select())
        .first(conn)
        .optional()?)
}

/// Read: the schedule with this name.
pub fn schedule_by_name(conn: &mut Conn, name: &str) -> Result<Option<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .filter(schedules::name.eq(name))
        .select(ScheduleRecord::as_select())
        .first(conn)
        .optional()?)
}

/// Read: up to `limit` unpaused schedules whose next tick is due (`next_run_at <= now`),
/// most overdue first, but for those in `except` (waiting out a failure).
pub fn due_schedules(
    conn: &mut Conn,
    now: f64,
    limit: i64,
    except: &[String],
) -> Result<Vec<ScheduleRecord>, StoreError> {
    Ok(schedules::table
        .filter(schedules::paused_at.is_null())
        .filter(schedules::next_run_at.le(now))
        .filter(schedules::id.ne_all(except))
        .order(schedules::next_run_at.asc())
        .limit(limit)
        .select(ScheduleRecord::as_select())
        .load(conn)?)
}

/// Read: the earliest next tick of the unpaused schedules but those in `except`.
pub fn next_schedule_due(conn: &mut Conn, except: &[String]) -> Result<Option<f64>, StoreError> {
    Ok(schedules::table
        .filter(schedules::paused_at.is_null())
        .filter(schedules::id.ne_all(except))
        .select(diesel::dsl::min(schedules::next_run_at))
        .first(conn)?)
}

/// Read: whether a schedule still exists, unpaused, with its next tick at `expected_next`
/// (the scheduler's last look before it submits a tick it read as due).
pub fn schedule_still_due(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
) -> Result<bool, StoreError> {
    Ok(diesel::select(diesel::dsl::exists(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null())
            .filter(schedules::next_run_at.eq(expected_next)),
    ))
    .get_result(conn)?)
}

/// Schedule tick failure: records why a due tick could not be submitted this time,
/// leaving it due (guarded like [`advance_schedule`]).
pub fn note_schedule_error(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
    error: &str,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null())
            .filter(schedules::next_run_at.eq(expected_next)),
    )
    .set(schedules::last_error.eq(error))
    .execute(conn)?;
    Ok(n == 1)
}

/// Schedule tick: records the tick `ran_at` and moves `next_run_at` on, guarded by the
/// `next_run_at` the caller read, so that of two schedulers that fired the same tick only
/// one advances it, and by `paused_at IS NULL`, so a schedule paused meanwhile keeps its
/// state. Returns whether this call advanced it.
pub fn advance_schedule(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
    next_run_at: f64,
    ran_at: f64,
    job_id: Option<&str>,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null())
            .filter(schedules::next_run_at.eq(expected_next)),
    )
    .set((
        schedules::next_run_at.eq(next_run_at),
        schedules::last_run_at.eq(ran_at),
        schedules::last_job_id.eq(job_id),
        schedules::last_error.eq(error),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Schedule stop: a schedule whose expression cannot fire any more is paused with why,
/// guarded like [`advance_schedule`].
pub fn halt_schedule(
    conn: &mut Conn,
    id: &str,
    expected_next: f64,
    error: &str,
    now: f64,
) -> Result<bool, StoreError> {
    let n = diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::next_run_at.eq(expected_next)),
    )
    .set((
        schedules::paused_at.eq(now),
        schedules::last_error.eq(error),
    ))
    .execute(conn)?;
    Ok(n == 1)
}

/// Schedule pause: sets `paused_at` (kept when already paused). `None` when unknown.
pub fn pause_schedule(
    conn: &mut Conn,
    id: &str,
    now: f64,
) -> Result<Option<ScheduleRecord>, StoreError> {
    diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_null()),
    )
    .set(schedules::paused_at.eq(now))
    .execute(conn)?;
    get_schedule(conn, id)
}

/// Schedule resume: clears `paused_at` of a paused schedule and sets its next tick (an
/// unpaused one is left as it is). `None` when unknown.
pub fn resume_schedule(
    conn: &mut Conn,
    id: &str,
    next_run_at: f64,
) -> Result<Option<ScheduleRecord>, StoreError> {
    diesel::update(
        schedules::table
            .filter(schedules::id.eq(id))
            .filter(schedules::paused_at.is_not_null()),
    )
    .set((
        schedules::paused_at.eq(None::<f64>),
        schedules::next_run_at.eq(next_run_at),
    ))
    .execute(conn)?;
    get_schedule(conn, id)
}

/// Schedule deletion: removes the schedule (its jobs stay). Returns whether it existed.
pub fn delete_schedule(conn: &mut Conn, id: &str) -> Result<bool, StoreError> {
    Ok(diesel::delete(schedules::table.filter(schedules::id.eq(id))).execute(conn)? == 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::conn;

    fn schedule(id: &str, next_run_at: f64) -> ScheduleRecord {
        ScheduleRecord {
            id: id.into(),
            name: Some(format!("name-{id}")),
            cron: "* * * * *".into(),
            timezone: "UTC".into(),
            job: "{}".into(),
            paused_at: None,
            next_run_at,
            last_run_at: None,
            last_job_id: None,
            last_error: None,
            created_at: 1.0,
        }
    }

    #[test]
    fn a_due_tick_advances_once_for_the_next_run_it_was_read_at() {
        let mut c = conn();
        insert_schedule(&mut c, &schedule("s", 100.0)).unwrap();
        insert_schedule(&mut c, &schedule("later", 500.0)).unwrap();
        let due = due_schedules(&mut c, 200.0, 10, &[]).unwrap();
        assert_eq!(due, [schedule("s", 100.0)]);
        assert!(due_schedules(&mut c, 200.0, 10, &["s".into()])
            .unwrap()
            .is_empty());
        assert_eq!(next_schedule_due(&mut c, &[]).unwrap(), Some(100.0));
        assert!(note_schedule_error(&mut c, "s", 100.0, "refused").unwrap());
        assert!(advance_schedule(&mut c, "s", 100.0, 160.0, 101.0, Some("job"), None).unwrap());
        assert!(!advance_schedule(&mut c, "s", 100.0, 160.0, 101.0, Some("dup"), None).unwrap());
        let s = get_schedule(&mut c, "s").unwrap().unwrap();
        assert_eq!((s.next_run_at, s.last_run_at), (160.0, Some(101.0)));
        assert_eq!(
            (s.last_job_id.as_deref(), s.last_error.as_deref()),
            (Some("job"), None)
        );
        assert_eq!(schedule_by_name(&mut c, "name-s").unwrap(), Some(s));
    }

    #[test]
    fn a_paused_or_halted_schedule_is_not_due_until_resumed() {
        let mut c = conn();
        insert_schedule(&mut c, &schedule("s", 100.0)).unwrap();
        assert!(schedule_still_due(&mut c, "s", 100.0).unwrap());
        let paused = pause_schedule(&mut c, "s", 150.0).unwrap().unwrap();
        assert_eq!(paused.paused_at, Some(150.0));
        assert!(!schedule_still_due(&mut c, "s", 100.0).unwrap());
        assert!(!advance_schedule(&mut c, "s", 100.0, 160.0, 150.0, None, None).unwrap());
        let resumed = resume_schedule(&mut c, "s", 200.0).unwrap().unwrap();
        assert_eq!((resumed.paused_at, resumed.next_run_at), (None, 200.0));
        assert!(halt_schedule(&mut c, "s", 200.0, "no more ticks", 210.0).unwrap());
        assert!(due_schedules(&mut c, 300.0, 10, &[]).unwrap().is_empty());
        assert_eq!(list_schedules(&mut c).unwrap().len(), 1);
        assert!(delete_schedule(&mut c, "s").unwrap());
        assert!(!delete_schedule(&mut c, "s").unwrap());
        assert_eq!(pause_schedule(&mut c, "s", 1.0).unwrap(), None);
    }
}
