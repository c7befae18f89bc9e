//! `batch_validation`: runs a check command (default `pytest -q`) on each target.
//! Exit 0 passes, and so does 5 (pytest's "no tests collected").

use super::command_kind::{default_command_concurrency, CommandProcessor};
use std::path::Path;

/// The kind name.
pub const KIND: &str = "batch_validation";
/// The seed's default check command.
pub const DEFAULT_CHECK_COMMAND: &str = "pytest -q";

fn passes(code: i32) -> bool {
    code == 0 || code == 5
}

/// The validation processor, confined to `workspace`.
pub fn processor(workspace: &Path) -> std::io::Result<CommandProcessor> {
    Ok(CommandProcessor {
        kind: KIND,
        root: CommandProcessor::canonical_root(workspace)?,
        id_field: "target_id",
        command_option: "check_command",
        default_command: DEFAULT_CHECK_COMMAND,
        passes,
        summary_aliases: &[],
        concurrency: default_command_concurrency(),
        sandbox: Default::default(),
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn exit_codes_zero_and_five_pass() {
        assert!(super::passes(0));
        assert!(super::passes(5));
        assert!(!super::passes(1));
        assert!(!super::passes(2));
    }
}
