//! Concurrency groups shared by several nodes (PostgreSQL): the `group_slots` rows a node
//! holds while it runs a job of the group. SQLite's one engine counts its own slots.

use super::notice::notify;
use super::{Conn, StoreError};
use diesel::prelude::*;

/// Group setup: makes sure the group has slot rows `0..limit` (nodes configured with a
/// lower limit use only the lower slots).
pub fn ensure_group_slots(conn: &mut Conn, group: &str, limit: u32) -> Result<(), StoreError> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query(
            "INSERT INTO group_slots (group_name, slot) \
             SELECT $1, s FROM generate_series(0, $2 - 1) AS s ON CONFLICT DO NOTHING",
        )
        .bind::<diesel::sql_types::Text, _>(group)
        .bind::<diesel::sql_types::Integer, _>(limit as i32)
        .execute(c)?;
    }
    Ok(())
}

#[derive(diesel::QueryableByName)]
struct SlotRow {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    slot: i32,
}

/// Group slots: takes up to `n` free slots below `limit` of a group for `node_id`
/// (skipping slots another node is taking), returning them. Always empty on SQLite,
/// where a group's limit is the one engine's own.
pub fn acquire_group_slots(
    conn: &mut Conn,
    group: &str,
    limit: u32,
    node_id: &str,
    n: u32,
) -> Result<Vec<i32>, StoreError> {
    use diesel::sql_types::{Integer, Text};
    let Conn::Pg(c) = conn else {
        return Ok(Vec::new());
    };
    Ok(diesel::sql_query(
        "WITH free AS (SELECT slot FROM group_slots \
                       WHERE group_name = $1 AND slot < $2 AND node_id IS NULL \
                       ORDER BY slot LIMIT $3 FOR UPDATE SKIP LOCKED) \
         UPDATE group_slots SET node_id = $4 FROM free \
         WHERE group_slots.group_name = $1 AND group_slots.slot = free.slot \
         RETURNING group_slots.slot",
    )
    .bind::<Text, _>(group)
    .bind::<Integer, _>(limit as i32)
    .bind::<Integer, _>(n as i32)
    .bind::<Text, _>(node_id)
    .load::<SlotRow>(c)?
    .into_iter()
    .map(|r| r.slot)
    .collect())
}

/// Group slots: gives back slots this node holds and wakes the nodes waiting for one.
pub fn release_group_slots(
    conn: &mut Conn,
    group: &str,
    node_id: &str,
    slots: &[i32],
) -> Result<(), StoreError> {
    use diesel::sql_types::{Array, Integer, Text};
    if let Conn::Pg(c) = conn {
        diesel::sql_query(
            "UPDATE group_slots SET node_id = NULL \
             WHERE group_name = $1 AND node_id = $2 AND slot = ANY($3)",
        )
        .bind::<Text, _>(group)
        .bind::<Text, _>(node_id)
        .bind::<Array<Integer>, _>(slots)
        .execute(c)?;
        notify(conn, &format!("groups::{node_id}"))?;
    }
    Ok(())
}

/// Read: every group slot `node_id` holds, as `(group, slot)`.
pub fn owned_group_slots(conn: &mut Conn, node_id: &str) -> Result<Vec<(String, i32)>, StoreError> {
    #[derive(diesel::QueryableByName)]
    struct Owned {
        #[diesel(sql_type = diesel::sql_types::Text)]
        group_name: String,
        #[diesel(sql_type = diesel::sql_types::Integer)]
        slot: i32,
    }
    let Conn::Pg(c) = conn else {
        return Ok(Vec::new());
    };
    Ok(diesel::sql_query(
        "SELECT group_name, slot FROM group_slots WHERE node_id = $1 ORDER BY group_name, slot",
    )
    .bind::<diesel::sql_types::Text, _>(node_id)
    .load::<Owned>(c)?
    .into_iter()
    .map(|o| (o.group_name, o.slot))
    .collect())
}

/// Rescue of group slots: frees the slots of nodes no longer registered (dead and
/// removed, or gone without releasing them). Returns how many were freed.
pub fn free_orphan_slots(conn: &mut Conn) -> Result<usize, StoreError> {
    let Conn::Pg(c) = conn else {
        return Ok(0);
    };
    Ok(diesel::sql_query(
        "UPDATE group_slots SET node_id = NULL \
         WHERE node_id IS NOT NULL AND node_id NOT IN (SELECT id FROM nodes)",
    )
    .execute(c)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::conn;

    /// SQLite has no `group_slots` table: one engine counts its own slots, so every
    /// statement here must leave it alone.
    #[test]
    fn group_slots_are_the_engines_own_on_sqlite() {
        let mut c = conn();
        ensure_group_slots(&mut c, "g", 2).unwrap();
        assert!(acquire_group_slots(&mut c, "g", 2, "n", 1)
            .unwrap()
            .is_empty());
        release_group_slots(&mut c, "g", "n", &[0]).unwrap();
        assert!(owned_group_slots(&mut c, "n").unwrap().is_empty());
        assert_eq!(free_orphan_slots(&mut c).unwrap(), 0);
    }
}
