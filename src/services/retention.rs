//! Retention: deletes finished jobs some time after they finished (`serve --retention 7d`).
//!
//! A background task started by the engine runs every `retention_interval` (30 s by
//! default): it deletes jobs that are `completed`, `failed` or `cancelled`, have their
//! result built and finished more than the retention ago, with their items and webhook
//! delivery ([`store::retention::prune_finished`]). Never a queued or running job, nor one whose
//! webhook is still being delivered. The work goes in small transactions (at most
//! [`MAX_JOBS_PER_STEP`] jobs and [`store::retention::PRUNE_MAX_ITEMS`] items each) with a pause in
//! between, so that the single writer is never held for long. An idempotency key is free
//! again once its job is deleted.

use crate::model::now;
use crate::store::{self, retention::Pruned};
use crate::store::{Store, StoreError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often retention runs by default.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
/// Most jobs deleted per transaction.
pub const MAX_JOBS_PER_STEP: i64 = 10;
/// Pause between two transactions of one prune, letting other writes in.
const PAUSE: Duration = Duration::from_millis(2);

/// Parses a duration such as `7d`, `12h`, `30m`, `45s` or `90` (seconds); fractions are
/// allowed (`1.5h`). Must be positive.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_lowercase()),
        _ => (t, 's'),
    };
    let factor = match unit {
        's' => 1.0,
        'm' => 60.0,
        'h' => 3600.0,
        'd' => 86400.0,
        _ => {
            return Err(format!(
                "'{text}': expected a number with a unit s, m, h or d (like 7d)"
            ))
        }
    };
    let n: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("'{text}': expected a number with a unit s, m, h or d (like 7d)"))?;
    let secs = n * factor;
    if !(secs.is_finite() && secs > 0.0) || secs > 100.0 * 365.0 * 86400.0 {
        return Err(format!("'{text}': must be positive and at most 100 years"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Deletes what finished more than `retention` ago, in as many small transactions as it
/// takes. Returns the totals.
pub async fn prune_once(store: &Store, retention: Duration) -> Result<Pruned, StoreError> {
    let cutoff = now() - retention.as_secs_f64();
    let mut total = Pruned::default();
    loop {
        let step = store
            .write(move |c| store::retention::prune_finished(c, cutoff, MAX_JOBS_PER_STEP))
            .await?;
        total.jobs += step.jobs;
        total.items += step.items;
        if !step.more {
            break;
        }
        tokio::time::sleep(PAUSE).await;
    }
    Ok(total)
}

/// Starts the pruner on the current actix system: a prune now, then one per `interval`,
/// until `stop` fires.
pub fn spawn_pruner(
    store: Store,
    retention: Duration,
    interval: Duration,
    stop: CancellationToken,
) {
    log::info!(
        "retention: finished jobs are deleted {}s after they finished (checked every {}s)",
        retention.as_secs_f64(),
        interval.as_secs_f64()
    );
    actix_rt::spawn(async move {
        let pruning = async {
            loop {
                match prune_once(&store, retention).await {
                    Ok(p) if p.jobs > 0 || p.items > 0 => log::info!(
                        "retention: pruned {} finished jobs ({} items)",
                        p.jobs,
                        p.items
                    ),
                    Ok(_) => {}
                    Err(e) => log::warn!("retention: prune failed: {e}"),
                }
                tokio::time::sleep(interval).await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = pruning => {}
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_s_m_h_d() {
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3600)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("45s"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 1.5H "), Ok(Duration::from_secs(5400)));
        for bad in ["", "d", "0", "-1d", "7w", "seven days", "1e300d", "NaNs"] {
            assert!(parse_duration(bad).is_err(), "{bad} accepted");
        }
    }
}
