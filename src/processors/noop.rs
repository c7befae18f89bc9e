//! `noop`: succeeds at once with a `null` result. It measures the engine itself (claims,
//! dispatch, commits) with no work in the way; `batchforge bench` and
//! `batchforge serve --noop-processor` register it. An item with `"sleep_ms": N` (up to a
//! minute) waits that long first (cancellable), which stands in for real work when
//! several nodes share a queue.

use crate::model::ItemOutcome;
use crate::processor::{Item, ItemContext, Processor};
use serde_json::Value;

/// The kind name.
pub const KIND: &str = "noop";

/// The longest `sleep_ms` honoured.
const MAX_SLEEP_MS: u64 = 60_000;

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

    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome {
        let sleep = item
            .payload
            .get("sleep_ms")
            .and_then(Value::as_u64)
            .map(|ms| ms.min(MAX_SLEEP_MS));
        if let Some(ms) = sleep {
            let started_at = crate::model::now();
            tokio::select! {
                _ = tokio::time::sleep(std::time::Duration::from_millis(ms)) => {}
                _ = ctx.cancel.cancelled() => {
                    return ItemOutcome::cancelled(Value::Null);
                }
            }
            return ItemOutcome::succeeded(
                serde_json::json!({"slept_ms": ms, "started_at": started_at}),
            );
        }
        ItemOutcome::succeeded(Value::Null)
    }
}
