//! Admission: the checks a job passes before anything is stored (a submission, or a
//! schedule's template), and following a stored job once it is open (`admit`). The option
//! checks live here together so that they change in one place.

use super::groups::Groups;
use super::rotation::ActiveJob;
use super::Supervisor;
use crate::actors::messages::{EngineError, JobContext, ProgressUpdate, ValidateJob};
use crate::model::{now, Dependencies, JobRecord, NewJob, RetryPolicy};
use crate::processor::{Processor, ProgressReporter};
use crate::store::queries;
use actix::prelude::*;
use std::collections::VecDeque;
use std::sync::Arc;

/// Whether a JSON value holds a NUL character in any string or key.
fn contains_nul(v: &serde_json::Value) -> bool {
    match v {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(contains_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || contains_nul(v)),
        _ => false,
    }
}

/// The processor's verdict on a job's options, as an engine error.
fn processor_check(processor: &dyn Processor, spec: &serde_json::Value) -> Result<(), EngineError> {
    processor
        .validate_options(spec)
        .map_err(|e| EngineError::Invalid {
            field: e.field,
            message: e.message,
        })
}

/// The checks of [`crate::actors::messages::SubmitJob`]: the kind has a `processor` here,
/// the job has items, its options pass the processor, hold no NUL, and name valid retry
/// options, a configured concurrency group, dependencies, an item timeout and a deadline.
pub(super) fn check_job(
    processor: Option<&dyn Processor>,
    job: &NewJob,
    groups: &Groups,
) -> Result<(), EngineError> {
    let Some(processor) = processor else {
        return Err(EngineError::NoProcessor(job.kind.clone()));
    };
    if job.items.is_empty() {
        return Err(EngineError::Invalid {
            field: "items".into(),
            message: "a job needs at least one item".into(),
        });
    }
    processor_check(processor, &job.spec)?;
    // PostgreSQL cannot hold a NUL character in text, nor read `\u0000` back as JSON:
    // refused on either backend, so a job means the same on both.
    if contains_nul(&job.spec) {
        return Err(EngineError::Invalid {
            field: "options".into(),
            message: "NUL characters (\\u0000) are not allowed in a job's options".into(),
        });
    }
    if let Some(i) = job.items.iter().position(|item| item.key.contains('\0')) {
        return Err(EngineError::Invalid {
            field: format!("items[{i}].id"),
            message: "NUL characters are not allowed in an item's id".into(),
        });
    }
    if let Err((field, message)) = RetryPolicy::from_options(&job.spec) {
        return Err(EngineError::Invalid {
            field: field.into(),
            message,
        });
    }
    match job.spec.get("concurrency_group") {
        None | Some(serde_json::Value::Null) => {}
        Some(serde_json::Value::String(g)) if groups.contains(g) => {}
        Some(v) => {
            let names = groups.names();
            return Err(EngineError::Invalid {
                field: "concurrency_group".into(),
                message: format!(
                    "{v} is not a configured concurrency group (configured: {})",
                    if names.is_empty() {
                        "none; see --concurrency-group".to_string()
                    } else {
                        names
                            .iter()
                            .map(|n| n.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            });
        }
    }
    if let Err((field, message)) = Dependencies::from_options(&job.spec)
        .map(drop)
        .and_then(|()| crate::model::check_item_timeout(&job.spec))
        .and_then(|()| crate::model::deadline(&job.spec).map(drop))
    {
        return Err(EngineError::Invalid { field, message });
    }
    Ok(())
}

/// The checks of [`ValidateJob`]: the kind has a `processor` here, the job has items,
/// its options pass the processor.
pub(super) fn check_template(
    processor: Option<&dyn Processor>,
    msg: ValidateJob,
) -> Result<(), EngineError> {
    let Some(processor) = processor else {
        return Err(EngineError::NoProcessor(msg.kind));
    };
    if msg.items == 0 {
        return Err(EngineError::Invalid {
            field: "items".into(),
            message: "a job needs at least one item".into(),
        });
    }
    processor_check(processor, &msg.spec)
}

impl Supervisor {
    /// Whether a submission may be queued: the engine is not stopping, and [`check_job`].
    pub(super) fn check_submission(&self, job: &NewJob) -> Result<(), EngineError> {
        if self.drain.stopping() {
            return Err(EngineError::ShuttingDown);
        }
        let processor = self.workers.get(&job.kind).map(|k| &*k.processor);
        check_job(processor, job, &self.groups)
    }

    /// Starts following an open job. `queued` is how many of its items are queued, when
    /// known (a job just inserted); it spares an empty claim at the end of every job.
    pub(super) fn admit(&mut self, job: &JobRecord, queued: Option<u64>) {
        let id: Arc<str> = Arc::from(job.id.as_str());
        let deps = Dependencies::from_options(&job.spec).unwrap_or_default();
        let deadline = crate::model::deadline(&job.spec).ok().flatten();
        let tracker = self.tracker.clone();
        let ctx = Arc::new(JobContext {
            id: id.clone(),
            options: Arc::new(job.spec.clone()),
            cancel: self.shutdown_token.child_token(),
            progress: ProgressReporter::new(id.clone(), move |job_id: &Arc<str>, note| {
                tracker.do_send(ProgressUpdate::CurrentItem {
                    job_id: job_id.clone(),
                    note,
                })
            }),
        });
        if let Some(slot) = self.rotation.kinds.get_mut(&job.kind) {
            slot.claimable.push_back(id.clone());
        }
        self.rotation.jobs.insert(
            id,
            ActiveJob {
                ctx,
                kind: job.kind.clone(),
                parallel: job.parallel.max(1),
                active: 0,
                claiming: 0,
                ready: VecDeque::new(),
                in_startable: false,
                exhausted: queued == Some(0),
                unclaimed: queued,
                cancelled: false,
                announced: false,
                counts: job.counts(),
                started_at: job.started_at,
                priority: job.priority,
                run_at: job.run_at,
                paused: job.paused_at.is_some(),
                waiting_since: now(),
                // Checked at submission; a stored job with bad options retries nothing.
                retry: RetryPolicy::from_options(&job.spec).unwrap_or_default(),
                retry_wakeups: Vec::new(),
                waiting_on: deps.jobs.clone(),
                run_on_failure: deps.run_on_failure,
                deadline,
                group: job
                    .spec
                    .get("concurrency_group")
                    .and_then(serde_json::Value::as_str)
                    .filter(|g| self.groups.contains(g))
                    .map(str::to_string),
            },
        );
        if let Some(d) = deadline {
            self.gates.deadline_set(d);
        }
        if !deps.jobs.is_empty() {
            self.gates.waiting_jobs += 1;
        }
        self.gates.deps_to_check.extend(deps.jobs);
    }

    /// Whether this node may run a job of the shared queue: it registers the kind, and it
    /// knows the job's concurrency group (running its items without the group's slots
    /// would break the group's limit for the whole cluster).
    pub(super) fn can_run_here(&self, job: &JobRecord) -> bool {
        if !self.rotation.kinds.contains_key(&job.kind) {
            return false;
        }
        match job
            .spec
            .get("concurrency_group")
            .and_then(serde_json::Value::as_str)
        {
            Some(g) if self.cluster && !self.groups.contains(g) => {
                log::warn!(
                    "job {}: concurrency group '{g}' is not configured on this node; left to the nodes that have it (--concurrency-group {g}=N)",
                    job.id
                );
                false
            }
            _ => true,
        }
    }

    /// Follows the jobs found open at start; those of a kind nobody registers fail
    /// (alone) or are left to the other nodes (cluster).
    pub(super) fn admit_stored(&mut self, ctx: &mut Context<Self>) {
        for job in std::mem::take(&mut self.pending_jobs) {
            if self.can_run_here(&job) {
                self.admit(&job, None);
                continue;
            }
            if self.rotation.kinds.contains_key(&job.kind) {
                // Its concurrency group is not configured here (cluster only).
                continue;
            }
            if self.cluster {
                // Another node of the cluster may serve this kind.
                log::info!(
                    "job {}: no processor for kind '{}' on this node; left to the others",
                    job.id,
                    job.kind
                );
                continue;
            }
            let error = format!("no processor registered for kind '{}'", job.kind);
            log::warn!("job {}: {error}; marking it failed", job.id);
            let id = job.id.clone();
            let ended: Arc<str> = Arc::from(job.id.as_str());
            self.store
                .write(move |conn| queries::fail_job(conn, &id, &error, now()))
                .into_actor(self)
                .map(move |res, act, _| match res {
                    // Event streams opened meanwhile saw the job queued: tell them it ended.
                    Ok(()) => {
                        act.gates.deps_to_check.push(ended.to_string());
                        act.tracker
                            .do_send(ProgressUpdate::Finished { job_id: ended })
                    }
                    Err(e) => log::error!("could not mark a job failed: {e}"),
                })
                .spawn(ctx);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ItemOutcome, JobSchedule, NewItem};
    use crate::processor::{FieldError, Item, ItemContext};
    use serde_json::json;
    use std::collections::HashMap;

    /// Refuses options with `"bad": true`.
    struct Picky;

    #[async_trait::async_trait(?Send)]
    impl Processor for Picky {
        fn kind(&self) -> &str {
            "picky"
        }

        fn validate_options(
            &self,
            options: &serde_json::Value,
        ) -> Result<(), crate::processor::FieldError> {
            match options.get("bad") {
                Some(serde_json::Value::Bool(true)) => Err(FieldError::new("bad", "is bad")),
                _ => Ok(()),
            }
        }

        async fn process(&self, _: Item, _: ItemContext) -> ItemOutcome {
            unreachable!("admission never runs items")
        }
    }

    fn job(spec: serde_json::Value, keys: &[&str]) -> NewJob {
        NewJob {
            kind: "picky".into(),
            spec,
            parallel: 1,
            metadata: json!({}),
            items: keys
                .iter()
                .map(|k| NewItem {
                    key: k.to_string(),
                    payload: json!({}),
                })
                .collect(),
            schedule: JobSchedule::default(),
        }
    }

    /// The field a refusal names (or the error's text for other errors).
    fn refused(r: Result<(), EngineError>) -> String {
        match r {
            Err(EngineError::Invalid { field, .. }) => field,
            Err(e) => e.to_string(),
            Ok(()) => "accepted".into(),
        }
    }

    #[test]
    fn submissions_are_checked_field_by_field() {
        let groups = Groups::new(HashMap::from([("gpu".to_string(), 1)]), false);
        let check = |spec: serde_json::Value, keys: &[&str]| {
            refused(check_job(Some(&Picky), &job(spec, keys), &groups))
        };
        assert_eq!(check(json!({}), &["a"]), "accepted");
        assert_eq!(
            check(json!({"concurrency_group": "gpu"}), &["a"]),
            "accepted"
        );
        assert_eq!(check(json!({}), &[]), "items");
        assert_eq!(check(json!({"bad": true}), &["a"]), "bad");
        assert_eq!(check(json!({"note": "a\u{0}b"}), &["a"]), "options");
        assert_eq!(check(json!({}), &["a", "b\u{0}"]), "items[1].id");
        assert_eq!(
            check(json!({"max_attempts": "many"}), &["a"]),
            "max_attempts"
        );
        assert_eq!(
            check(json!({"concurrency_group": "cpu"}), &["a"]),
            "concurrency_group"
        );
        assert_eq!(
            check(json!({"item_timeout_seconds": -1}), &["a"]),
            "item_timeout_seconds"
        );
        assert_eq!(check(json!({"deadline": "soon"}), &["a"]), "deadline");
        assert_eq!(
            refused(check_job(None, &job(json!({}), &["a"]), &groups)),
            "processor 'picky' is not available in this engine"
        );
    }

    #[test]
    fn an_unknown_group_names_the_configured_ones() {
        let groups = Groups::new(
            HashMap::from([("b".to_string(), 1), ("a".to_string(), 1)]),
            false,
        );
        let r = check_job(
            Some(&Picky),
            &job(json!({"concurrency_group": "c"}), &["x"]),
            &groups,
        );
        let Err(EngineError::Invalid { message, .. }) = r else {
            panic!("accepted an unknown group");
        };
        assert_eq!(
            message,
            "\"c\" is not a configured concurrency group (configured: a, b)"
        );
        let none = Groups::new(HashMap::new(), false);
        let r = check_job(
            Some(&Picky),
            &job(json!({"concurrency_group": "c"}), &["x"]),
            &none,
        );
        assert!(refused(r).contains("concurrency_group"));
    }

    #[test]
    fn templates_are_checked_for_kind_items_and_processor_options() {
        let template = |spec: serde_json::Value, items: usize| ValidateJob {
            kind: "picky".into(),
            spec,
            items,
        };
        assert_eq!(
            refused(check_template(Some(&Picky), template(json!({}), 1))),
            "accepted"
        );
        assert_eq!(
            refused(check_template(Some(&Picky), template(json!({}), 0))),
            "items"
        );
        assert_eq!(
            refused(check_template(
                Some(&Picky),
                template(json!({"bad": true}), 1)
            )),
            "bad"
        );
        assert!(refused(check_template(None, template(json!({}), 1))).contains("not available"));
    }
}
