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

/// A connection of its own that `LISTEN`s on [`NOTIFY_CHANNEL`] (PostgreSQL), for the thread
/// that wakes this node when another one commits.
pub struct Listener {
    conn: diesel::pg::PgConnection,
}

impl Listener {
    /// Connects to the PostgreSQL database at `url` and starts listening.
    pub fn connect(url: &str) -> Result<Listener, diesel::ConnectionError> {
        use diesel::connection::SimpleConnection;
        let mut conn = diesel::pg::PgConnection::establish(url)?;
        conn.batch_execute(&format!("LISTEN {NOTIFY_CHANNEL}"))
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(Listener { conn })
    }

    /// The payloads of the notifications received so far, without waiting for more (no
    /// query is sent); an error means the connection is lost.
    pub fn payloads(&mut self) -> impl Iterator<Item = Result<String, diesel::result::Error>> + '_ {
        self.conn.notifications_iter().map(|n| n.map(|n| n.payload))
    }

    /// Sends a trivial query: a dead socket is only noticed by using it.
    pub fn ping(&mut self) -> Result<(), diesel::result::Error> {
        use diesel::connection::SimpleConnection;
        self.conn.batch_execute("SELECT 1")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::fixtures::conn;

    /// SQLite has no `pg_notify`: one engine owns the queue and needs no wake-up.
    #[test]
    fn a_notice_on_sqlite_sends_nothing() {
        notify(&mut conn(), "job:j:n").unwrap();
    }
}
