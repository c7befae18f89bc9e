//! The `nodes` table: engine processes sharing one database, their heartbeats (which renew
//! their items' leases), and the rescue of nodes that stopped beating.

use super::recovery::{recover_items, Recovery};
use super::schema::{job_items, nodes};
use super::{is_pg, Conn, StoreError};
use crate::model::ItemStatus;
use diesel::prelude::*;

/// Node registration: records this engine process in `nodes` (insert or refresh).
pub fn register_node(
    conn: &mut Conn,
    id: &str,
    host: &str,
    pid: u32,
    now: f64,
) -> Result<(), StoreError> {
    // Heartbeats are compared by the database's clock (nodes' clocks may differ).
    let now = if is_pg(conn) { db_now(conn)? } else { now };
    let row = (
        nodes::id.eq(id),
        nodes::host.eq(host),
        nodes::pid.eq(pid as i32),
        nodes::started_at.eq(now),
        nodes::heartbeat_at.eq(now),
    );
    crate::on_backend!(conn, c => diesel::insert_into(nodes::table)
        .values(row)
        .on_conflict(nodes::id)
        .do_update()
        .set(nodes::heartbeat_at.eq(now))
        .execute(c))?;
    Ok(())
}

/// A row of `nodes`: an engine process sharing the database.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct NodeRecord {
    /// The node's id (`node-{12 hex}`, new at every start).
    pub id: String,
    /// The host name it runs on.
    pub host: String,
    /// Its process id on that host.
    pub pid: i32,
    /// When it started (Unix seconds).
    pub started_at: f64,
    /// Its last heartbeat (Unix seconds).
    pub heartbeat_at: f64,
}

/// Read: every registered node.
pub fn list_nodes(conn: &mut Conn) -> Result<Vec<NodeRecord>, StoreError> {
    Ok(nodes::table
        .select((
            nodes::id,
            nodes::host,
            nodes::pid,
            nodes::started_at,
            nodes::heartbeat_at,
        ))
        .order(nodes::started_at)
        .load(conn)?)
}

/// Heartbeat: refreshes this node's `heartbeat_at` (by the database's clock) and renews
/// the leases of the items it runs for `lease` seconds. Returns `false` when the node is no longer registered
/// (another node declared it dead and rescued its items); the caller registers again.
pub fn heartbeat(conn: &mut Conn, node_id: &str, lease: f64) -> Result<bool, StoreError> {
    let now = db_now(conn)?;
    let alive = diesel::update(nodes::table.filter(nodes::id.eq(node_id)))
        .set(nodes::heartbeat_at.eq(now))
        .execute(conn)?;
    if alive == 0 {
        return Ok(false);
    }
    if let Conn::Pg(c) = conn {
        // Rows being recorded right now are skipped rather than waited for (and never
        // locked crosswise with a write cycle); their lease ends with them anyway.
        diesel::sql_query(
            "WITH mine AS (SELECT job_id, idx FROM job_items \
                           WHERE node_id = $1 AND status = 'running' \
                           ORDER BY job_id, idx FOR UPDATE SKIP LOCKED) \
             UPDATE job_items SET lease_expires_at = $2 FROM mine \
             WHERE job_items.job_id = mine.job_id AND job_items.idx = mine.idx",
        )
        .bind::<diesel::sql_types::Text, _>(node_id)
        .bind::<diesel::sql_types::Double, _>(now + lease)
        .execute(c)?;
    }
    Ok(true)
}

/// Read: the database's clock (Unix seconds) on PostgreSQL, where heartbeats of nodes on
/// different machines are compared; this machine's clock on SQLite.
pub fn db_now(conn: &mut Conn) -> Result<f64, StoreError> {
    match conn {
        Conn::Pg(c) => Ok(
            diesel::select(diesel::dsl::sql::<diesel::sql_types::Double>(
                "extract(epoch from clock_timestamp())::float8",
            ))
            .get_result(c)?,
        ),
        Conn::Sqlite(_) => Ok(crate::model::now()),
    }
}

/// Rescue: removes the listed nodes — those whose heartbeat is older than
/// `stale_before`, when given (re-checked here, so a node that beat meanwhile is
/// spared) — and recovers their running items as a restart would (queued again with the
/// attempt counted, failed once out of attempts, cancelled with a cancelled job). The
/// items' leases are void from then on: their owners' outcomes are refused by the fence
/// of [`record_finished`](super::items::record_finished).
pub fn rescue_nodes(
    conn: &mut Conn,
    ids: &[String],
    stale_before: Option<f64>,
    now: f64,
) -> Result<(Vec<String>, Recovery), StoreError> {
    if ids.is_empty() {
        return Ok((Vec::new(), Recovery::default()));
    }
    let dead: Vec<String> = match stale_before {
        Some(before) => crate::on_backend!(conn, c => diesel::delete(
            nodes::table
                .filter(nodes::id.eq_any(ids))
                .filter(nodes::heartbeat_at.lt(before)),
        )
        .returning(nodes::id)
        .get_results(c))?,
        None => {
            crate::on_backend!(conn, c => diesel::delete(nodes::table.filter(nodes::id.eq_any(ids)))
            .returning(nodes::id)
            .get_results(c))?
        }
    };
    if dead.is_empty() {
        return Ok((dead, Recovery::default()));
    }
    let recovery = recover_items(conn, now, Some(&dead))?;
    Ok((dead, recovery))
}

/// Rescue of orphans: running items whose node is not registered at all (it left
/// without putting them back, or its row was removed) are recovered like a dead node's.
pub fn rescue_orphans(conn: &mut Conn, now: f64) -> Result<(Vec<String>, Recovery), StoreError> {
    use job_items::dsl as i;
    let owners: Vec<Option<String>> = i::job_items
        .filter(i::status.eq(ItemStatus::Running.as_str()))
        .filter(i::node_id.is_not_null())
        .filter(diesel::dsl::not(
            i::node_id.eq_any(nodes::table.select(nodes::id.nullable())),
        ))
        .select(i::node_id)
        .distinct()
        .load(conn)?;
    let owners: Vec<String> = owners.into_iter().flatten().collect();
    if owners.is_empty() {
        return Ok((owners, Recovery::default()));
    }
    let recovery = recover_items(conn, now, Some(&owners))?;
    Ok((owners, recovery))
}

/// Node exit: removes this node's row at a clean shutdown, freeing its group slots.
pub fn deregister_node(conn: &mut Conn, node_id: &str) -> Result<(), StoreError> {
    diesel::delete(nodes::table.filter(nodes::id.eq(node_id))).execute(conn)?;
    if let Conn::Pg(c) = conn {
        diesel::sql_query("UPDATE group_slots SET node_id = NULL WHERE node_id = $1")
            .bind::<diesel::sql_types::Text, _>(node_id)
            .execute(c)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::{conn, job};
    use crate::store::items::{claim_items, list_items};
    use crate::store::jobs::insert_job;

    #[test]
    fn a_registered_node_beats_until_it_leaves() {
        let mut c = conn();
        register_node(&mut c, "n", "host", 7, 1.0).unwrap();
        let nodes = list_nodes(&mut c).unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(
            (nodes[0].host.as_str(), nodes[0].pid, nodes[0].heartbeat_at),
            ("host", 7, 1.0)
        );
        assert!(heartbeat(&mut c, "n", 30.0).unwrap());
        assert!(list_nodes(&mut c).unwrap()[0].heartbeat_at > 1.0);
        deregister_node(&mut c, "n").unwrap();
        assert!(!heartbeat(&mut c, "n", 30.0).unwrap());
        assert!(list_nodes(&mut c).unwrap().is_empty());
    }

    #[test]
    fn a_rescue_removes_stale_nodes_only_and_requeues_their_items() {
        let mut c = conn();
        register_node(&mut c, "dead", "h", 1, 1.0).unwrap();
        register_node(&mut c, "live", "h", 2, 100.0).unwrap();
        insert_job(&mut c, "j", &job(2), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "dead", 10.0, 30.0, true).unwrap();
        claim_items(&mut c, "j", 1, "live", 10.0, 30.0, false).unwrap();
        crate::store::items::mark_started(&mut c, &[("j".to_string(), 1, 1)], "live", 11.0)
            .unwrap();
        let ids = ["dead".to_string(), "live".to_string()];
        let (gone, recovery) = rescue_nodes(&mut c, &ids, Some(50.0), 120.0).unwrap();
        assert_eq!(gone, ["dead"]);
        assert_eq!(recovery.requeued, 1);
        let items = list_items(&mut c, "j", None, 10, 0).unwrap().0;
        assert_eq!(items[0].status, ItemStatus::Queued);
        assert_eq!(items[1].node.as_deref(), Some("live"));
        assert_eq!(list_nodes(&mut c).unwrap()[0].id, "live");
    }

    #[test]
    fn an_orphan_is_a_running_item_of_an_unregistered_node() {
        let mut c = conn();
        insert_job(&mut c, "j", &job(1), 1.0).unwrap();
        claim_items(&mut c, "j", 1, "ghost", 10.0, 30.0, true).unwrap();
        let (owners, recovery) = rescue_orphans(&mut c, 20.0).unwrap();
        assert_eq!((owners, recovery.requeued), (vec!["ghost".to_string()], 1));
        assert!(rescue_orphans(&mut c, 21.0).unwrap().0.is_empty());
    }
}
