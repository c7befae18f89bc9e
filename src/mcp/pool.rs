//! Initialized MCP client sessions, pooled per server.
//!
//! A `batch_mcp` item borrows a session for one tool call and gives it back, so a job
//! with `parallel = N` ends up with at most N sessions (N server processes for stdio),
//! started on demand and reused by every later operation; nothing is spawned per
//! operation. A session whose server died (or whose call timed out) is dropped instead
//! of given back; the next borrower starts a fresh one. Sessions idle for
//! [`IDLE_TIMEOUT`] are closed, and idle sessions whose server exited meanwhile are
//! dropped rather than lent out.

use super::{McpServerConfig, McpTransport};
use rmcp::model::{
    CallToolRequest, CallToolRequestParams, CallToolResult, CancelledNotificationParam,
    ClientCapabilities, ClientConfig, ClientRequest, Implementation, ServerResult,
};
use rmcp::service::{PeerRequestOptions, RunningService};
use rmcp::transport::streamable_http_client::StreamableHttpClientTransportConfig;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::{RoleClient, ServiceError, ServiceExt};
use serde_json::{Map, Value};
use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

/// Idle sessions older than this are closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long starting a session (spawn or connect, `initialize`, `tools/list`) may take.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);
/// After a server failed to start, borrowers get that failure at once for this long
/// instead of each trying again (a batch of 2,000 against a broken command would
/// otherwise spawn it 2,000 times).
const START_FAILURE_MEMORY: Duration = Duration::from_secs(2);
/// Stderr lines kept per session to explain a server that died while starting.
const STDERR_TAIL: usize = 8;
/// Longest stderr line logged as one; a longer one is logged in pieces of this size.
const STDERR_LINE_CAP: usize = 16 * 1024;

/// The sessions of one server.
pub struct ServerPool {
    config: McpServerConfig,
    idle: Mutex<Vec<(Session, Instant)>>,
    /// The last start failure and when it happened.
    start_failure: Mutex<Option<(Instant, String)>>,
    next_session: AtomicU64,
    reaper: std::sync::Once,
}

/// One initialized session with the tools its server listed.
pub struct Session {
    service: RunningService<RoleClient, ClientConfig>,
    /// Tool names the server listed when the session started.
    pub tools: Arc<Vec<String>>,
    /// Sequence number, for logs.
    pub id: u64,
}

/// Why a tool call produced no result.
#[derive(Debug)]
pub enum CallError {
    /// The item was cancelled; `notifications/cancelled` was sent.
    Cancelled,
    /// No answer in time; `notifications/cancelled` was sent.
    Timeout(Duration),
    /// The connection died (the server exited or crashed).
    Closed,
    /// The server answered with a protocol error.
    Protocol(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Cancelled => f.write_str("cancelled"),
            CallError::Timeout(t) => write!(
                f,
                "no answer within {:.1}s; the call was cancelled",
                t.as_secs_f64()
            ),
            CallError::Closed => f.write_str("the connection to the server closed during the call"),
            CallError::Protocol(m) => f.write_str(m),
        }
    }
}

/// A borrowed session, given back to its pool on drop unless it was broken.
pub struct Lease {
    pool: Arc<ServerPool>,
    session: Option<Session>,
}

impl Lease {
    /// The session.
    pub fn session(&self) -> &Session {
        self.session
            .as_ref()
            .expect("a lease holds its session until dropped")
    }

    /// Drops the session instead of giving it back, `why` saying what happened to it
    /// (for the log). Dropping a session closes it: a stdio server's stdin is closed and
    /// the process is terminated if it does not exit by itself.
    pub fn discard(mut self, why: &str) {
        if let Some(s) = self.session.take() {
            log::warn!(
                "MCP server '{}': session {} {why}; dropped, the next operation starts a new one",
                self.pool.config.name,
                s.id
            );
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            self.pool.give_back(s);
        }
    }
}

impl ServerPool {
    /// An empty pool for `config`.
    pub fn new(config: McpServerConfig) -> Arc<ServerPool> {
        Arc::new(ServerPool {
            config,
            idle: Mutex::new(Vec::new()),
            start_failure: Mutex::new(None),
            next_session: AtomicU64::new(1),
            reaper: std::sync::Once::new(),
        })
    }

    /// The server's configured name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// Idle sessions right now.
    pub fn idle_sessions(&self) -> usize {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Borrows an idle live session, or starts one. `None` when `cancel` fired first.
    pub async fn checkout(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Option<Result<Lease, String>> {
        self.start_reaper();
        loop {
            let candidate = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match candidate {
                Some((s, _)) if s.is_dead() => {
                    log::warn!(
                        "MCP server '{}': idle session {} had died; dropped",
                        self.config.name,
                        s.id
                    );
                }
                Some((s, _)) => {
                    return Some(Ok(Lease {
                        pool: self.clone(),
                        session: Some(s),
                    }))
                }
                None => break,
            }
        }
        self.checkout_new(cancel).await
    }

    /// Starts a new session for the caller alone, never lending an idle one: for a retry
    /// after a session died, when the idle ones may have died the same way unnoticed.
    /// `None` when `cancel` fired first.
    pub async fn checkout_new(
        self: &Arc<Self>,
        cancel: &CancellationToken,
    ) -> Option<Result<Lease, String>> {
        self.start_reaper();
        if let Some((at, message)) = &*self.start_failure.lock().unwrap_or_else(|p| p.into_inner())
        {
            if at.elapsed() < START_FAILURE_MEMORY {
                return Some(Err(message.clone()));
            }
        }
        let started = tokio::select! {
            _ = cancel.cancelled() => return None,
            started = tokio::time::timeout(START_TIMEOUT, self.start()) => started,
        };
        let started = started.unwrap_or_else(|_| {
            Err(format!(
                "MCP server '{}' ({}) did not finish starting within {}s",
                self.config.name,
                self.config.transport.describe(),
                START_TIMEOUT.as_secs()
            ))
        });
        Some(match started {
            Ok(session) => {
                *self.start_failure.lock().unwrap_or_else(|p| p.into_inner()) = None;
                Ok(Lease {
                    pool: self.clone(),
                    session: Some(session),
                })
            }
            Err(message) => {
                log::error!("{message}");
                *self.start_failure.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((Instant::now(), message.clone()));
                Err(message)
            }
        })
    }

    fn give_back(&self, session: Session) {
        if session.is_dead() {
            log::warn!(
                "MCP server '{}': session {} had died; dropped",
                self.config.name,
                session.id
            );
            return;
        }
        self.idle
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((session, Instant::now()));
    }

    /// Closes sessions idle past [`IDLE_TIMEOUT`], every few seconds, while the pool lives.
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let pool: Weak<ServerPool> = Arc::downgrade(self);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(IDLE_TIMEOUT / 4).await;
                    let Some(pool) = pool.upgrade() else { return };
                    let expired: Vec<Session> = {
                        let mut idle = pool.idle.lock().unwrap_or_else(|p| p.into_inner());
                        let (old, fresh): (Vec<_>, Vec<_>) = idle
                            .drain(..)
                            .partition(|(s, since)| since.elapsed() >= IDLE_TIMEOUT || s.is_dead());
                        *idle = fresh;
                        old.into_iter().map(|(s, _)| s).collect()
                    };
                    if !expired.is_empty() {
                        log::debug!(
                            "MCP server '{}': closing {} idle sessions",
                            pool.config.name,
                            expired.len()
                        );
                    }
                    for mut s in expired {
                        // Closing waits for a stdio server to exit; do not hold up the loop.
                        tokio::spawn(async move {
                            let _ = s.service.close_with_timeout(Duration::from_secs(5)).await;
                        });
                    }
                }
            });
        });
    }

    async fn start(&self) -> Result<Session, String> {
        let id = self.next_session.fetch_add(1, Ordering::Relaxed);
        let name = &self.config.name;
        let what = self.config.transport.describe();
        let client = ClientConfig::new(
            ClientCapabilities::default(),
            Implementation::new("batchforge", env!("CARGO_PKG_VERSION")),
        );
        let service = match &self.config.transport {
            McpTransport::Stdio {
                command,
                args,
                env,
                cwd,
            } => {
                // Not through `crate::sandbox`: an external MCP server is the user's own
                // long-lived process spoken to over rmcp's child transport, not a job's
                // command (issue 13 may offer sandboxing it per server later).
                let mut cmd = tokio::process::Command::new(command);
                cmd.args(args).envs(env).kill_on_drop(true);
                if let Some(cwd) = cwd {
                    cmd.current_dir(cwd);
                }
                let (transport, stderr) = TokioChildProcess::builder(cmd)
                    .stderr(Stdio::piped())
                    .spawn()
                    .map_err(|e| format!("cannot start MCP server '{name}' ({what}): {e}"))?;
                let pid = transport.id().unwrap_or(0);
                let tail = Arc::new(Mutex::new(VecDeque::new()));
                let reader = stderr.map(|stderr| {
                    tokio::spawn(forward_stderr(
                        format!("{name}#{id} pid {pid}"),
                        stderr,
                        tail.clone(),
                    ))
                });
                match client.serve(transport).await {
                    Ok(service) => {
                        log::info!("MCP server '{name}': session {id} started (pid {pid})");
                        service
                    }
                    Err(e) => {
                        // Let the reader catch the last words of a server that died.
                        if let Some(reader) = reader {
                            let _ = tokio::time::timeout(Duration::from_millis(500), reader).await;
                        }
                        let tail: Vec<String> = tail
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .iter()
                            .cloned()
                            .collect();
                        let said = if tail.is_empty() {
                            String::new()
                        } else {
                            format!("; its stderr ended with: {}", tail.join(" | "))
                        };
                        return Err(format!(
                            "cannot start MCP server '{name}' ({what}): initialization failed: {e}{said}"
                        ));
                    }
                }
            }
            McpTransport::Http { url, headers } => {
                // Checked when configured and when a job was submitted.
                let headers =
                    super::header_map(headers).map_err(|e| format!("MCP server '{name}': {e}"))?;
                let config = StreamableHttpClientTransportConfig::with_uri(url.as_str())
                    .custom_headers(headers);
                let transport = StreamableHttpClientTransport::from_config(config);
                let url = crate::secrets::mask_url(url);
                let service = client
                    .serve(transport)
                    .await
                    .map_err(|e| format!("cannot connect to MCP server '{name}' at {url}: {e}"))?;
                log::info!("MCP server '{name}': session {id} connected to {url}");
                service
            }
        };
        let tools =
            service.peer().list_all_tools().await.map_err(|e| {
                format!("MCP server '{name}' ({what}) could not list its tools: {e}")
            })?;
        Ok(Session {
            service,
            tools: Arc::new(tools.into_iter().map(|t| t.name.into_owned()).collect()),
            id,
        })
    }
}

impl Session {
    /// Whether the session can no longer carry a call: closed by us, or its connection
    /// ended (the server exited or crashed, even while the session sat idle).
    /// `is_closed` alone misses the latter: rmcp ends its service loop on EOF without
    /// cancelling the service's token, but the loop's end closes the peer's channel.
    pub fn is_dead(&self) -> bool {
        self.service.is_closed() || self.service.peer().is_transport_closed()
    }

    /// Calls `tool`; on cancellation or timeout the server is sent
    /// `notifications/cancelled` for the request and the call returns at once.
    pub async fn call(
        &self,
        tool: &str,
        arguments: Map<String, Value>,
        timeout: Duration,
        cancel: &CancellationToken,
    ) -> Result<CallToolResult, CallError> {
        // A cancelled item sends nothing (the select below would notice only afterwards).
        if cancel.is_cancelled() {
            return Err(CallError::Cancelled);
        }
        let peer = self.service.peer();
        let mut params = CallToolRequestParams::new(tool.to_string());
        params.arguments = Some(arguments);
        let request = ClientRequest::CallToolRequest(CallToolRequest::new(params));
        let handle = peer
            .send_cancellable_request(request, PeerRequestOptions::with_timeout(timeout))
            .await
            .map_err(classify)?;
        let id = handle.id.clone();
        tokio::select! {
            biased;
            _ = cancel.cancelled() => {
                let notice = CancelledNotificationParam::new(
                    Some(id),
                    Some("the batchforge job was cancelled".into()),
                );
                // Bounded: a wedged transport must not hold up the cancellation.
                let _ = tokio::time::timeout(Duration::from_millis(500), peer.notify_cancelled(notice)).await;
                Err(CallError::Cancelled)
            }
            answer = handle.await_response() => match answer {
                Ok(ServerResult::CallToolResult(result)) => Ok(result),
                Ok(other) => Err(CallError::Protocol(format!(
                    "the server answered tools/call with an unexpected result: {}",
                    serde_json::to_string(&other).unwrap_or_default()
                ))),
                Err(e) => Err(classify(e)),
            },
        }
    }
}

fn classify(e: ServiceError) -> CallError {
    match e {
        ServiceError::TransportClosed | ServiceError::TransportSend(_) => CallError::Closed,
        ServiceError::Timeout { timeout } => CallError::Timeout(timeout),
        ServiceError::Cancelled { .. } => CallError::Cancelled,
        ServiceError::McpError(e) => {
            CallError::Protocol(format!("the server refused the call: {}", e.message))
        }
        other => CallError::Protocol(other.to_string()),
    }
}

/// Sends a server's stderr to the log, line by line, keeping the last few lines, until
/// EOF: bytes that are not UTF-8 are replaced (never a reason to stop reading, which
/// would leave the server writing into a closed pipe) and a line longer than
/// [`STDERR_LINE_CAP`] is logged in pieces.
async fn forward_stderr<R: AsyncRead + Unpin>(
    label: String,
    stderr: R,
    tail: Arc<Mutex<VecDeque<String>>>,
) {
    let mut reader = tokio::io::BufReader::new(stderr);
    let mut buf = Vec::new();
    loop {
        buf.clear();
        match (&mut reader)
            .take(STDERR_LINE_CAP as u64)
            .read_until(b'\n', &mut buf)
            .await
        {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                log::warn!("[mcp {label}] cannot read its stderr any more: {e}");
                return;
            }
        }
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
        let line = String::from_utf8_lossy(&buf).into_owned();
        log::info!("[mcp {label}] {line}");
        let mut t = tail.lock().unwrap_or_else(|p| p.into_inner());
        if t.len() == STDERR_TAIL {
            t.pop_front();
        }
        t.push_back(line);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stderr_is_read_to_the_end_whatever_its_bytes() {
        let mut input = b"first\n\xff\xfe not utf-8\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', STDERR_LINE_CAP + 10));
        input.extend_from_slice(b"\nlast words");
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        forward_stderr("test".into(), input.as_slice(), tail.clone()).await;
        let tail: Vec<String> = tail.lock().unwrap().iter().cloned().collect();
        assert_eq!(tail.len(), 5, "{tail:?}");
        assert_eq!(tail[0], "first");
        assert_eq!(tail[1], "\u{fffd}\u{fffd} not utf-8");
        assert_eq!(tail[2].len(), STDERR_LINE_CAP);
        assert_eq!(tail[3], "x".repeat(10));
        assert_eq!(tail[4], "last words");
    }
}
