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
//! Isolation: [`policy`] resolves the server's mode (`auto`, `bwrap`, `none`) once at
//! start and derives each item's [`policy::ItemSandbox`] from its job's options;
//! [`spawn::run_sandboxed`] runs a command under it, through [`bwrap`]'s command line and
//! environment allowlist, within [`limits`]. External MCP servers are not sandboxed.

pub mod bwrap;
pub mod confine;
pub(crate) mod guardian;
pub mod limits;
pub mod policy;
pub mod spawn;

pub use policy::{ItemSandbox, Limits, Sandbox, SandboxConfig, SandboxMode};
