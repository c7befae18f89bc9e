//! `NOTIFY`/`LISTEN`: how one node's commit wakes the others on a shared PostgreSQL queue.

use super::{Conn, StoreError};
use diesel::prelude::*;

/// The channel nodes `LISTEN` on.
pub const NOTIFY_CHANNEL: &str = "batchforge";

/// Wake-up: `NOTIFY`s every node listening on the database with `payload` when the
/// transaction commits (PostgreSQL); nothing on SQLite, where one engine owns the queue.
pub fn notify(conn: &mut Conn, payload: &str) -> Result<(), StoreError> {
    if let Conn::Pg(c) = conn {
        diesel::sql_query("SELECT pg_notify($1, $2)")
            .bind::<diesel::sql_types::Text, _>(NOTIFY_CHANNEL)
            .bind::<diesel::sql_types::Text, _>(payload)
            .execute(c)?;
    }
    Ok(())
}
