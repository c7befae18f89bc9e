//! Whole PostgreSQL databases, created for one run and dropped after it (the benchmark's
//! cluster runs), through the server's `postgres` database.

use diesel::connection::SimpleConnection;
use diesel::Connection;

/// Why a server-level statement failed.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// No connection to the server's `postgres` database.
    #[error("{0}")]
    Connect(#[from] diesel::ConnectionError),
    /// The statement failed.
    #[error("{0}")]
    Statement(#[from] diesel::result::Error),
}

/// Database creation: drops the database `name` on the server at `server`
/// (`postgres://user@host:port`) if it exists, forcing its connections closed, then
/// creates it empty.
pub fn recreate_postgres_database(server: &str, name: &str) -> Result<(), ServerError> {
    // One statement per call: neither runs inside a transaction block.
    run_on_server(
        server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )?;
    run_on_server(server, &format!("CREATE DATABASE {name}"))
}

/// Database removal: drops the database `name` on the server at `server` if it exists,
/// forcing its connections closed.
pub fn drop_postgres_database(server: &str, name: &str) -> Result<(), ServerError> {
    run_on_server(
        server,
        &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
    )
}

/// Runs `sql` on a connection of its own to the server's `postgres` database.
fn run_on_server(server: &str, sql: &str) -> Result<(), ServerError> {
    super::init_postgres_client();
    let mut conn = diesel::pg::PgConnection::establish(&format!("{server}/postgres"))?;
    Ok(conn.batch_execute(sql)?)
}
