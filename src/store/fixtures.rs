//! What the store's unit tests start from: a fresh, migrated SQLite database in memory and
//! jobs to submit to it.

use super::{Conn, PRAGMAS, SQLITE_MIGRATIONS};
use crate::model::{FinishedItem, ItemOutcome, JobSchedule, NewItem, NewJob};
use diesel::connection::SimpleConnection;
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::MigrationHarness;
use serde_json::{json, Value};

/// A connection to a new in-memory database with the migrations run, as `Store::open`
/// leaves a file.
pub(super) fn conn() -> Conn {
    let mut c = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
    c.batch_execute(PRAGMAS).expect("pragmas");
    c.run_pending_migrations(SQLITE_MIGRATIONS)
        .expect("migrations");
    Conn::Sqlite(c)
}

/// A `noop` job of `items` items with options `spec`.
pub(super) fn job_with(spec: Value, items: usize) -> NewJob {
    NewJob {
        kind: "noop".into(),
        spec,
        parallel: 1,
        metadata: json!({}),
        items: (0..items)
            .map(|i| NewItem::new(format!("k{i}"), json!({ "i": i })))
            .collect(),
        schedule: JobSchedule::default(),
    }
}

/// A `noop` job of `items` items without options.
pub(super) fn job(items: usize) -> NewJob {
    job_with(json!({}), items)
}

/// The outcome `outcome` of item `index` of `job_id`, claimed with `attempt`.
pub(super) fn finished(
    job_id: &str,
    index: u32,
    attempt: u32,
    outcome: ItemOutcome,
) -> FinishedItem {
    FinishedItem {
        job_id: job_id.into(),
        index,
        key: format!("k{index}"),
        outcome,
        finished_at: 20.0,
        attempt,
        retry_at: None,
    }
}
