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
