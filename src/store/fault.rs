//! Storage faults: telling a full disk, a read-only file or an unreachable server apart
//! from other database errors, so the API answers 503/507 naming the cause and `/health`
//! reports `degraded` until a write succeeds again.

use super::StoreError;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What kind of storage fault a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// No space left (ENOSPC, SQLITE_FULL): HTTP 507.
    Full,
    /// The database files cannot be written (read-only, immutable, I/O error): HTTP 503.
    Unwritable,
    /// The database server does not answer: HTTP 503.
    Unreachable,
}

/// Classifies a database error message; `None` for errors that are not storage faults
/// (constraint violations, bad SQL, …).
pub fn classify_message(message: &str) -> Option<FaultKind> {
    let m = message.to_ascii_lowercase();
    if m.contains("database or disk is full") || m.contains("no space left") {
        Some(FaultKind::Full)
    } else if m.contains("readonly database")
        || m.contains("read-only")
        || m.contains("disk i/o error")
        || m.contains("unable to open database file")
        || m.contains("operation not permitted")
    {
        Some(FaultKind::Unwritable)
    } else if m.contains("connection refused")
        || m.contains("server closed the connection")
        || m.contains("could not connect")
        || m.contains("connection pool error")
        || m.contains("timed out waiting for connection")
        || m.contains("terminating connection")
    {
        Some(FaultKind::Unreachable)
    } else {
        None
    }
}

/// Why SQLite's files at `db` (the database, its `-wal` and `-shm`) cannot be written now,
/// if they cannot: immutable or append-only (`chattr +i`/`+a`), or on a read-only mount.
///
/// Checked before each write and checkpoint because SQLite keeps the `-shm` file mapped in
/// memory: once it is immutable, the next store to a clean page of that mapping is a
/// SIGBUS that kills the process with no log line, where a refused write would have been
/// an error. Two `statx` and one `statvfs` calls, a few microseconds.
#[cfg(target_os = "linux")]
pub fn sqlite_files_unwritable(db: &std::path::Path) -> Option<String> {
    use std::ffi::CString;
    use std::os::unix::ffi::OsStrExt;
    let mut names = [
        db.as_os_str().to_owned(),
        db.as_os_str().to_owned(),
        db.as_os_str().to_owned(),
    ];
    names[1].push("-wal");
    names[2].push("-shm");
    for name in &names {
        let Ok(c) = CString::new(name.as_bytes()) else {
            continue;
        };
        // SAFETY: `c` is a NUL-terminated path, `stx` a zeroed struct statx written by the call.
        let mut stx: libc::statx = unsafe { std::mem::zeroed() };
        let rc = unsafe {
            libc::statx(
                libc::AT_FDCWD,
                c.as_ptr(),
                0,
                libc::STATX_BASIC_STATS,
                &mut stx,
            )
        };
        if rc != 0 {
            continue; // absent (no WAL yet): nothing mapped to fault on
        }
        let flags = stx.stx_attributes & stx.stx_attributes_mask;
        if flags & libc::STATX_ATTR_IMMUTABLE as u64 != 0 {
            return Some(format!(
                "operation not permitted: {} is immutable (chattr -i clears it)",
                std::path::Path::new(name).display()
            ));
        }
        if flags & libc::STATX_ATTR_APPEND as u64 != 0 {
            return Some(format!(
                "operation not permitted: {} is append-only (chattr -a clears it)",
                std::path::Path::new(name).display()
            ));
        }
    }
    let c = CString::new(db.as_os_str().as_bytes()).ok()?;
    // SAFETY: as above; `vfs` is written by the call.
    let mut vfs: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut vfs) } == 0 && vfs.f_flag & libc::ST_RDONLY != 0 {
        return Some(format!(
            "read-only file system: {} is on a read-only mount",
            db.display()
        ));
    }
    None
}

/// Elsewhere there is no cheap way to ask; SQLite's own errors report the fault.
#[cfg(not(target_os = "linux"))]
pub fn sqlite_files_unwritable(_db: &std::path::Path) -> Option<String> {
    None
}

/// A fault seen on the last write, with a detail naming the database.
#[derive(Debug, Clone)]
pub struct Fault {
    /// Its kind.
    pub kind: FaultKind,
    /// For a person: the cause and the database it hit.
    pub detail: String,
}

/// The fault state of one store, plus the backed-off log of it.
#[derive(Debug, Default)]
pub(super) struct FaultState {
    inner: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    current: Option<Fault>,
    last_logged: Option<Instant>,
    suppressed: u64,
}

/// At most one log line per this interval while a fault lasts (a full disk otherwise
/// logs an ERROR line for every failed write, dozens a second).
const LOG_INTERVAL: Duration = Duration::from_secs(10);

impl FaultState {
    /// Records the outcome of a write: an error that is a storage fault becomes a
    /// [`StoreError::Storage`] naming `location`; a success clears the fault.
    pub(super) fn observe<R>(
        &self,
        location: &str,
        result: Result<R, StoreError>,
    ) -> Result<R, StoreError> {
        let mut st = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match result {
            Ok(v) => {
                if st.current.take().is_some() {
                    log::warn!(
                        "storage recovered: writes to {location} succeed again ({} failures not logged)",
                        st.suppressed
                    );
                    st.suppressed = 0;
                    st.last_logged = None;
                }
                Ok(v)
            }
            Err(StoreError::Storage { kind, detail }) => Err(StoreError::Storage { kind, detail }),
            Err(e) => {
                let message = e.to_string();
                let Some(kind) = classify_message(&message) else {
                    return Err(e);
                };
                let cause = match kind {
                    FaultKind::Full => "database disk is full",
                    FaultKind::Unwritable => "database cannot be written",
                    FaultKind::Unreachable => "database server is unreachable",
                };
                let detail = format!("{cause} at {location} ({message})");
                let now = Instant::now();
                let due = st
                    .last_logged
                    .is_none_or(|t| now.duration_since(t) >= LOG_INTERVAL);
                if due {
                    if st.suppressed > 0 {
                        log::error!(
                            "{detail} ({} more failures since the last line)",
                            st.suppressed
                        );
                    } else {
                        log::error!("{detail}");
                    }
                    st.last_logged = Some(now);
                    st.suppressed = 0;
                } else {
                    st.suppressed += 1;
                }
                st.current = Some(Fault {
                    kind,
                    detail: detail.clone(),
                });
                Err(StoreError::Storage { kind, detail })
            }
        }
    }

    /// The fault the last write met, if it has not been cleared by a success since.
    pub(super) fn current(&self) -> Option<Fault> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_sqlite_and_pg_messages() {
        assert_eq!(
            classify_message("database error: database or disk is full"),
            Some(FaultKind::Full)
        );
        assert_eq!(
            classify_message("attempt to write a readonly database"),
            Some(FaultKind::Unwritable)
        );
        assert_eq!(
            classify_message("connection pool error: timed out waiting for connection"),
            Some(FaultKind::Unreachable)
        );
        assert_eq!(classify_message("UNIQUE constraint failed: jobs.id"), None);
    }

    #[test]
    fn a_fault_is_named_then_cleared_by_a_success() {
        let st = FaultState::default();
        let err: Result<(), _> = Err(StoreError::Task("database or disk is full".into()));
        match st.observe("/tmp/x/jobs.db", err) {
            Err(StoreError::Storage { kind, detail }) => {
                assert_eq!(kind, FaultKind::Full);
                assert!(detail.contains("/tmp/x/jobs.db"), "{detail}");
            }
            other => panic!("expected a storage fault, got {other:?}"),
        }
        assert!(st.current().is_some());
        st.observe("/tmp/x/jobs.db", Ok(())).unwrap();
        assert!(st.current().is_none());
    }
}
