//! `noop`: succeeds at once with a `null` result. It measures the engine itself (claims,
//! dispatch, commits) with no work in the way; `batchforge bench` and
//! `batchforge serve --noop-processor` register it.

use crate::model::ItemOutcome;
use crate::processor::{Item, ItemContext, Processor};
use serde_json::Value;

/// The kind name.
pub const KIND: &str = "noop";

/// The no-op processor.
pub struct Noop;

#[async_trait::async_trait(?Send)]
impl Processor for Noop {
    fn kind(&self) -> &str {
        KIND
    }

    fn default_concurrency(&self) -> usize {
        1024
    }

    async fn process(&self, _item: Item, _ctx: ItemContext) -> ItemOutcome {
        ItemOutcome::succeeded(Value::Null)
    }
}
