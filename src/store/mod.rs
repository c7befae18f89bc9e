//! The store: the only module that touches Diesel.
//!
//! State transitions are plain functions over a [`Conn`], one per transition, in one file
//! per table or aggregate ([`jobs`], [`items`], [`schedules`], …). [`Store`] wraps the
//! connection pool and runs those functions on tokio's blocking pool, so no Diesel call and
//! no `pool.get()` (which can block while the pool is exhausted) ever runs on an async
//! event-loop thread.
//!
//! Two backends, one code path: [`Conn`] is a Diesel `MultiConnection` over SQLite and
//! PostgreSQL, chosen by the database URL. Statements both backends read alike run on it
//! directly; the few whose SQL differs (JSON, `SKIP LOCKED`) branch with [`on_backend!`].
//!
//! SQLite allows one writer at a time. Rather than letting several pooled connections
//! race for the write lock (and sleep in SQLite's busy handler), every SQLite write goes
//! through one dedicated connection behind a mutex: writers queue in order and each write
//! is one `BEGIN IMMEDIATE` transaction. Reads use the pool and run beside the writer
//! (WAL). PostgreSQL writes take a pooled connection each: several nodes write at once
//! and row locks, not a process-local mutex, keep them apart.

pub mod commit;
mod counters;
pub mod databases;
pub mod fault;
#[cfg(test)]
mod fixtures;
pub mod groups;
pub mod items;
pub mod job_control;
pub mod jobs;
pub mod llm_files;
pub mod nodes;
pub mod notice;
pub mod outbox;
pub mod recovery;
pub mod results;
pub mod retention;
mod rows;
pub mod schedules;
pub mod schema;
pub mod stats;

use diesel::connection::{AnsiTransactionManager, SimpleConnection, TransactionManager};
use diesel::pg::PgConnection;
use diesel::r2d2::{ManageConnection, Pool};
use diesel::sqlite::SqliteConnection;
use diesel::Connection;
use diesel_migrations::{embed_migrations, EmbeddedMigrations, MigrationHarness};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The SQLite migrations, compiled into the binary.
pub const SQLITE_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/sqlite");
/// The PostgreSQL migrations, compiled into the binary.
pub const POSTGRES_MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations/postgres");

/// A connection to either backend. Diesel statements that both backends accept run on it
/// as on any connection; [`on_backend!`] branches where the SQL differs.
#[derive(diesel::MultiConnection)]
pub enum Conn {
    /// A PostgreSQL connection (several nodes may share the database).
    Pg(PgConnection),
    /// A SQLite connection (one machine).
    Sqlite(SqliteConnection),
}

/// Whether `conn` is a PostgreSQL connection (raw SQL is written per backend).
fn is_pg(conn: &Conn) -> bool {
    matches!(conn, Conn::Pg(_))
}

/// Runs `$body` with `$c` bound to the concrete connection inside a [`Conn`], once per
/// backend: the body is type-checked against each, so backend-specific SQL and Diesel
/// features (`RETURNING`, `SKIP LOCKED`) are written where they are needed.
#[macro_export]
#[doc(hidden)]
macro_rules! on_backend {
    ($conn:expr, $c:ident => $body:expr) => {
        match $conn {
            $crate::store::Conn::Sqlite($c) => $body,
            $crate::store::Conn::Pg($c) => $body,
        }
    };
}

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
    /// The storage itself failed (disk full, files not writable, server unreachable);
    /// the detail names the database.
    #[error("{detail}")]
    Storage {
        /// Which fault.
        kind: fault::FaultKind,
        /// The cause and the database it hit.
        detail: String,
    },
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
    /// A PostgreSQL server: the URL as libpq reads it (`postgres://user@host:port/db`).
    Postgres(String),
}

impl DatabaseUrl {
    /// Parses `postgres://…` / `postgresql://…`, or `sqlite://relative/path.db`,
    /// `sqlite:///absolute/path.db`, `sqlite:path.db` or a bare file path.
    pub fn parse(url: &str) -> Result<DatabaseUrl, String> {
        let url = url.trim();
        if url.is_empty() {
            return Err("database URL is empty".into());
        }
        if let Some(rest) = url
            .strip_prefix("postgres://")
            .or_else(|| url.strip_prefix("postgresql://"))
        {
            if rest.is_empty() || rest.starts_with('/') && rest.len() == 1 {
                return Err(format!(
                    "database URL '{url}': a host or database is required (postgres://USER@HOST:PORT/DB)"
                ));
            }
            return Ok(DatabaseUrl::Postgres(url.to_string()));
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if url.contains("://") {
            return Err(format!(
                "database URL '{url}': unsupported scheme (expected sqlite://PATH or postgres://HOST/DB)"
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

    /// The URL for logs: a PostgreSQL password is masked.
    pub fn display(&self) -> String {
        match self {
            DatabaseUrl::Sqlite(path) => format!("sqlite://{}", path.display()),
            DatabaseUrl::Postgres(url) => mask_password(url),
        }
    }

    /// Opens one connection with the per-connection settings.
    fn establish(&self) -> Result<Conn, diesel::ConnectionError> {
        match self {
            DatabaseUrl::Sqlite(path) => {
                let mut c = SqliteConnection::establish(&path.to_string_lossy())?;
                c.batch_execute(PRAGMAS)
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(Conn::Sqlite(c))
            }
            DatabaseUrl::Postgres(url) => {
                init_postgres_client();
                let mut c = PgConnection::establish(url)?;
                // Timestamps are Unix seconds in DOUBLE columns; no session setting
                // matters but the one that keeps an idle transaction from holding locks
                // forever if a node hangs mid-write.
                c.batch_execute("SET idle_in_transaction_session_timeout = '60s'")
                    .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
                Ok(Conn::Pg(c))
            }
        }
    }
}

/// Prepares this process for PostgreSQL connections; call it before the first one (the
/// store does). libpq talks TLS through OpenSSL, which by default registers a cleanup that
/// runs at process exit; a thread still reading a connection then (the `LISTEN` thread,
/// an engine never shut down) could crash the exit. Initialized first with
/// `OPENSSL_INIT_NO_ATEXIT`, OpenSSL skips that cleanup.
pub fn init_postgres_client() {
    openssl_sys::init();
}

/// `postgres://user:secret@host/db` → `postgres://user:***@host/db`.
fn mask_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.split_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// The per-connection SQLite settings.
const PRAGMAS: &str = "PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
                       PRAGMA synchronous = NORMAL; PRAGMA cache_size = -16000;";

/// Hands out [`Conn`]s of one database to the r2d2 pool.
#[derive(Debug)]
struct Manager {
    url: DatabaseUrl,
}

impl ManageConnection for Manager {
    type Connection = Conn;
    type Error = diesel::r2d2::Error;

    fn connect(&self) -> Result<Conn, Self::Error> {
        self.url
            .establish()
            .map_err(diesel::r2d2::Error::ConnectionError)
    }

    fn is_valid(&self, conn: &mut Conn) -> Result<(), Self::Error> {
        conn.batch_execute("SELECT 1")
            .map_err(diesel::r2d2::Error::QueryError)
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        // A connection handed back inside a transaction (a panic mid-write) or with a
        // broken transaction manager is dropped rather than reused.
        use diesel::r2d2::R2D2Connection;
        on_backend!(conn, c => c.is_broken())
    }
}

/// Which database the store is on, and what writes need for it.
enum Backend {
    Sqlite {
        /// The one connection that writes; see the module docs.
        writer: Mutex<Conn>,
        path: PathBuf,
    },
    Postgres {
        url: String,
    },
}

struct Inner {
    pool: Pool<Manager>,
    backend: Backend,
    url: DatabaseUrl,
    /// Latency of write transactions, for `GET /metrics`.
    write_latency: Mutex<crate::metrics::Histogram>,
    /// The storage fault the last write met, for `/health` and the API's status codes.
    fault: fault::FaultState,
}

/// Handle to the database: cheap to clone, safe to share between threads.
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

/// An arbitrary constant: the advisory lock nodes take while they migrate, so several
/// nodes starting at once migrate one after the other.
const MIGRATION_LOCK: i64 = 0x6261_7463_6866;

impl Store {
    /// Opens (creating if needed) the database and runs the embedded migrations; on
    /// SQLite also applies WAL mode. Blocking: call it from a blocking context or before
    /// the event loop.
    pub fn open(url: &DatabaseUrl) -> Result<Store, StoreError> {
        match url {
            DatabaseUrl::Sqlite(path) => Self::open_sqlite(url, path),
            DatabaseUrl::Postgres(pg) => Self::open_postgres(url, pg),
        }
    }

    fn open_sqlite(url: &DatabaseUrl, path: &std::path::Path) -> Result<Store, StoreError> {
        let open_err = |reason: String| {
            // A read-only file is a setup fault: say which file and how to fix it.
            let reason = if fault::classify_message(&reason) == Some(fault::FaultKind::Unwritable) {
                format!(
                    "{reason}: {} (or its -wal/-shm files or directory) is not writable; \
                     make it writable (check permissions, `lsattr` for the immutable flag, \
                     read-only mounts) or point --database at a writable path",
                    path.display()
                )
            } else {
                reason
            };
            StoreError::Open {
                url: path.display().to_string(),
                reason,
            }
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
            .build(Manager { url: url.clone() })
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
            backend: Backend::Sqlite {
                writer: Mutex::new(Conn::Sqlite(writer)),
                path: path.to_path_buf(),
            },
            url: url.clone(),
            write_latency: Mutex::default(),
            fault: Default::default(),
        });
        spawn_checkpointer(Arc::downgrade(&inner), path_str);
        Ok(Store { inner })
    }

    fn open_postgres(url: &DatabaseUrl, pg: &str) -> Result<Store, StoreError> {
        let open_err = |reason: String| StoreError::Open {
            url: url.display(),
            reason,
        };
        init_postgres_client();
        let mut conn = PgConnection::establish(pg).map_err(|e| open_err(e.to_string()))?;
        // Nodes starting together migrate one at a time: the first applies the
        // migrations, the others find them applied.
        conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
            .map_err(|e| open_err(e.to_string()))?;
        let migrated = conn
            .run_pending_migrations(POSTGRES_MIGRATIONS)
            .map(drop)
            .map_err(|e| open_err(format!("migration failed: {e}")));
        let unlocked = conn
            .batch_execute(&format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
            .map_err(|e| open_err(e.to_string()));
        migrated?;
        unlocked?;
        drop(conn);
        let pool = Pool::builder()
            .max_size(10)
            .min_idle(Some(2))
            .connection_timeout(Duration::from_secs(30))
            .build(Manager { url: url.clone() })
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Store {
            inner: Arc::new(Inner {
                pool,
                backend: Backend::Postgres {
                    url: pg.to_string(),
                },
                url: url.clone(),
                write_latency: Mutex::default(),
                fault: Default::default(),
            }),
        })
    }

    /// The database URL, password masked, for logs.
    pub fn describe(&self) -> String {
        self.inner.url.display()
    }

    /// Whether the store is on PostgreSQL, where several nodes may share the queue.
    pub fn is_postgres(&self) -> bool {
        matches!(self.inner.backend, Backend::Postgres { .. })
    }

    /// The PostgreSQL URL, for connections of their own (the `LISTEN` connection).
    pub fn postgres_url(&self) -> Option<&str> {
        match &self.inner.backend {
            Backend::Postgres { url } => Some(url),
            Backend::Sqlite { .. } => None,
        }
    }

    /// Runs a read on a pooled connection, off the event loop.
    pub fn read<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + 'static
    where
        F: FnOnce(&mut Conn) -> Result<R, StoreError> + Send + 'static,
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

    /// Runs a write as one transaction (`BEGIN IMMEDIATE` on SQLite's writer connection),
    /// off the event loop. Rolled back if `f` returns an error.
    pub fn write<R, F>(&self, f: F) -> impl Future<Output = Result<R, StoreError>> + 'static
    where
        F: FnOnce(&mut Conn) -> Result<R, StoreError> + Send + 'static,
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
    /// readers). For tools and benchmarks that want the file size to mean something. A
    /// no-op on PostgreSQL.
    pub fn checkpoint_blocking(&self) -> Result<(), StoreError> {
        if let Backend::Sqlite { writer, .. } = &self.inner.backend {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            conn.batch_execute("PRAGMA wal_checkpoint(TRUNCATE);")?;
        }
        Ok(())
    }

    /// The blocking form of [`Store::write`], for callers already off the event loop.
    pub fn write_blocking<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Conn) -> Result<R, StoreError>,
    {
        self.inner.write_blocking(f)
    }

    /// The storage fault the last write met (disk full, unwritable files, server
    /// unreachable), until a write succeeds again.
    pub fn fault(&self) -> Option<fault::Fault> {
        self.inner.fault.current()
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
            // While checkpoints fail (a full disk, an immutable file), one line when they
            // start failing, one a minute after, one when they work again.
            let mut failing_since: Option<std::time::Instant> = None;
            let mut last_logged = std::time::Instant::now();
            while store.strong_count() > 0 {
                std::thread::sleep(CHECKPOINT_INTERVAL);
                // A checkpoint writes to the mapped `-shm` too: see `sqlite_files_unwritable`.
                let checked = match fault::sqlite_files_unwritable(std::path::Path::new(&url)) {
                    Some(reason) => Err(reason),
                    None => conn
                        .batch_execute("PRAGMA wal_checkpoint(PASSIVE);")
                        .map_err(|e| e.to_string()),
                };
                match checked {
                    Ok(()) => {
                        if let Some(since) = failing_since.take() {
                            log::info!(
                                "WAL checkpoints work again (failed for {:.0?})",
                                since.elapsed()
                            );
                        }
                    }
                    Err(e) => {
                        let first = failing_since.is_none();
                        failing_since.get_or_insert_with(std::time::Instant::now);
                        if first || last_logged.elapsed() >= Duration::from_secs(60) {
                            log::warn!("WAL checkpoint failed: {e}");
                            last_logged = std::time::Instant::now();
                        }
                        // A connection that met a read-only file stays read-only: reopen.
                        if let Ok(mut fresh) = SqliteConnection::establish(&url) {
                            let _ = fresh.batch_execute("PRAGMA busy_timeout = 10000;");
                            conn = fresh;
                        }
                    }
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
        F: FnOnce(&mut Conn) -> Result<R, StoreError>,
    {
        let started = std::time::Instant::now();
        let result = match &self.backend {
            Backend::Sqlite { writer, path } => Self::write_sqlite(writer, path, f),
            Backend::Postgres { .. } => {
                // Diesel's transaction rolls back on error; a panic leaves the connection
                // inside the transaction, which `has_broken` then drops from the pool.
                let mut conn = self.pool.get()?;
                conn.transaction(|c| f(c))
            }
        };
        if result.is_ok() {
            self.write_latency
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .observe(started.elapsed());
        }
        let location = match &self.backend {
            Backend::Sqlite { path, .. } => path.display().to_string(),
            Backend::Postgres { .. } => "the PostgreSQL server".to_string(),
        };
        self.fault.observe(&location, result)
    }

    fn write_sqlite<R, F>(
        writer: &Mutex<Conn>,
        path: &std::path::Path,
        f: F,
    ) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Conn) -> Result<R, StoreError>,
    {
        // A panic in an earlier write poisons the mutex; the connection was replaced then,
        // so the guard's contents are sound.
        let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(reason) = fault::sqlite_files_unwritable(path) {
            return Err(StoreError::Task(reason));
        }
        // `broken`: a COMMIT or ROLLBACK failed, so the connection may still be inside
        // the transaction.
        let mut broken = false;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            // Through Diesel's transaction manager, so statements that open a transaction
            // of their own (a multi-row INSERT on SQLite) nest as savepoints.
            sqlite_tx(&mut conn, |c| {
                AnsiTransactionManager::begin_transaction_sql(c, "BEGIN IMMEDIATE")
            })?;
            match f(&mut conn) {
                Ok(value) => sqlite_tx(&mut conn, AnsiTransactionManager::commit_transaction)
                    .map(|()| value)
                    .inspect_err(|_| {
                        broken = sqlite_tx(&mut conn, AnsiTransactionManager::rollback_transaction)
                            .is_err();
                    }),
                Err(e) => {
                    broken =
                        sqlite_tx(&mut conn, AnsiTransactionManager::rollback_transaction).is_err();
                    Err(e)
                }
            }
        }));
        match outcome {
            Ok(result) => {
                // A write refused as read-only (the file made immutable or read-only
                // while running) leaves SQLite's pager read-only for the connection's
                // life, even once the fault clears: reopen, so the next write after the
                // fault clears succeeds without a restart.
                let unwritable = result.as_ref().is_err_and(|e| {
                    fault::classify_message(&e.to_string()) == Some(fault::FaultKind::Unwritable)
                });
                if broken || unwritable {
                    // Start afresh rather than fail every later write.
                    match fresh_writer(path) {
                        Ok(fresh) => *conn = fresh,
                        Err(e) => log::error!("could not reopen the writer: {e}"),
                    }
                }
                result
            }
            Err(panic) => {
                // The closure panicked inside the transaction: replace the connection.
                match fresh_writer(path) {
                    Ok(fresh) => *conn = fresh,
                    Err(e) => log::error!("could not reopen the writer after a panic: {e}"),
                }
                drop(conn);
                std::panic::resume_unwind(panic)
            }
        }
    }
}

/// Runs a transaction-manager step on the SQLite connection inside `conn`.
fn sqlite_tx(
    conn: &mut Conn,
    step: impl FnOnce(&mut SqliteConnection) -> diesel::QueryResult<()>,
) -> Result<(), StoreError> {
    match conn {
        Conn::Sqlite(c) => Ok(step(c)?),
        Conn::Pg(_) => Err(StoreError::Task(
            "the SQLite writer holds a PostgreSQL connection".into(),
        )),
    }
}

fn fresh_writer(path: &std::path::Path) -> Result<Conn, StoreError> {
    let url = path.to_string_lossy().into_owned();
    let mut conn = SqliteConnection::establish(&url).map_err(|e| StoreError::Open {
        url: url.clone(),
        reason: e.to_string(),
    })?;
    conn.batch_execute(PRAGMAS)?;
    conn.batch_execute(WRITER_PRAGMAS)?;
    Ok(Conn::Sqlite(conn))
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
        assert_eq!(
            DatabaseUrl::parse("postgres://u:pw@localhost/test").unwrap(),
            DatabaseUrl::Postgres("postgres://u:pw@localhost/test".into())
        );
        assert_eq!(
            DatabaseUrl::parse("postgres://u:pw@localhost/test")
                .unwrap()
                .display(),
            "postgres://u:***@localhost/test"
        );
        assert!(DatabaseUrl::parse("postgres://").is_err());
    }
}
