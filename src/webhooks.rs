//! Webhooks: a job submitted with a `callback_url` gets one `job.finished` POST once it is
//! terminal (completed, failed or cancelled) with its result.
//!
//! Durable and at-least-once. The transition that finishes the job writes an outbox row in
//! its own transaction ([`queries::enqueue_webhook`]), so a delivery exists exactly when
//! the job is finished, crash or not. The dispatcher that [`spawn_dispatcher`] starts
//! polls for due rows about once a second (one indexed `EXISTS`), leases them
//! ([`queries::lease_webhooks`]: the attempt is counted and the row hidden from later
//! polls for the timeout plus 30 s, after which a crash mid-send sends it again), POSTs
//! them concurrently with a timeout, and records the outcome: delivered on a 2xx, else due
//! again after an exponential backoff with jitter, and given up (logged) after
//! `max_attempts`. Delivery never changes the job. Receivers deduplicate on the
//! `X-Batchforge-Delivery` header (one id per delivery, the same for its retries).
//!
//! With a secret configured every request carries `X-Batchforge-Timestamp: <unix secs>`
//! and `X-Batchforge-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`
//! ([`signature`]); the README shows how to verify it.

use crate::model::now;
use crate::store::queries::{self, LeasedWebhook, WebhookAttempt};
use crate::store::Store;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The job option naming the URL.
pub const CALLBACK_URL_FIELD: &str = "callback_url";
/// Longest accepted `callback_url`.
pub const MAX_CALLBACK_URL: usize = 2048;
/// Deliveries in flight at once.
const MAX_IN_FLIGHT: usize = 16;
/// The `User-Agent` of every delivery.
pub const USER_AGENT: &str = concat!("batchforge/", env!("CARGO_PKG_VERSION"));

/// Delivery settings (`serve --webhook-secret`; the rest are for tests and embedders).
#[derive(Clone)]
pub struct WebhookConfig {
    /// Signs every delivery when set (HMAC-SHA256).
    pub secret: Option<String>,
    /// How long one POST may take.
    pub timeout: Duration,
    /// The first retry's delay; each further one doubles it (with ±20 % jitter).
    pub backoff_base: Duration,
    /// The longest delay between attempts.
    pub backoff_max: Duration,
    /// Attempts before a delivery is given up.
    pub max_attempts: u32,
    /// How often the dispatcher looks for due deliveries.
    pub poll_interval: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            secret: None,
            timeout: Duration::from_secs(10),
            backoff_base: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            max_attempts: 8,
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl std::fmt::Debug for WebhookConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookConfig")
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("timeout", &self.timeout)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("max_attempts", &self.max_attempts)
            .field("poll_interval", &self.poll_interval)
            .finish()
    }
}

/// Checks a submission's `callback_url`: absent or null means none; otherwise an absolute
/// `http` or `https` URL with a host, at most [`MAX_CALLBACK_URL`] bytes.
pub fn check_callback_url(value: &Value) -> Result<Option<String>, String> {
    let url = match value {
        Value::Null => return Ok(None),
        Value::String(s) => s.trim(),
        other => return Err(format!("must be an http or https URL, got {other}")),
    };
    if url.is_empty() {
        return Err("must be an http or https URL, got an empty string".into());
    }
    if url.len() > MAX_CALLBACK_URL {
        return Err(format!("must be at most {MAX_CALLBACK_URL} bytes"));
    }
    let parsed = parse_url(url)?;
    Ok(Some(parsed.to_string()))
}

fn parse_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed =
        reqwest::Url::parse(url).map_err(|e| format!("'{url}' is not a valid URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "'{url}': the scheme must be http or https, not '{}'",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{url}' has no host"));
    }
    Ok(parsed)
}

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, the `X-Batchforge-Signature`.
pub fn signature(secret: &str, timestamp: u64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let mut out = String::with_capacity(7 + 2 * digest.len());
    out.push_str("sha256=");
    for b in digest.iter() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The delay before the attempt after `attempts` failed ones: `base × 2^(attempts−1)`
/// within ±20 % jitter, at most `backoff_max`.
pub fn backoff(config: &WebhookConfig, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let plain = config
        .backoff_base
        .saturating_mul(1u32 << exp)
        .min(config.backoff_max);
    plain
        .mul_f64(0.8 + 0.4 * fastrand::f64())
        .min(config.backoff_max)
}

/// Starts the dispatcher on the current actix system; it stops when `stop` fires.
pub fn spawn_dispatcher(store: Store, config: WebhookConfig, stop: CancellationToken) {
    let client = match reqwest::Client::builder()
        .timeout(config.timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(USER_AGENT)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            log::error!("webhooks: cannot build the HTTP client ({e}); no webhook will be sent");
            return;
        }
    };
    let dispatcher = Arc::new(Dispatcher {
        store,
        config,
        client,
        slots: Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT)),
    });
    actix_rt::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = dispatcher.run() => {}
        }
    });
}

struct Dispatcher {
    store: Store,
    config: WebhookConfig,
    client: reqwest::Client,
    slots: Arc<tokio::sync::Semaphore>,
}

impl Dispatcher {
    async fn run(self: Arc<Self>) {
        loop {
            if let Err(e) = self.clone().poll().await {
                log::warn!("webhooks: poll failed: {e}");
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Leases what is due (as much as there are free slots) and sends each on its own task.
    async fn poll(self: Arc<Self>) -> Result<(), crate::store::StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(());
        }
        let t = now();
        if !self.store.read(move |c| queries::webhook_due(c, t)).await? {
            return Ok(());
        }
        let lease = self.config.timeout.as_secs_f64() + 30.0;
        let leased = self
            .store
            .write(move |c| queries::lease_webhooks(c, t, lease, free as i64))
            .await?;
        for delivery in leased {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return Ok(());
            };
            let this = self.clone();
            actix_rt::spawn(async move {
                this.deliver(delivery).await;
                drop(permit);
            });
        }
        Ok(())
    }

    async fn deliver(&self, d: LeasedWebhook) {
        let target = origin(&d.url);
        let error = self.send(&d).await.err();
        let attempts = d.attempts.max(1) as u32;
        let outcome = match error {
            None => {
                log::info!(
                    "webhook for job {} delivered to {target} (attempt {attempts})",
                    d.job_id
                );
                WebhookAttempt::Delivered
            }
            Some(Failure::Permanent(error)) => {
                log::error!("webhook for job {} given up: {error}", d.job_id);
                WebhookAttempt::GaveUp { error }
            }
            Some(Failure::Transient(error)) if attempts >= self.config.max_attempts => {
                log::error!(
                    "webhook for job {} to {target} given up after {attempts} attempts: {error}",
                    d.job_id
                );
                WebhookAttempt::GaveUp { error }
            }
            Some(Failure::Transient(error)) => {
                let delay = backoff(&self.config, attempts);
                log::warn!(
                    "webhook for job {} to {target}: attempt {attempts} of {} failed: {error}; next in {:.1}s",
                    d.job_id,
                    self.config.max_attempts,
                    delay.as_secs_f64()
                );
                WebhookAttempt::Retry {
                    at: now() + delay.as_secs_f64(),
                    error,
                }
            }
        };
        let id = d.id;
        if let Err(e) = self
            .store
            .write(move |c| queries::record_webhook_attempt(c, id, &outcome, now()))
            .await
        {
            // The lease runs out and the delivery is sent again: at least once.
            log::warn!(
                "webhook for job {}: cannot record the attempt: {e}",
                d.job_id
            );
        }
    }

    async fn send(&self, d: &LeasedWebhook) -> Result<(), Failure> {
        let url = parse_url(&d.url).map_err(Failure::Permanent)?;
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("X-Batchforge-Event", "job.finished")
            .header("X-Batchforge-Delivery", d.id.to_string());
        if let Some(secret) = &self.config.secret {
            let timestamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            request = request
                .header("X-Batchforge-Timestamp", timestamp.to_string())
                .header(
                    "X-Batchforge-Signature",
                    signature(secret, timestamp, &d.payload),
                );
        }
        let response = request
            .body(d.payload.clone())
            .send()
            .await
            .map_err(|e| Failure::Transient(error_chain(&e)))?;
        let status = response.status();
        if status.is_success() {
            Ok(())
        } else {
            Err(Failure::Transient(format!(
                "the receiver answered HTTP {status}"
            )))
        }
    }
}

enum Failure {
    /// Worth another attempt.
    Transient(String),
    /// Never going to work (a URL that does not parse).
    Permanent(String),
}

/// `scheme://host[:port]` of a URL, for logs: paths and queries often carry tokens.
fn origin(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => u.origin().ascii_serialization(),
        Err(_) => "an invalid URL".into(),
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn callback_urls_must_be_http_or_https_with_a_host() {
        assert_eq!(check_callback_url(&Value::Null), Ok(None));
        assert_eq!(
            check_callback_url(&json!("https://example.com/hook?x=1")),
            Ok(Some("https://example.com/hook?x=1".into()))
        );
        assert!(check_callback_url(&json!("http://127.0.0.1:9/h"))
            .unwrap()
            .is_some());
        for bad in [
            json!(""),
            json!("  "),
            json!("not a url"),
            json!("ftp://x/y"),
            json!("file:///etc/passwd"),
            json!(12),
            json!({"u": 1}),
        ] {
            assert!(check_callback_url(&bad).is_err(), "{bad} accepted");
        }
        let long = format!("https://example.com/{}", "a".repeat(MAX_CALLBACK_URL));
        assert!(check_callback_url(&json!(long)).is_err());
    }

    #[test]
    fn signatures_are_hmac_sha256_of_timestamp_dot_body() {
        // Computed independently: Python's hmac.new(b"s3cret", b'1700000000.{"a":1}', sha256).
        assert_eq!(
            signature("s3cret", 1_700_000_000, "{\"a\":1}"),
            "sha256=1698a50bc74d1ff1db85c4e0a5297c2ad9fdba245d5737cdb789e4cc6e098940"
        );
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        let config = WebhookConfig::default();
        for (attempts, secs) in [(1u32, 1.0f64), (2, 2.0), (3, 4.0), (5, 16.0)] {
            let d = backoff(&config, attempts).as_secs_f64();
            assert!(
                (secs * 0.8..=secs * 1.2).contains(&d),
                "attempt {attempts}: {d}"
            );
        }
        for attempts in [10, 20, 64, u32::MAX] {
            assert!(backoff(&config, attempts) <= Duration::from_secs(300));
            assert!(backoff(&config, attempts) >= Duration::from_secs(240));
        }
    }
}
