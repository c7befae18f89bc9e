//! Built-in processors. Each kind lives in its own file; [`command`] is the subprocess
//! runner they share.

pub mod agent;
pub mod command;
mod guardian;
pub mod mcp;
pub mod noop;
pub mod test_suite;
pub mod validation;

pub use command_kind::CommandProcessor;

mod command_kind;
