//! `batch_tests`: runs a test command (default `pytest -v`) on each module.
//! Only exit 0 passes. Its summary also counts passing items as `passed`, the original's name.

use super::command_kind::{default_command_concurrency, CommandProcessor};
use crate::model::ItemStatus;
use std::path::Path;

/// The kind name.
pub const KIND: &str = "batch_tests";
/// The seed's default test command.
pub const DEFAULT_TEST_COMMAND: &str = "pytest -v";

fn passes(code: i32) -> bool {
    code == 0
}

/// The test-suite processor, confined to `workspace`.
pub fn processor(workspace: &Path) -> std::io::Result<CommandProcessor> {
    Ok(CommandProcessor {
        kind: KIND,
        root: CommandProcessor::canonical_root(workspace)?,
        id_field: "module_id",
        command_option: "test_command",
        default_command: DEFAULT_TEST_COMMAND,
        passes,
        summary_aliases: &[("passed", ItemStatus::Succeeded)],
        concurrency: default_command_concurrency(),
        sandbox: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_exit_zero_passes() {
        assert!(super::passes(0));
        assert!(!super::passes(5));
        assert!(!super::passes(1));
    }
}
