//! Built-in processors. Each kind lives in its own file; the commands they run start
//! through [`crate::sandbox`].

pub mod agent;
pub mod llm_batch;
pub mod mcp;
pub mod noop;
pub mod test_suite;
pub mod validation;

pub use command_kind::CommandProcessor;

mod command_kind;
pub mod targets;
