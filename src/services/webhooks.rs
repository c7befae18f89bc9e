//! Webhooks: a job submitted with a `callback_url` gets one `job.finished` POST once it is
//! terminal (completed, failed or cancelled) with its result.
//!
//! Durable and at-least-once. The transition that finishes the job writes an outbox row in
//! its own transaction ([`store::outbox::enqueue_webhook`]), so a delivery exists exactly when
//! the job is finished, crash or not. The dispatcher that [`spawn_dispatcher`] starts
//! polls for due rows about once a second (one indexed `EXISTS`), leases them
//! ([`store::outbox::lease_webhooks`]: the attempt is counted and the row hidden from later
//! polls for the timeout plus 30 s, after which a crash mid-send sends it again), POSTs
//! them concurrently with a timeout, and records the outcome: delivered on a 2xx, else due
//! again after an exponential backoff with jitter, and given up (logged) after
//! `max_attempts`. Delivery never changes the job. Receivers deduplicate on the
//! `X-Batchforge-Delivery` header (one id per delivery, the same for its retries).
//!
//! With a secret configured every request carries `X-Batchforge-Timestamp: <unix secs>`
//! and `X-Batchforge-Signature: sha256=<hex HMAC-SHA256(secret,
//! "<timestamp>.<delivery id>.<body>")>` ([`signature`]); the README shows how to verify it.
//!
//! The submitter chooses the URL, so before each POST its host is resolved and the request
//! is refused (given up, with the reason in `last_error`) when an address it resolves to is
//! loopback, private, link-local, shared (CGNAT), multicast, unspecified, documentation or
//! otherwise reserved ([`refused_address`]), unless [`WebhookConfig::allow_private`]. The
//! checked address is the one connected to (pinned with `resolve`), so a DNS answer that
//! changes between the check and the connection cannot reach another host.

use crate::model::now;
use crate::store::Store;
use crate::store::{self, outbox::LeasedWebhook, outbox::WebhookAttempt};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::Value;
use sha2::Sha256;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
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
    /// Deliver to loopback, private, link-local and other internal addresses too
    /// (`serve --webhook-allow-private`); off by default, which refuses them.
    pub allow_private: bool,
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
            allow_private: false,
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
            .field("allow_private", &self.allow_private)
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

/// `sha256=<hex HMAC-SHA256(secret, "<timestamp>.<delivery id>.<body>")>`, the
/// `X-Batchforge-Signature`. The delivery id is the `X-Batchforge-Delivery` header, so a
/// receiver deduplicating on it knows it was not altered.
pub fn signature(secret: &str, timestamp: u64, delivery_id: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(delivery_id.to_string().as_bytes());
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

/// Why a webhook may not be sent to `ip` unless private addresses are allowed; `None` for
/// a public address. IPv4-mapped and -compatible IPv6 addresses, NAT64 (`64:ff9b::/96`)
/// and 6to4 (`2002::/16`) are judged by the IPv4 address they carry.
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        _ if ip.is_unspecified() || a == 0 => "unspecified (0.0.0.0/8)",
        (127, _, _) => "loopback",
        (10, _, _) | (192, 168, _) => "private (RFC 1918)",
        (172, b, _) if (16..32).contains(&b) => "private (RFC 1918)",
        (169, 254, _) => "link-local (169.254.0.0/16, cloud metadata)",
        (100, b, _) if (64..128).contains(&b) => "shared address space (CGNAT, 100.64.0.0/10)",
        (192, 0, 0) => "IETF protocol assignments (192.0.0.0/24)",
        (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "documentation",
        (198, 18 | 19, _) => "benchmarking (198.18.0.0/15)",
        (224..=239, _, _) => "multicast",
        (240..=255, _, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback");
    }
    let seg = ip.segments();
    // ::ffff:a.b.c.d (mapped), ::a.b.c.d (compatible), 64:ff9b::a.b.c.d (NAT64).
    let embedded =
        |s: &[u16]| Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if seg[..5] == [0; 5] && seg[5] == 0xffff {
        return refused_v4(embedded(&seg));
    }
    if seg[..6] == [0; 6] {
        return Some("IPv4-compatible (deprecated, ::/96)");
    }
    if seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return refused_v4(embedded(&seg));
    }
    if seg[0] == 0x2002 {
        let v4 = Ipv4Addr::new(
            (seg[1] >> 8) as u8,
            seg[1] as u8,
            (seg[2] >> 8) as u8,
            seg[2] as u8,
        );
        return refused_v4(v4);
    }
    Some(match seg[0] {
        s if s & 0xfe00 == 0xfc00 => "unique local (fc00::/7)",
        s if s & 0xffc0 == 0xfe80 => "link-local (fe80::/10)",
        s if s & 0xffc0 == 0xfec0 => "site-local (fec0::/10)",
        s if s & 0xff00 == 0xff00 => "multicast",
        0x2001 if seg[1] == 0x0db8 => "documentation (2001:db8::/32)",
        0x3fff if seg[1] < 0x1000 => "documentation (3fff::/20)",
        0x0100 if seg[1..4] == [0, 0, 0] => "discard-only (100::/64)",
        _ => return None,
    })
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
        freed: Notify::new(),
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
    /// Notified whenever a delivery ends and gives its slot back.
    freed: Notify,
}

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
enum Polled {
    /// Nothing due (or the store failed): wait a poll interval.
    Idle,
    /// The lease came back full: more may be due, poll again at once.
    Full,
    /// Every slot is busy: poll again as soon as one frees.
    Busy,
}

impl Dispatcher {
    async fn run(self: Arc<Self>) {
        loop {
            let polled = match self.clone().poll().await {
                Ok(polled) => polled,
                Err(e) => {
                    log::warn!("webhooks: poll failed: {e}");
                    Polled::Idle
                }
            };
            match polled {
                Polled::Full => tokio::task::yield_now().await,
                Polled::Idle => tokio::time::sleep(self.config.poll_interval).await,
                Polled::Busy => {
                    tokio::select! {
                        _ = self.freed.notified() => {}
                        _ = tokio::time::sleep(self.config.poll_interval) => {}
                    }
                }
            }
        }
    }

    /// Leases what is due (as much as there are free slots) and sends each on its own task.
    async fn poll(self: Arc<Self>) -> Result<Polled, crate::store::StoreError> {
        let free = self.slots.available_permits();
        if free == 0 {
            return Ok(Polled::Busy);
        }
        let t = now();
        if !self
            .store
            .read(move |c| store::outbox::webhook_due(c, t))
            .await?
        {
            return Ok(Polled::Idle);
        }
        let lease = self.config.timeout.as_secs_f64() + 30.0;
        let leased = self
            .store
            .write(move |c| store::outbox::lease_webhooks(c, t, lease, free as i64))
            .await?;
        let full = leased.len() >= free;
        for delivery in leased {
            let Ok(permit) = self.slots.clone().acquire_owned().await else {
                return Ok(Polled::Idle);
            };
            let this = self.clone();
            actix_rt::spawn(async move {
                this.deliver(delivery).await;
                drop(permit);
                this.freed.notify_one();
            });
        }
        Ok(if !full {
            Polled::Idle
        } else if self.slots.available_permits() == 0 {
            Polled::Busy
        } else {
            Polled::Full
        })
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
        let (id, lease_until) = (d.id, d.lease_until);
        match self
            .store
            .write(move |c| {
                store::outbox::record_webhook_attempt(c, id, lease_until, &outcome, now())
            })
            .await
        {
            Ok(true) => {}
            // The lease ran out and another dispatcher took the delivery: its outcome counts.
            Ok(false) => log::warn!(
                "webhook for job {}: the lease ran out before the attempt ended; its outcome \
                 is dropped",
                d.job_id
            ),
            // The lease runs out and the delivery is sent again: at least once.
            Err(e) => log::warn!(
                "webhook for job {}: cannot record the attempt: {e}",
                d.job_id
            ),
        }
    }

    /// The client to POST `url` with: the shared one when private addresses are allowed or
    /// the host is a checked IP literal; otherwise one pinned to the host's checked
    /// addresses, so that the connection goes where the check looked.
    async fn client_for(&self, url: &reqwest::Url) -> Result<reqwest::Client, Failure> {
        if self.config.allow_private {
            return Ok(self.client.clone());
        }
        let host = url.host_str().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = literal.parse::<IpAddr>() {
            return match refused_address(ip) {
                None => Ok(self.client.clone()),
                Some(why) => Err(Failure::Permanent(refusal(host, ip, why))),
            };
        }
        let port = url.port_or_known_default().unwrap_or(80);
        let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Failure::Transient(format!("cannot resolve '{host}': {e}")))?
            .collect();
        let (allowed, refused): (Vec<SocketAddr>, Vec<SocketAddr>) = resolved
            .into_iter()
            .partition(|a| refused_address(a.ip()).is_none());
        if allowed.is_empty() {
            return Err(match refused.first() {
                Some(a) => Failure::Permanent(refusal(
                    host,
                    a.ip(),
                    refused_address(a.ip()).unwrap_or("internal"),
                )),
                None => Failure::Transient(format!("'{host}' resolves to no address")),
            });
        }
        reqwest::Client::builder()
            .timeout(self.config.timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT)
            // A proxy would resolve the name itself, past the check.
            .no_proxy()
            .resolve_to_addrs(host, &allowed)
            .build()
            .map_err(|e| Failure::Transient(format!("cannot build the HTTP client: {e}")))
    }

    async fn send(&self, d: &LeasedWebhook) -> Result<(), Failure> {
        let url = parse_url(&d.url).map_err(Failure::Permanent)?;
        let client = self.client_for(&url).await?;
        let mut request = client
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
                    signature(secret, timestamp, d.id, &d.payload),
                );
        }
        let response = request
            .body(d.payload.clone())
            .send()
            .await
            // The error's URL may hold a token in its query: only the origin is logged.
            .map_err(|e| Failure::Transient(error_chain(&e.without_url())))?;
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

fn refusal(host: &str, ip: IpAddr, why: &str) -> String {
    format!(
        "refused: '{host}' is {ip} ({why}); webhooks go to public addresses only unless the \
         engine allows private ones (--webhook-allow-private)"
    )
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
    fn signatures_are_hmac_sha256_of_timestamp_dot_delivery_id_dot_body() {
        // Computed independently:
        // Python's hmac.new(b"s3cret", b'1700000000.42.{"a":1}', sha256).
        assert_eq!(
            signature("s3cret", 1_700_000_000, 42, "{\"a\":1}"),
            "sha256=8cdcf8a780cf67ec21373236130e65c74932711ed69970ce310a26d0d0d12776"
        );
        // Another delivery id, another signature: the id cannot be swapped.
        assert_ne!(
            signature("s3cret", 1_700_000_000, 43, "{\"a\":1}"),
            signature("s3cret", 1_700_000_000, 42, "{\"a\":1}")
        );
    }

    #[test]
    fn webhook_targets_refuse_internal_addresses() {
        for internal in [
            "127.0.0.1",
            "127.255.0.9",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.10",
            "198.51.100.1",
            "203.0.113.7",
            "198.18.0.1",
            "::",
            "::1",
            "fc00::1",
            "fd12:3456::1",
            "fe80::1",
            "ff02::1",
            "2001:db8::1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::127.0.0.1",
            "64:ff9b::10.0.0.1",
            "2002:7f00:1::",
        ] {
            let ip: IpAddr = internal.parse().unwrap();
            assert!(refused_address(ip).is_some(), "{internal} allowed");
        }
        for public in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::8.8.8.8",
        ] {
            let ip: IpAddr = public.parse().unwrap();
            assert_eq!(refused_address(ip), None, "{public} refused");
        }
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
