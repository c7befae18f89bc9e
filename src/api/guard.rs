//! The checks every request to the REST API passes before a handler sees it. The API runs
//! commands by design, so a web page the user happens to visit must not be able to reach
//! it (foreign `Origin`, DNS-rebound `Host`, form or `text/plain` bodies that need no CORS
//! preflight), and, once tokens are configured, nobody without one may reach it at all.
//!
//! [`RequestGuard`] is an actix-web middleware: [`super::routes`] wraps everything it
//! mounts with it, and an embedder may wrap a scope of its own with it too.

use super::error::ErrorBody;
use actix_web::body::EitherBody;
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::http::{Method, StatusCode};
use actix_web::HttpResponse;
use futures_util::future::{ready, LocalBoxFuture, Ready};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;

/// The body types a write may carry: JSON, and the JSONL types the submit endpoints take.
pub const BODY_TYPES: &[&str] = &[
    "application/json",
    "application/x-ndjson",
    "application/jsonl",
    "application/jsonlines",
];

/// Who may use the API, and from where. The default has no token and allows no foreign
/// origin and no host besides loopback and the bound address: safe on a laptop.
#[derive(Clone, Default)]
pub struct SecurityConfig {
    /// Origins (`https://app.example:8443`) whose pages may call the API besides its own.
    pub allowed_origins: Vec<String>,
    /// Host names (`build.example`, or `build.example:8000` for one port) the API may be
    /// reached by, besides loopback names and the bound address.
    pub allowed_hosts: Vec<String>,
    /// The address the server listens on; when `None`, the connection's local address.
    pub bound: Option<SocketAddr>,
    /// Tokens that grant everything.
    pub tokens: Vec<String>,
    /// Tokens that grant reads (GET) only.
    pub read_tokens: Vec<String>,
    /// Listen on a non-loopback address without any token (refused otherwise).
    pub allow_unauthenticated: bool,
    /// Serve HTTPS with these files; the server's own origin is then `https://` only.
    pub tls: Option<super::tls::TlsFiles>,
}

impl std::fmt::Debug for SecurityConfig {
    // Tokens are never printed, only counted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecurityConfig")
            .field("allowed_origins", &self.allowed_origins)
            .field("allowed_hosts", &self.allowed_hosts)
            .field("bound", &self.bound)
            .field("tokens", &format_args!("[{} hidden]", self.tokens.len()))
            .field(
                "read_tokens",
                &format_args!("[{} hidden]", self.read_tokens.len()),
            )
            .field("allow_unauthenticated", &self.allow_unauthenticated)
            .field("tls", &self.tls)
            .finish()
    }
}

impl SecurityConfig {
    /// Whether requests need `Authorization: Bearer …`.
    pub fn requires_token(&self) -> bool {
        !self.tokens.is_empty() || !self.read_tokens.is_empty()
    }

    /// Refuses to serve `addr` when it is reachable from other machines and no token
    /// guards it, unless [`SecurityConfig::allow_unauthenticated`] says so (then warns).
    pub fn check_exposure(&self, addr: &SocketAddr) -> Result<(), String> {
        if addr.ip().is_loopback() || self.requires_token() {
            return Ok(());
        }
        if self.allow_unauthenticated {
            log::warn!(
                "listening on {addr} without a token (--allow-unauthenticated): anyone who can \
                 reach this address can run commands as this user"
            );
            return Ok(());
        }
        Err(format!(
            "refusing to listen on {addr} without a token: anyone who can reach it could run \
             commands as this user. Pass --token TOKEN (or --token-file PATH, or \
             BATCHFORGE_TOKEN), or --allow-unauthenticated to accept the risk"
        ))
    }
}

/// The middleware: `web::scope("/engine").wrap(RequestGuard::new(config))`.
#[derive(Clone)]
pub struct RequestGuard {
    rules: Arc<Rules>,
}

impl RequestGuard {
    /// A guard applying `config`.
    pub fn new(config: SecurityConfig) -> Self {
        RequestGuard {
            rules: Arc::new(Rules::new(config)),
        }
    }
}

impl<S, B> Transform<S, ServiceRequest> for RequestGuard
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Transform = RequestGuardService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(RequestGuardService {
            service: Rc::new(service),
            rules: self.rules.clone(),
        }))
    }
}

/// [`RequestGuard`] around one service.
pub struct RequestGuardService<S> {
    service: Rc<S>,
    rules: Arc<Rules>,
}

impl<S, B> Service<ServiceRequest> for RequestGuardService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error> + 'static,
    B: 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = actix_web::Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let (verdict, cors) = self.rules.judge(&req);
        match verdict {
            Ok(()) => {
                let fut = self.service.call(req);
                Box::pin(async move {
                    let mut res = fut.await?;
                    if let Some(origin) = cors {
                        cors_headers(res.headers_mut(), &origin, false);
                    }
                    Ok(res.map_into_left_body())
                })
            }
            Err(mut refusal) => {
                if let Some(origin) = cors {
                    cors_headers(refusal.headers_mut(), &origin, false);
                }
                Box::pin(ready(Ok(req.into_response(refusal).map_into_right_body())))
            }
        }
    }
}

/// A [`SecurityConfig`] made ready for checking: origins normalized, tokens hashed.
struct Rules {
    allowed_origins: Vec<String>,
    allowed_hosts: Vec<(String, Option<u16>)>,
    bound: Option<SocketAddr>,
    tokens: Vec<[u8; 32]>,
    read_tokens: Vec<[u8; 32]>,
    /// Served over TLS: a page of the same host and port is the server's own only under `https`.
    https: bool,
}

/// What a bearer token grants.
#[derive(Debug, PartialEq, Eq)]
enum Access {
    /// No token sent.
    Missing,
    /// A token no one configured.
    Wrong,
    /// GET only.
    Read,
    /// Everything.
    Full,
}

impl Rules {
    fn new(config: SecurityConfig) -> Rules {
        Rules {
            allowed_origins: config
                .allowed_origins
                .iter()
                .filter_map(|o| normalize_origin(o))
                .collect(),
            allowed_hosts: config
                .allowed_hosts
                .iter()
                .filter_map(|h| split_authority(h.trim()))
                .collect(),
            bound: config.bound,
            tokens: config.tokens.iter().map(|t| digest(t)).collect(),
            read_tokens: config.read_tokens.iter().map(|t| digest(t)).collect(),
            https: config.tls.is_some(),
        }
    }

    /// The answer to refuse `req` with, if any, and the allowed foreign origin that gets
    /// CORS headers.
    fn judge(&self, req: &ServiceRequest) -> (Result<(), HttpResponse>, Option<String>) {
        let headers = req.headers();
        let host = headers
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()));
        // The Host header itself, never X-Forwarded-Host or Forwarded: a rebound page is
        // same-origin to the browser and may set those freely.
        if let Some(host) = &host {
            let bound = self.bound.unwrap_or_else(|| req.app_config().local_addr());
            if !self.host_allowed(host, bound) {
                return (Err(refuse_host(host)), None);
            }
        }
        let mut cors = None;
        if let Some(origin) = headers.get(header::ORIGIN) {
            let origin = origin.to_str().unwrap_or("(not visible ASCII)");
            if !host
                .as_deref()
                .is_some_and(|h| same_origin(origin, h, self.https))
            {
                match normalize_origin(origin).filter(|o| self.allowed_origins.contains(o)) {
                    Some(_) => cors = Some(origin.to_string()),
                    None => return (Err(refuse_origin(origin)), None),
                }
            }
        }
        if let Some(origin) = &cors {
            if req.method() == Method::OPTIONS
                && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
            {
                // A preflight carries no credentials; the real request is checked.
                let mut preflight = HttpResponse::NoContent().finish();
                cors_headers(preflight.headers_mut(), origin, true);
                return (Err(preflight), None);
            }
        }
        if let Some(refusal) = self.check_token(req) {
            return (Err(refusal), cors);
        }
        // The OpenAI SDK uploads batch files as a form; only that route takes one (the
        // Origin, Host and token checks above still apply to it).
        if req.method() == Method::POST && req.path().ends_with(MULTIPART_PATH) {
            if let Some(t) = headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
            {
                if t.trim()
                    .to_ascii_lowercase()
                    .starts_with("multipart/form-data")
                {
                    return (Ok(()), cors);
                }
            }
        }
        match check_body_type(req.method(), headers) {
            Some(refusal) => (Err(refusal), cors),
            None => (Ok(()), cors),
        }
    }

    fn host_allowed(&self, host: &str, bound: SocketAddr) -> bool {
        let Some((name, port)) = split_authority(host) else {
            return false;
        };
        if name == "localhost" {
            return true;
        }
        if let Some(ip) = parse_ip(&name) {
            // An address cannot be rebound; all of this machine's are ours when the
            // server listens on every interface.
            if ip.is_loopback() || ip == bound.ip() || bound.ip().is_unspecified() {
                return true;
            }
        }
        self.allowed_hosts
            .iter()
            .any(|(n, p)| *n == name && (p.is_none() || *p == port))
    }

    fn access(&self, authorization: Option<&HeaderValue>) -> Access {
        let Some(token) = authorization
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
        else {
            return Access::Missing;
        };
        let sent = digest(token);
        // Every configured token is compared, in constant time each, whatever matches.
        let full = self
            .tokens
            .iter()
            .fold(false, |hit, t| hit | same_digest(t, &sent));
        let read = self
            .read_tokens
            .iter()
            .fold(false, |hit, t| hit | same_digest(t, &sent));
        match (full, read) {
            (true, _) => Access::Full,
            (false, true) => Access::Read,
            _ => Access::Wrong,
        }
    }

    /// The refusal for a request without the token it needs.
    fn check_token(&self, req: &ServiceRequest) -> Option<HttpResponse> {
        if self.tokens.is_empty() && self.read_tokens.is_empty() {
            return None;
        }
        let reads = matches!(*req.method(), Method::GET | Method::HEAD);
        if reads && is_public_path(req.match_info().unprocessed()) {
            return None;
        }
        match self.access(req.headers().get(header::AUTHORIZATION)) {
            Access::Full => None,
            Access::Read if reads => None,
            Access::Read => Some(HttpResponse::Forbidden().json(ErrorBody::new(format!(
                "this token may only read (GET); {} needs a token given by --token",
                req.method()
            )))),
            Access::Missing => Some(unauthorized(
                "Bearer realm=\"batchforge\"",
                "this server needs a token: send `Authorization: Bearer TOKEN` (the CLI sends \
                 BATCHFORGE_TOKEN or --token)",
            )),
            Access::Wrong => Some(unauthorized(
                "Bearer realm=\"batchforge\", error=\"invalid_token\"",
                "the bearer token is not one this server accepts",
            )),
        }
    }
}

/// Paths (below where the API is mounted) that need no token: the health check, and the
/// dashboard's page and assets, which hold no data (the page asks for the token itself).
fn is_public_path(path: &str) -> bool {
    matches!(path, "" | "/" | "/health") || path.starts_with("/ui/")
}

fn unauthorized(challenge: &'static str, detail: &str) -> HttpResponse {
    HttpResponse::Unauthorized()
        .insert_header((header::WWW_AUTHENTICATE, challenge))
        .json(ErrorBody::new(detail))
}

fn refuse_host(host: &str) -> HttpResponse {
    HttpResponse::Forbidden().json(ErrorBody::new(format!(
        "Host '{}' is not one this server answers to (a DNS-rebinding guard): use \
         localhost, a loopback address or the address it listens on, or start it with \
         --allowed-host NAME",
        visible(host)
    )))
}

fn refuse_origin(origin: &str) -> HttpResponse {
    HttpResponse::Forbidden().json(ErrorBody::new(format!(
        "requests from origin '{}' are not allowed: a page of another site may not use this \
         server (start it with --allowed-origin ORIGIN to allow one)",
        visible(origin)
    )))
}

/// A header value fit to quote in a message: short, printable.
fn visible(s: &str) -> String {
    s.chars()
        .filter(|c| !c.is_control())
        .take(200)
        .collect::<String>()
}

/// The one route that takes `multipart/form-data`: the OpenAI-compatible file upload.
const MULTIPART_PATH: &str = "/v1/files";

/// The refusal of a body that is not JSON or JSONL: a form or `text/plain` post is what a
/// foreign page can send without a CORS preflight.
fn check_body_type(method: &Method, headers: &HeaderMap) -> Option<HttpResponse> {
    if !matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    ) {
        return None;
    }
    let has_body = headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|n| n.trim() != "0");
    if !has_body {
        return None;
    }
    let sent = headers
        .get(header::CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let essence = sent
        .as_deref()
        .and_then(|t| t.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase());
    if essence.is_some_and(|e| BODY_TYPES.contains(&e.as_str())) {
        return None;
    }
    let got = match sent {
        Some(t) => format!("got '{}'", visible(&t)),
        None => "got no Content-Type".to_string(),
    };
    Some(
        HttpResponse::build(StatusCode::UNSUPPORTED_MEDIA_TYPE).json(ErrorBody::new(format!(
            "send the body with `Content-Type: application/json` (or `application/x-ndjson` \
             for a JSONL submission); {got}"
        ))),
    )
}

/// `Access-Control-*` for an allowed foreign origin; `preflight` adds what an `OPTIONS`
/// answer needs.
fn cors_headers(headers: &mut HeaderMap, origin: &str, preflight: bool) {
    let Ok(value) = HeaderValue::from_str(origin) else {
        return;
    };
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, value);
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
    if preflight {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static("GET, POST, DELETE"),
        );
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            HeaderValue::from_static("authorization, content-type, idempotency-key, last-event-id"),
        );
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static("600"),
        );
    }
}

/// The token of an `Authorization: Bearer TOKEN` value.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// Tokens are compared as SHA-256 digests: equal lengths, so the comparison below takes
/// the same time whatever the token's length or where it differs.
fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// `name[:port]`, `[v6][:port]` → the lowercase name (brackets kept, trailing dot
/// dropped) and the port.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let authority = authority.trim();
    if authority.is_empty() || authority.contains(['/', '@', ' ']) {
        return None;
    }
    let (name, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p.parse().ok()?),
            None if after.is_empty() => None,
            None => return None,
        };
        (format!("[{v6}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((name, p)) => (name.to_string(), Some(p.parse().ok()?)),
            None => (authority.to_string(), None),
        }
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    (!name.is_empty()).then_some((name, port))
}

fn parse_ip(name: &str) -> Option<IpAddr> {
    name.trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()
}

fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `scheme://name:port`, with the port always written, for an `Origin` value; `None` for
/// `null` and anything that is not an HTTP(S) origin.
fn normalize_origin(origin: &str) -> Option<String> {
    let (scheme, authority) = origin.trim().trim_end_matches('/').split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let (name, port) = split_authority(authority)?;
    let port = port.unwrap_or(default_port(&scheme)?);
    Some(format!("{scheme}://{name}:{port}"))
}

/// Whether `origin` is the server's own: the name and port it was reached on (the `Host`
/// header), under either scheme (a TLS-terminating proxy in front changes only that) or,
/// when the server itself serves TLS (`https`), under `https` only: no `http://` page can
/// share its origin then.
fn same_origin(origin: &str, host: &str, https: bool) -> bool {
    let Some(origin) = normalize_origin(origin) else {
        return false;
    };
    let Some((scheme, _)) = origin.split_once("://") else {
        return false;
    };
    if https && scheme != "https" {
        return false;
    }
    let Some((name, port)) = split_authority(host) else {
        return false;
    };
    let port = port.or(default_port(scheme));
    port.is_some_and(|p| origin == format!("{scheme}://{name}:{p}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(config: SecurityConfig) -> Rules {
        Rules::new(config)
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn loopback_and_the_bound_address_are_allowed_hosts_and_other_names_are_not() {
        let r = rules(SecurityConfig {
            allowed_hosts: vec!["build.example".into(), "ci.example:9000".into()],
            ..Default::default()
        });
        let local = addr("127.0.0.1:8000");
        for ok in [
            "localhost",
            "localhost:1234",
            "LOCALHOST.:8000",
            "127.0.0.1:8000",
            "127.0.0.2",
            "[::1]:8000",
            "build.example:8000",
            "ci.example:9000",
        ] {
            assert!(r.host_allowed(ok, local), "{ok}");
        }
        for bad in [
            "rebind.evil.example:8000",
            "192.168.1.5:8000",
            "ci.example:9001",
            "localhost.evil.example",
            "",
            "user@localhost",
        ] {
            assert!(!r.host_allowed(bad, local), "{bad}");
        }
        assert!(r.host_allowed("192.168.1.5:8000", addr("192.168.1.5:8000")));
        assert!(r.host_allowed("10.1.2.3:8000", addr("0.0.0.0:8000")));
        assert!(!r.host_allowed("evil.example:8000", addr("0.0.0.0:8000")));
    }

    #[test]
    fn the_own_origin_is_the_host_it_was_reached_on_with_default_ports() {
        assert!(same_origin(
            "http://127.0.0.1:8000",
            "127.0.0.1:8000",
            false
        ));
        assert!(same_origin("http://localhost", "localhost", false));
        assert!(same_origin("http://localhost:80", "localhost", false));
        assert!(same_origin(
            "https://build.example",
            "build.example:443",
            false
        ));
        assert!(!same_origin("http://evil.example", "127.0.0.1:8000", false));
        assert!(!same_origin(
            "http://127.0.0.1:8001",
            "127.0.0.1:8000",
            false
        ));
        assert!(!same_origin("null", "127.0.0.1:8000", false));
        assert!(!same_origin("file://", "127.0.0.1:8000", false));
        // Served over TLS, the own origin is the https one only.
        assert!(same_origin(
            "https://127.0.0.1:8443",
            "127.0.0.1:8443",
            true
        ));
        assert!(same_origin("https://localhost", "localhost", true));
        assert!(!same_origin(
            "http://127.0.0.1:8443",
            "127.0.0.1:8443",
            true
        ));
        assert_eq!(
            normalize_origin("HTTPS://App.Example/").as_deref(),
            Some("https://app.example:443")
        );
    }

    #[test]
    fn tokens_grant_by_kind_and_anything_else_is_missing_or_wrong() {
        let r = rules(SecurityConfig {
            tokens: vec!["full-secret".into()],
            read_tokens: vec!["read-secret".into(), "other".into()],
            ..Default::default()
        });
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(r.access(Some(&h("Bearer full-secret"))), Access::Full);
        assert_eq!(r.access(Some(&h("bearer  read-secret "))), Access::Read);
        assert_eq!(r.access(Some(&h("Bearer other"))), Access::Read);
        assert_eq!(r.access(Some(&h("Bearer full-secre"))), Access::Wrong);
        assert_eq!(r.access(Some(&h("Basic full-secret"))), Access::Missing);
        assert_eq!(r.access(Some(&h("Bearer "))), Access::Missing);
        assert_eq!(r.access(None), Access::Missing);
    }

    #[test]
    fn only_json_and_jsonl_bodies_pass() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2"));
        assert!(check_body_type(&Method::POST, &headers).is_some());
        for t in [
            "text/plain",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            assert!(check_body_type(&Method::POST, &headers).is_some(), "{t}");
            assert!(check_body_type(&Method::GET, &headers).is_none(), "{t}");
        }
        for t in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/x-ndjson",
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(t));
            assert!(check_body_type(&Method::DELETE, &headers).is_none(), "{t}");
        }
        let mut empty = HeaderMap::new();
        empty.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
        empty.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        assert!(check_body_type(&Method::POST, &empty).is_none());
    }

    #[test]
    fn a_non_loopback_address_needs_a_token_or_the_override() {
        let open = SecurityConfig::default();
        assert!(open.check_exposure(&addr("127.0.0.1:8000")).is_ok());
        let err = open.check_exposure(&addr("0.0.0.0:8000")).unwrap_err();
        assert!(err.contains("--token"), "{err}");
        let with_token = SecurityConfig {
            read_tokens: vec!["r".into()],
            ..Default::default()
        };
        assert!(with_token.check_exposure(&addr("0.0.0.0:8000")).is_ok());
        let overridden = SecurityConfig {
            allow_unauthenticated: true,
            ..Default::default()
        };
        assert!(overridden.check_exposure(&addr("[::]:8000")).is_ok());
    }

    #[test]
    fn debug_output_hides_tokens() {
        let config = SecurityConfig {
            tokens: vec!["s3cret-value".into()],
            ..Default::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("1 hidden"), "{shown}");
    }
}
