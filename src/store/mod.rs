//! The store: the only module that touches Diesel.
//!
//! State transitions live in [`queries`] as plain functions over a connection, one per
//! transition. [`Store`] wraps the connection pool and runs those functions on tokio's
//! blocking pool, so no Diesel call and no `pool.get()` (which can block while the pool
//! is exhausted) ever runs on an async event-loop thread.
//!
//! SQLite allows one writer at a time. Rather than letting several pooled connections
//! race for the write lock (and sleep in SQLite's busy handler), every write goes through
//! one dedicated connection behind a mutex: writers queue in order and each write is one
//! `BEGIN IMMEDIATE` transaction. Reads use the pool and run beside the writer (WAL).

pub mod queries;
mod rows;
pub mod schema;

use diesel::connection::SimpleConnection;
use diesel::r2d2::{ConnectionManager, CustomizeConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The SQLite migrations, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");

/// Everything that can go wrong between the engine and its database.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] diesel::result::Error),
    /// No connection could be had from the pool.
    #[error("connection pool error: {0}")]
    Pool(#[from] diesel::r2d2::PoolError),
    /// The database could not be opened or migrated.
    #[error("cannot open database {url}: {reason}")]
    Open {
        /// The database URL as given.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// A stored JSON column did not parse.
    #[error("corrupt JSON in column {column}: {source}")]
    Json {
        /// Which column.
        column: &'static str,
        /// The parse error.
        source: serde_json::Error,
    },
    /// The blocking task running the query panicked or was cancelled.
    #[error("database task failed: {0}")]
    Task(String),
}

impl From<String> for StoreError {
    fn from(message: String) -> Self {
        StoreError::Task(message)
    }
}

/// A parsed database URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    /// A SQLite file.
    Sqlite(PathBuf),
}

impl DatabaseUrl {
    /// Parses `sqlite://relative/path.db`, `sqlite:///absolute/path.db`, `sqlite:path.db`
    /// or a bare file path.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("database URL is empty".into());
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Err(format!(
                "database URL '{url}': PostgreSQL is not supported by this build yet; use sqlite://PATH"
            ));
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.contains("://") {
            return Err(format!(
                "database URL '{url}': unsupported scheme (expected sqlite://PATH)"
            ));
        } else {
            url
        };
        if path.is_empty() || path == ":memory:" {
            return Err(format!(
                "database URL '{url}': a file path is required (an in-memory database would lose every job)"
            ));
        }
        Ok(DatabaseUrl::Sqlite(PathBuf::from(path)))
    }
}

/// Applies the per-connection settings every connection needs.
#[derive(Debug)]
struct SqlitePragmas;

const PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                       PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16000;";

impl CustomizeConnection<SqliteConnection, diesel::r2d2::Error> for SqlitePragmas {
    fn on_acquire(&self, conn: &mut SqliteConnection) -> Result<(), diesel::r2d2::Error> {
        conn.batch_execute(PRAGMAS)
            .map_err(diesel::r2d2::Error::QueryError)
    }
}

struct Inner {
    pool: Pool<ConnectionManager<SqliteConnection>>,
    /// The one connection that writes; see the module docs for why writes serialize here.
    writer: Mutex<SqliteConnection>,
    path: PathBuf,
    /// Latency of write transactions, for `GET /metrics`.
    write_latency: Mutex<crate::metrics::Histogram>,
}

/// Handle to the database: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (creating if needed) the database, applies WAL mode and runs the embedded
    /// migrations. Blocking: call it from a blocking context or before the event loop.
    pub fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        let DatabaseUrl::Sqlite(path) = url;
        let open_err = |reason: String| StoreError::Open {
            url: path.display().to_string(),
            reason,
        };
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .map_err(|e| open_err(format!("cannot create {}: {e}", parent.display())))?;
        }
        let path_str = path
            .to_str()
            .ok_or_else(|| open_err("path is not valid UTF-8".into()))?
            .to_string();
        let mut writer =
            SqliteConnection::establish(&path_str).map_err(|e| open_err(e.to_string()))?;
        // The busy timeout first: switching to WAL waits out a connection that is still
        // closing (the last one to close checkpoints and removes the WAL file).
        writer
            .batch_execute("PRAGMA busy_timeout = 10000; PRAGMA journal_mode = WAL;")
            .and_then(|_| writer.batch_execute(PRAGMAS))
            .map_err(|e| open_err(e.to_string()))?;
        writer
            .run_pending_migrations(SQLITE_MIGRATIONS)
            .map_err(|e| open_err(format!("migration failed: {e}")))?;
        let pool = Pool::builder()
            .max_size(8)
            .min_idle(Some(1))
            .connection_timeout(Duration::from_secs(30))
            .connection_customizer(Box::new(SqlitePragmas))
            .build(ConnectionManager::<SqliteConnection>::new(path_str.clone()))
            .map_err(|e| open_err(e.to_string()))?;
        // Checkpoints mostly move off the writer: a background thread copies the WAL back
        // into the database file while the writer keeps appending. The writer's own
        // auto-checkpoint stays as a backstop at a higher mark: by then most frames are
        // copied, so it is short, and as it runs between commits it can complete, which
        // lets SQLite restart the WAL (a background checkpoint racing a busy writer never
        // quite catches up). The size limit truncates the file after such a restart.
        writer
            .batch_execute(WRITER_PRAGMAS)
            .map_err(|e| open_err(e.to_string()))?;
        let inner = Arc::new(Inner {
            pool,
            writer: Mutex::new(writer),
            path: path.clone(),
            write_latency: Mutex::default(),
        });
        spawn_checkpointer(Arc::downgrade(&inner), path_str);
        Ok(Store { inner })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs a read on a pooled connection, off the event loop.
    pub fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + 'static
    where
        F: FnOnce(&mut SqliteConnection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || {
                let mut conn = inner.pool.get()?;
                f(&mut conn)
            })
            .await
            .map_err(|e| StoreError::Task(e.to_string()))?
        }
    }

    /// Runs a write as one immediate transaction on the writer connection, off the event
    /// loop. Rolled back if `f` returns an error.
    pub fn write<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + 'static
    where
        F: FnOnce(&mut SqliteConnection) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        async move {
            tokio::task::spawn_blocking(move || inner.write_blocking(f))
                .await
                .map_err(|e| StoreError::Task(e.to_string()))?
        }
    }

    /// Copies the whole WAL into the database file and truncates it (blocking; waits for
    /// readers). For tools and benchmarks that want the file size to mean something.
    pub fn checkpoint_blocking(&self) -> Result<(), StoreError> {
        let mut conn = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner());
        conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE);")?;
        Ok(())
    }

    /// The blocking form of [`Store::write`], for callers already off the event loop.
    pub fn write_blocking<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut SqliteConnection) -> Result<R, StoreError>,
    {
        self.inner.write_blocking(f)
    }

    /// The latency histogram of write transactions so far.
    pub fn write_latency(&self) -> crate::metrics::Histogram {
        self.inner
            .write_latency
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The writer's checkpoint backstop and WAL size limit; see `Store::open`.
const WRITER_PRAGMAS: &str =
    "PRAGMA wal_autocheckpoint = 8000; PRAGMA journal_size_limit = 67108864;";

/// How often the background checkpointer runs.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(200);

/// Runs passive WAL checkpoints on its own connection until the store is dropped. Passive
/// checkpoints never block the writer or readers; SQLite restarts the WAL from its
/// beginning after a complete one, which bounds its size.
fn spawn_checkpointer(store: std::sync::Weak<Inner>, url: String) {
    let spawned = std::thread::Builder::new()
        .name("batchforge-checkpoint".into())
        .spawn(move || {
            let mut conn = match SqliteConnection::establish(&url) {
                Ok(c) => c,
                Err(e) => {
                    log::error!("checkpointer cannot open {url}: {e}; the WAL will grow");
                    return;
                }
            };
            let _ = conn.batch_execute("PRAGMA busy_timeout = 10000;");
            while store.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                if let Err(e) = conn.batch_execute("PRAGMA wal_checkpoint(PASSIVE);") {
                    log::warn!("WAL checkpoint failed: {e}");
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the checkpointer thread: {e}; the WAL will grow");
    }
}

impl Inner {
    fn write_blocking<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut SqliteConnection) -> Result<R, StoreError>,
    {
        // A panic in an earlier write poisons the mutex; the connection was replaced then,
        // so the guard's contents are sound.
        let started = std::time::Instant::now();
        let mut conn = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            conn.immediate_transaction(f)
        }));
        match outcome {
            Ok(result) => {
                drop(conn);
                self.write_latency
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .observe(started.elapsed());
                result
            }
            Err(panic) => {
                // Diesel does not roll back when the closure panics: the connection would
                // stay inside the transaction and fail every later write. Replace it.
                match self.fresh_writer() {
                    Ok(fresh) => *conn = fresh,
                    Err(e) => log::error!("could not reopen the writer after a panic: {e}"),
                }
                drop(conn);
                std::panic::resume_unwind(panic)
            }
        }
    }

    fn fresh_writer(&self) -> Result<SqliteConnection, StoreError> {
        let url = self.path.to_string_lossy().into_owned();
        let mut conn = SqliteConnection::establish(&url).map_err(|e| StoreError::Open {
            url: url.clone(),
            reason: e.to_string(),
        })?;
        conn.batch_execute(PRAGMAS)?;
        conn.batch_execute(WRITER_PRAGMAS)?;
        Ok(conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_parse_to_sqlite_paths() {
        assert_eq!(
            DatabaseUrl::parse("sqlite://data/batch_jobs.db").unwrap(),
            DatabaseUrl::Sqlite("data/batch_jobs.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("sqlite:///tmp/x.db").unwrap(),
            DatabaseUrl::Sqlite("/tmp/x.db".into())
        );
        assert_eq!(
            DatabaseUrl::parse("jobs.db").unwrap(),
            DatabaseUrl::Sqlite("jobs.db".into())
        );
        assert!(DatabaseUrl::parse("sqlite::memory:").is_err());
        assert!(DatabaseUrl::parse("mysql://x")
            .unwrap_err()
            .contains("scheme"));
        assert!(DatabaseUrl::parse("postgres://localhost/test")
            .unwrap_err()
            .contains("PostgreSQL"));
    }
}
