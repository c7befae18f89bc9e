//! The summary keys a kind adds to its jobs' results besides batchforge's own
//! (`total, successful, failed, skipped, cancelled`): the Python original named some
//! counts differently per kind (its test processor says `passed`), and scripts written
//! for it read those names.
//!
//! A processor declares its aliases ([`crate::processor::Processor::summary_aliases`]);
//! the engine records them here by kind when it starts, and the store reads them when it
//! builds a job's result. The record is keyed by kind name and process-wide because a
//! result is built deep inside the store's transitions (finishing an item, cancelling,
//! recovering a dead node's items), which see a connection, not the engine's processors.
//! A kind no engine of this process registered gets batchforge's keys only.

use super::ItemStatus;
use std::collections::HashMap;
use std::sync::{OnceLock, RwLock};

/// One extra summary key: its name, and the item status whose count it carries.
pub type SummaryAlias = (&'static str, ItemStatus);

fn registry() -> &'static RwLock<HashMap<String, &'static [SummaryAlias]>> {
    static ALIASES: OnceLock<RwLock<HashMap<String, &'static [SummaryAlias]>>> = OnceLock::new();
    ALIASES.get_or_init(Default::default)
}

/// Records `kind`'s summary aliases (replacing what an earlier engine declared for it).
pub fn declare(kind: &str, aliases: &'static [SummaryAlias]) {
    let mut map = registry().write().unwrap_or_else(|e| e.into_inner());
    if aliases.is_empty() {
        map.remove(kind);
    } else {
        map.insert(kind.to_string(), aliases);
    }
}

/// The summary aliases declared for `kind` (none when no engine registered it).
pub fn aliases(kind: &str) -> &'static [SummaryAlias] {
    registry()
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(kind)
        .copied()
        .unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_declared_kind_reads_back_its_aliases_and_others_none() {
        declare("summary_test_kind", &[("passed", ItemStatus::Succeeded)]);
        assert_eq!(
            aliases("summary_test_kind"),
            &[("passed", ItemStatus::Succeeded)]
        );
        assert!(aliases("summary_test_other").is_empty());
        declare("summary_test_kind", &[]);
        assert!(aliases("summary_test_kind").is_empty());
    }
}
