//! The start mark of claimed items (`store::items::mark_started`, one statement for a whole
//! write on PostgreSQL) is fenced like an outcome: only this node's claim with the same
//! attempt is marked, on both backends.

use crate::helpers::{postgres_available, TestDb};
use batchforge::model::{ItemStatus, JobSchedule, NewItem, NewJob};
use batchforge::store::{self, DatabaseUrl, Store};
use serde_json::json;

fn job(n: usize) -> NewJob {
    NewJob {
        kind: "noop".into(),
        spec: json!({}),
        parallel: 8,
        metadata: json!({}),
        items: (0..n)
            .map(|i| NewItem::new(format!("k{i}"), json!({})))
            .collect(),
        schedule: JobSchedule::default(),
    }
}

fn start_marks_are_fenced(db: &TestDb) {
    let store = Store::open(&DatabaseUrl::parse(&db.url).unwrap()).unwrap();
    let (marked, foreign, items) = store
        .write_blocking(|c| {
            store::jobs::insert_job(c, "j", &job(4), 100.0)?;
            store::items::claim_items(c, "j", 3, "n", 101.0, 30.0, true)?;
            let j = |idx: u32, attempt: u32| ("j".to_string(), idx, attempt);
            // Item 1 with a stale attempt, item 3 never claimed: neither is marked.
            let marked =
                store::items::mark_started(c, &[j(0, 1), j(1, 2), j(2, 1), j(3, 1)], "n", 102.0)?;
            // Another node's start mark of this node's claim changes nothing.
            let foreign = store::items::mark_started(c, &[j(1, 1)], "other", 103.0)?;
            Ok((
                marked,
                foreign,
                store::items::list_items(c, "j", None, 10, 0)?.0,
            ))
        })
        .unwrap();
    assert_eq!((marked, foreign), (2, 0), "{}", db.url);
    let started: Vec<_> = items.iter().map(|i| (i.index, i.started_at)).collect();
    assert_eq!(
        started,
        [(0, Some(102.0)), (1, None), (2, Some(102.0)), (3, None)],
        "{}",
        db.url
    );
    assert_eq!(items[0].status, ItemStatus::Running);
    assert_eq!(items[3].status, ItemStatus::Queued);
}

#[test]
fn start_marks_are_fenced_by_node_and_attempt_on_the_suites_backend() {
    let dir = tempfile::tempdir().unwrap();
    start_marks_are_fenced(&TestDb::create(dir.path(), "s.db"));
}

#[test]
fn start_marks_are_fenced_by_node_and_attempt_on_postgres() {
    if !postgres_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    start_marks_are_fenced(&TestDb::create_postgres(dir.path(), "s.db"));
}
