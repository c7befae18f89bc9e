//! Several nodes on one PostgreSQL queue: node registration, heartbeats and lease renewal,
//! the rescue of dead nodes' items, and `LISTEN/NOTIFY` wake-ups.
//!
//! Every engine process is a node with a fresh id, registered in `nodes`. On PostgreSQL a
//! node
//! - heartbeats every `heartbeat_interval`, which also renews the lease of every item it
//!   runs (a long item on a live node is never rescued for being long);
//! - rescues, at start and on every heartbeat, the nodes whose heartbeat is older than
//!   `node_timeout` (or, on its own host, whose process is gone): their running items go
//!   back to the queue with the attempt counted, and the outcomes their old owners may
//!   still report are refused by the fence of `record_finished`;
//! - listens on the `batchforge` channel: another node's submission, cancellation, pause,
//!   retry or finished job wakes it at once ([`ClusterSync`]); a slow poll in the
//!   Supervisor catches what a lost connection missed.
//!
//! SQLite has one engine per database: none of this runs there, and a restart recovers
//! every item left running (`recover_abandoned_items`).

use crate::model::now;
use crate::queue::messages::ClusterSync;
use crate::queue::supervisor::Supervisor;
use crate::store::notice::Listener;
use crate::store::{self, nodes::NodeRecord, recovery::Recovery};
use crate::store::{Store, StoreError};
use actix::Addr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Heartbeat and failure detection settings (PostgreSQL only).
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    /// How often a node heartbeats, renews its leases and looks for dead nodes.
    pub heartbeat_interval: Duration,
    /// A node whose last heartbeat is older than this is dead: its items are rescued.
    pub node_timeout: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            heartbeat_interval: Duration::from_secs(2),
            node_timeout: Duration::from_secs(10),
        }
    }
}

impl ClusterConfig {
    /// Checks that a node cannot be declared dead between two of its own heartbeats.
    pub fn validate(&self) -> Result<(), String> {
        if self.heartbeat_interval.is_zero() {
            return Err("heartbeat interval must be above zero".into());
        }
        if self.node_timeout < self.heartbeat_interval * 2 {
            return Err(format!(
                "node timeout ({:?}) must be at least twice the heartbeat interval ({:?})",
                self.node_timeout, self.heartbeat_interval
            ));
        }
        Ok(())
    }
}

/// This machine's host name, as nodes record it.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// Where this process's pids mean something: the host name plus the pid namespace
/// (containers sharing a host name have different ones). Two nodes with the same value
/// can check each other's process.
pub fn host_identity() -> String {
    match std::fs::read_link("/proc/self/ns/pid") {
        Ok(ns) => format!("{} {}", hostname(), ns.display()),
        Err(_) => hostname(),
    }
}

/// Whether a process of this host is gone (`kill(pid, 0)` says there is no such process).
fn process_gone(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists; nothing is sent.
    let r = unsafe { libc::kill(pid, 0) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
}

/// Which other nodes are dead: `(stale by heartbeat, gone from this host)`.
fn dead_nodes(
    nodes: &[NodeRecord],
    me: &str,
    host: &str,
    stale_before: f64,
) -> (Vec<String>, Vec<String>) {
    let mut stale = Vec::new();
    let mut gone = Vec::new();
    for n in nodes.iter().filter(|n| n.id != me) {
        if n.host == host && n.pid != std::process::id() as i32 && process_gone(n.pid) {
            gone.push(n.id.clone());
        } else if n.heartbeat_at < stale_before {
            stale.push(n.id.clone());
        }
    }
    (stale, gone)
}

/// One rescue pass inside a write: removes the dead nodes and recovers their items,
/// notifying every node of the jobs that got items back. Returns those jobs. Nodes
/// silent past `node_timeout` (by the database's clock) count as dead only with
/// `by_heartbeat`: a node that just started, or just got the database back after an
/// outage, has no grounds to call the others silent.
pub fn rescue(
    conn: &mut crate::store::Conn,
    me: &str,
    node_timeout: Duration,
    by_heartbeat: bool,
) -> Result<(Vec<String>, Recovery), StoreError> {
    let t = store::nodes::db_now(conn)?;
    let nodes = store::nodes::list_nodes(conn)?;
    let (stale, gone) = dead_nodes(&nodes, me, &host_identity(), t - node_timeout.as_secs_f64());
    let stale = if by_heartbeat { stale } else { Vec::new() };
    let mut total = Recovery::default();
    let mut dead = Vec::new();
    for pass in [
        Some((gone, None)),
        Some((stale, Some(t - node_timeout.as_secs_f64()))),
        None,
    ] {
        let (removed, r) = match pass {
            Some((ids, stale_before)) => store::nodes::rescue_nodes(conn, &ids, stale_before, t)?,
            None => store::nodes::rescue_orphans(conn, t)?,
        };
        dead.extend(removed);
        total.requeued += r.requeued;
        total.failed += r.failed;
        total.cancelled += r.cancelled;
        total.finished_jobs.extend(r.finished_jobs);
        total.jobs.extend(r.jobs);
    }
    if store::groups::free_orphan_slots(conn)? > 0 {
        // Nodes waiting for a slot of a concurrency group try again.
        store::notice::notify(conn, &format!("groups::{me}"))?;
    }
    if dead.is_empty() {
        return Ok((Vec::new(), total));
    }
    log::warn!(
        "nodes {} are dead: {} of their items requeued, {} failed after their last attempt, {} cancelled",
        dead.join(", "),
        total.requeued,
        total.failed,
        total.cancelled
    );
    // Every job whose items moved: nodes reopen them (requeued) or stop following them.
    let touched = total.jobs.clone();
    for id in &touched {
        store::notice::notify(conn, &format!("job:{id}:{me}"))?;
    }
    Ok((touched, total))
}

/// Runs the heartbeat until `stop`: every `heartbeat_interval` the node's heartbeat and
/// leases are renewed (re-registering if another node declared it dead), and dead nodes
/// are rescued; the Supervisor is told which jobs got items back. Silent nodes are
/// judged only once this node's own heartbeats have succeeded for a whole
/// `node_timeout`: after a database outage every node looks silent for a while.
pub fn spawn_heartbeat(
    store: Store,
    node_id: std::sync::Arc<str>,
    config: ClusterConfig,
    supervisor: Addr<Supervisor>,
    stop: CancellationToken,
) {
    actix::spawn(async move {
        let lease = config.node_timeout.as_secs_f64();
        let mut healthy_since: Option<std::time::Instant> = None;
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(config.heartbeat_interval) => {}
            }
            let me = node_id.clone();
            let timeout = config.node_timeout;
            let beat = store
                .write(move |conn| {
                    if store::nodes::heartbeat(conn, &me, lease)? {
                        Ok(true)
                    } else {
                        log::error!(
                            "node {me} was declared dead by another node (no heartbeat for {timeout:?}); \
                             its running items were rescued and their outcomes will be refused; registering again"
                        );
                        store::nodes::register_node(
                            conn,
                            &me,
                            &host_identity(),
                            std::process::id(),
                            now(),
                        )?;
                        Ok(false)
                    }
                })
                .await;
            match beat {
                Ok(true) => {}
                Ok(false) => supervisor.do_send(crate::queue::messages::NodeLost),
                Err(e) => {
                    log::warn!("heartbeat failed: {e}");
                    healthy_since = None;
                    continue;
                }
            }
            let since = *healthy_since.get_or_insert_with(std::time::Instant::now);
            let by_heartbeat = since.elapsed() >= timeout;
            let me = node_id.clone();
            match store
                .write(move |conn| rescue(conn, &me, timeout, by_heartbeat))
                .await
            {
                Ok((touched, _)) if !touched.is_empty() => supervisor.do_send(ClusterSync {
                    jobs: touched,
                    ..ClusterSync::default()
                }),
                Ok(_) => {}
                Err(e) => log::warn!("rescue of dead nodes failed: {e}"),
            }
        }
    });
}

/// How often the listener looks for notifications on its socket (no query is sent).
const LISTEN_POLL: Duration = Duration::from_millis(10);

/// Listens on the `batchforge` channel on a connection of its own, in a thread, until
/// `stop`, forwarding other nodes' notifications to the Supervisor (coalesced per poll).
/// After a lost connection it reconnects and asks for a full sync, since notifications
/// sent meanwhile are lost.
pub fn spawn_listener(
    url: String,
    node_id: std::sync::Arc<str>,
    supervisor: Addr<Supervisor>,
    stop: CancellationToken,
) {
    let spawned = std::thread::Builder::new()
        .name("batchforge-listen".into())
        .spawn(move || {
            crate::store::init_postgres_client();
            let mut backoff = Duration::from_millis(100);
            let mut first = true;
            while !stop.is_cancelled() {
                let mut conn = match Listener::connect(&url) {
                    Ok(c) => c,
                    Err(e) => {
                        log::warn!("LISTEN connection failed: {e}; retrying in {backoff:?}");
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                if !first {
                    supervisor.do_send(ClusterSync {
                        all: true,
                        kinds: true,
                        groups: true,
                        jobs: Vec::new(),
                    });
                }
                first = false;
                let mut last_check = std::time::Instant::now();
                'poll: while !stop.is_cancelled() {
                    let mut sync = ClusterSync::default();
                    for n in conn.payloads() {
                        match n {
                            Ok(payload) => parse_payload(&payload, &node_id, &mut sync),
                            Err(e) => {
                                log::warn!("LISTEN connection lost: {e}; reconnecting");
                                break 'poll;
                            }
                        }
                    }
                    if sync.all || sync.kinds || sync.groups || !sync.jobs.is_empty() {
                        supervisor.do_send(sync);
                    }
                    // A dead socket is only noticed by using it.
                    if last_check.elapsed() > Duration::from_secs(5) {
                        last_check = std::time::Instant::now();
                        if let Err(e) = conn.ping() {
                            log::warn!("LISTEN connection lost: {e}; reconnecting");
                            break 'poll;
                        }
                    }
                    std::thread::sleep(LISTEN_POLL);
                }
            }
        });
    if let Err(e) = spawned {
        log::error!("cannot start the LISTEN thread: {e}; nodes wake up by polling only");
    }
}

/// Reads one notification: `{event}:{job id}:{node}`, where `event` is `new` or `job`
/// (a job to read) or `kinds` (kind pauses to read). A node's own notifications are
/// skipped: it already knows.
fn parse_payload(payload: &str, me: &str, into: &mut ClusterSync) {
    let Some((rest, from)) = payload.rsplit_once(':') else {
        return;
    };
    if from == me {
        return;
    }
    let Some((event, id)) = rest.split_once(':') else {
        return;
    };
    match event {
        "new" | "job" if !id.is_empty() => into.jobs.push(id.to_string()),
        "kinds" => into.kinds = true,
        "groups" => into.groups = true,
        _ => log::debug!("ignoring notification '{payload}'"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_a_job_or_the_kinds_and_skip_our_own() {
        let mut s = ClusterSync::default();
        parse_payload("new:batch-1:host-a", "host-b", &mut s);
        parse_payload("job:kind:with:colons-2:host-a", "host-b", &mut s);
        parse_payload("job:mine:host-b", "host-b", &mut s);
        parse_payload("kinds::host-a", "host-b", &mut s);
        parse_payload("garbage", "host-b", &mut s);
        assert_eq!(s.jobs, vec!["batch-1", "kind:with:colons-2"]);
        assert!(s.kinds);
        assert!(!s.all);
    }

    #[test]
    fn a_node_is_dead_by_stale_heartbeat_or_by_its_process_gone_from_this_host() {
        let node = |id: &str, host: &str, pid: i32, beat: f64| NodeRecord {
            id: id.into(),
            host: host.into(),
            pid,
            started_at: 0.0,
            heartbeat_at: beat,
        };
        let me = std::process::id() as i32;
        let nodes = vec![
            node("me", "h", me, 0.0),
            node("fresh-remote", "other", 1, 100.0),
            node("stale-remote", "other", 1, 10.0),
            // pid_max is at most 2^22: this process cannot exist.
            node("gone-local", "h", 0x7fff_fff0, 100.0),
            node("alive-local", "h", me, 100.0),
        ];
        let (stale, gone) = dead_nodes(&nodes, "me", "h", 50.0);
        assert_eq!(stale, vec!["stale-remote"]);
        assert_eq!(gone, vec!["gone-local"]);
    }

    #[test]
    fn the_node_timeout_must_span_two_heartbeats() {
        let ok = ClusterConfig::default();
        assert!(ok.validate().is_ok());
        let bad = ClusterConfig {
            heartbeat_interval: Duration::from_secs(5),
            node_timeout: Duration::from_secs(6),
        };
        assert!(bad.validate().unwrap_err().contains("twice"));
    }
}
