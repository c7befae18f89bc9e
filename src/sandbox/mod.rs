//! The sandbox room: it owns every process the engine starts for a job and every decision
//! about which paths a job may name.
//!
//! - [`confine`]: the one path confinement (item targets, the MCP server's and the agent's
//!   file tools, the agent guardrail's look at command lines).
//! - [`spawn`]: running a command without a shell, in its own process group, bounded in
//!   time and output, killed with its group on timeout, cancellation or drop.
//! - `guardian`: the helper process that kills running groups if the engine dies.
//!
//! Validation and test items, the built-in MCP server's `run_command`, and the agent's
//! tool calls and check command all spawn through [`spawn`]. Two kinds of process start
//! elsewhere on purpose: the external MCP servers of the `batch_mcp` pool (rmcp's child
//! transport, see `mcp::pool`: they are the user's own long-lived servers, not job
//! commands) and the agent workspace's own `git` bookkeeping (`agent::workspace`).
//!
//! Issue 13's isolation (bubblewrap, resource limits, an environment allowlist) lands
//! here: [`spawn::run_command_with_env`] is the single door it has to wrap.

pub mod confine;
pub(crate) mod guardian;
pub mod spawn;
