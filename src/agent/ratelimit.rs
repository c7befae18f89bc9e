//! Rate limits of LLM endpoints and models (`serve --llm-limit KEY=rpm:N,tpm:N[,window:5s]`),
//! shared by every LLM-calling kind of an engine (agent tasks and `batch_llm`).
//!
//! A limit's key is an endpoint's base URL or a model glob; a request counts against every
//! limit whose key matches its endpoint or its model. Each limit keeps a sliding window
//! (one minute unless `window:` says otherwise, scaled so that `rpm` and `tpm` stay "per
//! minute"): a request is sent only when, within the last window, fewer than the
//! window's share of requests went out and the tokens spent plus its estimate fit. The
//! estimate before the call is the request's `max_tokens` (or `max_completion_tokens`,
//! Ollama's `options.num_predict`, else [`DEFAULT_COMPLETION_ESTIMATE`]) plus a quarter of
//! its body's bytes for the prompt; once the answer's `usage` is known, the charge is
//! corrected to it.
//!
//! Waiting requests are served first come, first served (a fair `tokio::sync::Mutex` is
//! held while one waits for room), so no job starves behind another. A 429 answer pauses
//! the endpoint for its `Retry-After` (seconds or an HTTP date; [`DEFAULT_429_PAUSE`]
//! without one): every request to it waits, then the refused request is sent again.
//! The limiter is per process: on PostgreSQL each node enforces its limits on its own.

use super::llm::Usage;
use serde_json::Value;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Completion tokens assumed for a request that names no `max_tokens`.
pub const DEFAULT_COMPLETION_ESTIMATE: u64 = 256;
/// How long an endpoint pauses after a 429 without a usable `Retry-After`.
pub const DEFAULT_429_PAUSE: Duration = Duration::from_secs(1);
/// Longest pause a `Retry-After` may impose.
pub const MAX_429_PAUSE: Duration = Duration::from_secs(600);
/// Shortest and longest `window:` a limit may set.
const WINDOW_BOUNDS: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));

/// What a limit applies to.
#[derive(Debug, Clone, PartialEq)]
pub enum LimitKey {
    /// Requests to this base URL (normalized).
    Endpoint(String),
    /// Requests for models matching this glob (`*`, `?`).
    Model(String),
}

/// One `--llm-limit`.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmLimit {
    /// What it applies to.
    pub key: LimitKey,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens (prompt + completion) per minute.
    pub tpm: Option<u64>,
    /// The sliding window the per-minute figures are enforced over (default 60 s).
    pub window: Duration,
}

impl LlmLimit {
    /// Requests allowed per window: `rpm` scaled to it, at least 1.
    fn requests_per_window(&self) -> Option<u64> {
        self.rpm.map(|r| scale(r, self.window))
    }

    /// Tokens allowed per window.
    fn tokens_per_window(&self) -> Option<u64> {
        self.tpm.map(|t| scale(t, self.window))
    }

    fn applies(&self, url: &str, model: &str) -> bool {
        match &self.key {
            LimitKey::Endpoint(u) => u == url,
            LimitKey::Model(glob) => crate::processors::llm_batch::glob_matches(glob, model),
        }
    }
}

fn scale(per_minute: u64, window: Duration) -> u64 {
    ((per_minute as f64 * window.as_secs_f64() / 60.0).floor() as u64).max(1)
}

/// Parses `URL_OR_MODEL=rpm:N,tpm:N[,window:D]`, the `--llm-limit` flag. A key with `://`
/// is an endpoint URL, anything else a model glob; `D` is seconds with an optional unit
/// (`500ms`, `5s`, `2m`). Each error names the value.
pub fn parse_limit(s: &str) -> Result<LlmLimit, String> {
    let (key, rest) = s
        .rsplit_once('=')
        .filter(|(k, _)| !k.trim().is_empty())
        .ok_or_else(|| format!("'{s}' is not URL_OR_MODEL=rpm:N,tpm:N[,window:5s]"))?;
    let key = key.trim();
    let key = if key.contains("://") {
        LimitKey::Endpoint(super::normalize_url(key).map_err(|e| format!("'{s}': {e}"))?)
    } else {
        LimitKey::Model(key.to_string())
    };
    let mut limit = LlmLimit {
        key,
        rpm: None,
        tpm: None,
        window: Duration::from_secs(60),
    };
    for part in rest.split(',').map(str::trim) {
        let (name, value) = part
            .split_once(':')
            .ok_or_else(|| format!("'{part}' in '{s}': expected rpm:N, tpm:N or window:D"))?;
        match name.trim() {
            "rpm" | "tpm" => {
                let n = value
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| {
                        format!("'{part}' in '{s}': {name} must be a positive integer")
                    })?;
                if name.trim() == "rpm" {
                    limit.rpm = Some(n);
                } else {
                    limit.tpm = Some(n);
                }
            }
            "window" => {
                limit.window = parse_window(value.trim())
                    .filter(|w| *w >= WINDOW_BOUNDS.0 && *w <= WINDOW_BOUNDS.1)
                    .ok_or_else(|| {
                        format!("'{part}' in '{s}': window must be a duration from 100ms to 1h, e.g. 5s")
                    })?;
            }
            other => {
                return Err(format!(
                    "'{other}' in '{s}': unknown limit (rpm, tpm or window)"
                ))
            }
        }
    }
    if limit.rpm.is_none() && limit.tpm.is_none() {
        return Err(format!("'{s}' sets neither rpm nor tpm"));
    }
    Ok(limit)
}

fn parse_window(v: &str) -> Option<Duration> {
    let (number, unit) = match v.find(|c: char| c.is_ascii_alphabetic()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: f64 = number
        .trim()
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n > 0.0)?;
    let seconds = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return None,
    };
    Some(Duration::from_secs_f64(seconds))
}

/// The tokens a request is charged before its answer: its completion cap plus a quarter
/// of its body's bytes.
pub fn estimate_tokens(body: &Value, body_bytes: usize) -> u64 {
    let cap = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(k).and_then(Value::as_u64))
        .or_else(|| body.pointer("/options/num_predict").and_then(Value::as_u64))
        .unwrap_or(DEFAULT_COMPLETION_ESTIMATE);
    cap + (body_bytes as u64).div_ceil(4)
}

/// One limit's window: when each request in it went out and what it was charged.
#[derive(Debug)]
struct Window {
    limit: LlmLimit,
    /// (sent at, tokens charged, charge id), oldest first.
    sent: VecDeque<(Instant, u64, u64)>,
}

impl Window {
    fn prune(&mut self, now: Instant) {
        while self
            .sent
            .front()
            .is_some_and(|(t, _, _)| now.duration_since(*t) >= self.limit.window)
        {
            self.sent.pop_front();
        }
    }

    /// How long until a request charged `tokens` fits, zero when it fits now.
    fn wait_for(&mut self, tokens: u64, now: Instant) -> Duration {
        self.prune(now);
        let mut wait = Duration::ZERO;
        let until_leaves = |i: usize| {
            self.sent
                .get(i)
                .map(|(t, _, _)| (*t + self.limit.window).saturating_duration_since(now))
                .unwrap_or(Duration::ZERO)
        };
        if let Some(max) = self.limit.requests_per_window() {
            let n = self.sent.len() as u64;
            if n >= max {
                wait = wait.max(until_leaves((n - max) as usize));
            }
        }
        if let Some(max) = self.limit.tokens_per_window() {
            // A request larger than the whole window's allowance goes alone.
            let tokens = tokens.min(max);
            let mut spent: u64 = self.sent.iter().map(|(_, c, _)| c).sum();
            let mut i = 0;
            while spent + tokens > max && i < self.sent.len() {
                spent -= self.sent[i].1;
                wait = wait.max(until_leaves(i));
                i += 1;
            }
        }
        wait
    }
}

#[derive(Debug, Default)]
struct State {
    windows: Vec<Window>,
    /// Endpoints paused by a 429 until these instants.
    paused: Vec<(String, Instant)>,
    next_charge: u64,
}

/// The limits of one engine, shared by its LLM processors.
#[derive(Debug, Default)]
pub struct RateLimiter {
    state: Mutex<State>,
    /// Held by the request waiting for room, so requests are served in arrival order.
    queue: tokio::sync::Mutex<()>,
}

/// A request's charge against the windows it went out in, corrected by [`RateLimiter::settle`].
#[derive(Debug)]
pub struct Charge {
    id: u64,
}

impl RateLimiter {
    /// A limiter enforcing `limits`.
    pub fn new(limits: Vec<LlmLimit>) -> Self {
        RateLimiter {
            state: Mutex::new(State {
                windows: limits
                    .into_iter()
                    .map(|limit| Window {
                        limit,
                        sent: VecDeque::new(),
                    })
                    .collect(),
                ..State::default()
            }),
            queue: tokio::sync::Mutex::new(()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether any limit is configured (without, requests pass without queueing).
    pub fn is_empty(&self) -> bool {
        self.state().windows.is_empty()
    }

    /// How long a request to `url` for `model` charged `tokens` must wait now; records it
    /// as sent and returns its charge when it need not wait.
    fn try_take(&self, url: &str, model: &str, tokens: u64) -> Result<Charge, Duration> {
        let now = Instant::now();
        let mut state = self.state();
        state.paused.retain(|(_, until)| *until > now);
        let mut wait = state
            .paused
            .iter()
            .filter(|(u, _)| u == url)
            .map(|(_, until)| until.saturating_duration_since(now))
            .max()
            .unwrap_or(Duration::ZERO);
        for w in state
            .windows
            .iter_mut()
            .filter(|w| w.limit.applies(url, model))
        {
            wait = wait.max(w.wait_for(tokens, now));
        }
        if !wait.is_zero() {
            return Err(wait);
        }
        state.next_charge += 1;
        let id = state.next_charge;
        for w in state
            .windows
            .iter_mut()
            .filter(|w| w.limit.applies(url, model))
        {
            w.sent.push_back((now, tokens, id));
        }
        Ok(Charge { id })
    }

    /// Waits until a request to `url` for `model`, estimated at `tokens`, may go out under
    /// every matching limit and no 429 pause, and charges it. Cancel-safe: a request
    /// dropped while waiting is charged nothing.
    pub async fn acquire(&self, url: &str, model: &str, tokens: u64) -> Charge {
        if self.is_empty() && !self.is_paused(url) {
            return self
                .try_take(url, model, tokens)
                .unwrap_or(Charge { id: 0 });
        }
        let _turn = self.queue.lock().await;
        loop {
            match self.try_take(url, model, tokens) {
                Ok(charge) => return charge,
                Err(wait) => tokio::time::sleep(wait.max(Duration::from_millis(1))).await,
            }
        }
    }

    fn is_paused(&self, url: &str) -> bool {
        let now = Instant::now();
        self.state()
            .paused
            .iter()
            .any(|(u, until)| u == url && *until > now)
    }

    /// Corrects a charge to the tokens the answer reports.
    pub fn settle(&self, charge: &Charge, usage: Usage) {
        let actual = usage.prompt_tokens + usage.completion_tokens;
        let mut state = self.state();
        for w in state.windows.iter_mut() {
            if let Some(entry) = w.sent.iter_mut().find(|(_, _, id)| *id == charge.id) {
                entry.1 = actual;
            }
        }
    }

    /// A request was refused by a 429 and not served: its charge is given back (it is
    /// sent again) and the endpoint pauses for `pause`.
    pub fn refused(&self, url: &str, charge: &Charge, pause: Duration) {
        let until = Instant::now() + pause.min(MAX_429_PAUSE);
        let mut state = self.state();
        for w in state.windows.iter_mut() {
            w.sent.retain(|(_, _, id)| *id != charge.id);
        }
        match state.paused.iter_mut().find(|(u, _)| u == url) {
            Some((_, t)) => *t = (*t).max(until),
            None => state.paused.push((url.to_string(), until)),
        }
    }
}

/// How long a 429's `Retry-After` asks to wait: delay-seconds or an HTTP date; `None`
/// when absent or unreadable.
pub fn retry_after(value: Option<&str>) -> Option<Duration> {
    let v = value?.trim();
    if let Ok(seconds) = v.parse::<f64>() {
        return (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds));
    }
    let at = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let ms = at.timestamp_millis() - chrono::Utc::now().timestamp_millis();
    Some(Duration::from_millis(ms.max(0) as u64))
}

/// An engine's limiter, shared.
pub type SharedLimiter = Arc<RateLimiter>;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn limits_parse_with_their_keys_and_window() {
        let l = parse_limit("http://127.0.0.1:8080=rpm:600,tpm:200000").unwrap();
        assert_eq!(l.key, LimitKey::Endpoint("http://127.0.0.1:8080".into()));
        assert_eq!((l.rpm, l.tpm), (Some(600), Some(200_000)));
        assert_eq!(l.window, Duration::from_secs(60));
        let l = parse_limit("qwen*=rpm:60,window:5s").unwrap();
        assert_eq!(l.key, LimitKey::Model("qwen*".into()));
        assert_eq!(l.window, Duration::from_secs(5));
        assert_eq!(l.requests_per_window(), Some(5));
        assert_eq!(
            parse_limit("m=tpm:10,window:500ms").unwrap().window,
            Duration::from_millis(500)
        );
    }

    #[test]
    fn bad_limits_name_the_value() {
        for (spec, names) in [
            ("rpm:60", "rpm:60"),
            ("=rpm:60", "=rpm:60"),
            ("m=rpm:0", "rpm:0"),
            ("m=rpm:ten", "rpm:ten"),
            ("m=rpm:5,burst:3", "burst"),
            ("m=window:5s", "neither"),
            ("m=rpm:5,window:0s", "window:0s"),
            ("m=rpm:5,window:2h", "window:2h"),
            ("ftp://x=rpm:5", "ftp://x"),
        ] {
            let e = parse_limit(spec).unwrap_err();
            assert!(e.contains(names), "{spec}: {e}");
        }
    }

    #[test]
    fn estimates_take_the_completion_cap_and_the_prompt_size() {
        assert_eq!(estimate_tokens(&json!({"max_tokens": 16}), 40), 26);
        assert_eq!(
            estimate_tokens(&json!({"options": {"num_predict": 8}}), 0),
            8
        );
        assert_eq!(
            estimate_tokens(&json!({}), 4),
            DEFAULT_COMPLETION_ESTIMATE + 1
        );
    }

    #[test]
    fn a_full_window_makes_the_next_request_wait_until_the_oldest_leaves() {
        let r = RateLimiter::new(vec![parse_limit("m*=rpm:120,window:1s").unwrap()]);
        assert!(r.try_take("u", "m1", 1).is_ok());
        assert!(r.try_take("u", "m2", 1).is_ok());
        let wait = r.try_take("u", "m3", 1).unwrap_err();
        assert!(
            wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
            "{wait:?}"
        );
        // Another model is not limited.
        assert!(r.try_take("u", "other", 1).is_ok());
    }

    #[test]
    fn tokens_are_corrected_to_the_reported_usage() {
        let r = RateLimiter::new(vec![parse_limit("http://h=tpm:600,window:1s").unwrap()]);
        let c = r.try_take("http://h", "m", 10).unwrap();
        assert!(
            r.try_take("http://h", "m", 1).is_err(),
            "10 of 10 tokens spent"
        );
        r.settle(
            &c,
            Usage {
                prompt_tokens: 2,
                completion_tokens: 3,
            },
        );
        assert!(r.try_take("http://h", "m", 5).is_ok());
        assert!(r.try_take("http://h", "m", 1).is_err());
    }

    #[test]
    fn a_refusal_gives_the_charge_back_and_pauses_the_endpoint() {
        let r = RateLimiter::new(vec![parse_limit("http://h=rpm:60,window:1s").unwrap()]);
        let c = r.try_take("http://h", "m", 1).unwrap();
        r.refused("http://h", &c, Duration::from_millis(300));
        let wait = r.try_take("http://h", "m", 1).unwrap_err();
        assert!(wait > Duration::from_millis(200), "{wait:?}");
        assert!(r.try_take("http://other", "m", 1).is_ok());
    }

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(retry_after(Some("2")), Some(Duration::from_secs(2)));
        assert_eq!(retry_after(Some("0.5")), Some(Duration::from_millis(500)));
        assert_eq!(retry_after(None), None);
        assert_eq!(retry_after(Some("soon")), None);
        let later = (chrono::Utc::now() + chrono::Duration::seconds(30)).to_rfc2822();
        let d = retry_after(Some(&later)).unwrap();
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(
            retry_after(Some("Thu, 01 Jan 1970 00:00:00 GMT")),
            Some(Duration::ZERO)
        );
    }
}
