//! The processor interface: how a kind of item is processed.
//!
//! An embedding application implements [`Processor`] for its own kind and registers it
//! with [`crate::engine::EngineBuilder::processor`]; the built-in kinds use the same trait.

use crate::model::ItemOutcome;
use serde_json::Value;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub use crate::model::{FieldError, ItemStatus};

/// Processes items of one kind.
///
/// `process` runs as a local future on the engine's main thread (or on a thread of the
/// kind's own, see [`Processor::own_thread`]), so the future need not be `Send`; the
/// processor itself is shared across threads. Blocking or CPU-heavy work belongs on
/// `tokio::task::spawn_blocking`, not inline: it would stall every other item.
#[async_trait::async_trait(?Send)]
pub trait Processor: Send + Sync + 'static {
    /// The kind this processor handles, e.g. `batch_validation`.
    fn kind(&self) -> &str;

    /// How many items of this kind may run at once across all jobs, unless configured.
    fn default_concurrency(&self) -> usize {
        16
    }

    /// Whether this kind's items run on a thread of their own. By default they run as
    /// futures on the engine's main thread, which is cheapest for items that mostly await
    /// (processes, HTTP, MCP); a processor that computes between awaits should say `true`
    /// (and still move long blocking work to `spawn_blocking`).
    fn own_thread(&self) -> bool {
        false
    }

    /// Keys this kind adds to its jobs' result summary besides batchforge's own, each with
    /// the item status it counts: `batch_tests` adds `("passed", Succeeded)`, the name the
    /// Python original's test processor used. None by default.
    fn summary_aliases(&self) -> &'static [crate::model::summary::SummaryAlias] {
        &[]
    }

    /// Checks a job's options at submission, before anything is stored. The error names
    /// the offending option.
    fn validate_options(&self, _options: &Value) -> Result<(), FieldError> {
        Ok(())
    }

    /// Processes one item. It must return soon after `ctx.cancel` fires, with an
    /// [`ItemOutcome::cancelled`] outcome if the work was cut short.
    async fn process(&self, item: Item, ctx: ItemContext) -> ItemOutcome;
}

/// One item handed to a processor.
#[derive(Debug, Clone)]
pub struct Item {
    /// The owning job's id.
    pub job_id: String,
    /// Position of the item in its job, from 0.
    pub index: u32,
    /// The user's id for the item.
    pub key: String,
    /// The submitted input.
    pub payload: Value,
    /// 1 on the first run; more when an earlier run was interrupted by a crash.
    pub attempt: u32,
}

/// What a processor gets besides the item: the job's options, cancellation, progress.
#[derive(Clone)]
pub struct ItemContext {
    /// The job's options (the submitted body without its items).
    pub options: Arc<Value>,
    /// Fires when the job is cancelled or the engine shuts down.
    pub cancel: CancellationToken,
    /// Reports live progress for this item's job.
    pub progress: ProgressReporter,
}

/// Where a reporter's notes go (the engine hands each job one that sends to the
/// Tracker). A callback, so that this interface does not depend on the actors.
type NoteSink = Arc<dyn Fn(&Arc<str>, String) + Send + Sync>;

/// Sends live progress notes for one job to the Tracker.
#[derive(Clone)]
pub struct ProgressReporter {
    job_id: Arc<str>,
    sink: Option<NoteSink>,
}

impl ProgressReporter {
    pub(crate) fn new(
        job_id: Arc<str>,
        sink: impl Fn(&Arc<str>, String) + Send + Sync + 'static,
    ) -> Self {
        ProgressReporter {
            job_id,
            sink: Some(Arc::new(sink)),
        }
    }

    /// A reporter that drops every note, for calling a processor outside the engine.
    pub fn detached(job_id: &str) -> Self {
        ProgressReporter {
            job_id: Arc::from(job_id),
            sink: None,
        }
    }

    /// Says what the job is doing now (shown as `current_item` in its progress).
    pub fn current(&self, note: impl Into<String>) {
        if let Some(sink) = &self.sink {
            sink(&self.job_id, note.into());
        }
    }
}
