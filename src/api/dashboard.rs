//! The web dashboard: plain HTML, CSS and JavaScript embedded in the binary, served at `/`
//! (the page) and `/ui/{file}` (its assets). It needs no network beyond this server: the
//! page talks to the REST API and the `/batch/events` stream with URLs relative to where it
//! is mounted, so it also works under a scope (`web::scope("/engine")` serves it at
//! `/engine/`).
//!
//! Every answer of the page carries a Content-Security-Policy that allows scripts, styles
//! and connections to this origin only and no inline script; the script builds the page
//! with DOM text nodes, never with markup from the server.
//!
//! The page and assets need no token (they hold no data); against a server with tokens the
//! script asks for one on the first 401 and sends it as a header (see `app.js`).

use super::error::ApiError;
use actix_web::guard;
use actix_web::http::header;
use actix_web::web::{self, ServiceConfig};
use actix_web::{HttpRequest, HttpResponse};

/// The policy sent with the page: same-origin everything, no inline script or style
/// element, no plugins, no framing, no form posts.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Assets are revalidated on every use (cheap: an `ETag` match answers 304), so a new
/// binary's dashboard is picked up at once.
const CACHE_CONTROL: &str = "no-cache";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
    etag: u64,
}

macro_rules! asset {
    ($name:literal, $content_type:literal) => {{
        const BODY: &[u8] = include_bytes!(concat!("dashboard/", $name));
        Asset {
            name: $name,
            content_type: $content_type,
            body: BODY,
            etag: fnv1a(BODY),
        }
    }};
}

const INDEX: Asset = asset!("index.html", "text/html; charset=utf-8");

/// The files under `/ui/`.
const ASSETS: &[Asset] = &[
    asset!("app.js", "text/javascript; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
];

/// FNV-1a, at compile time: the assets' `ETag`s.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
        i += 1;
    }
    hash
}

/// Mounts the dashboard: `GET /` (the page), `GET /ui/{file}` (its assets), and, inside a
/// scope, a redirect from the scope's bare path to the page (`/engine` → `/engine/`), so
/// the page's relative URLs resolve under the scope.
///
/// `App::new().configure(batchforge::api::dashboard::configure)`; [`super::routes`]
/// already includes it.
pub fn configure(cfg: &mut ServiceConfig) {
    cfg.route("/", get_or_head().to(index))
        .route("", get_or_head().to(to_slash))
        .route("/ui/{file}", get_or_head().to(ui_asset));
}

/// GET, and HEAD (answered without the body).
fn get_or_head() -> actix_web::Route {
    web::route().guard(guard::Any(guard::Get()).or(guard::Head()))
}

async fn index(req: HttpRequest) -> HttpResponse {
    serve(&req, &INDEX)
        .insert_header((header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY))
        .insert_header((header::REFERRER_POLICY, "no-referrer"))
        .insert_header((header::X_FRAME_OPTIONS, "DENY"))
        .finish()
}

async fn to_slash(req: HttpRequest) -> HttpResponse {
    let mut location = format!("{}/", req.path());
    if !req.query_string().is_empty() {
        location = format!("{location}?{}", req.query_string());
    }
    HttpResponse::PermanentRedirect()
        .insert_header((header::LOCATION, location))
        .finish()
}

async fn ui_asset(req: HttpRequest, file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let file = file.into_inner();
    match ASSETS.iter().find(|a| a.name == file) {
        Some(asset) => Ok(serve(&req, asset).finish()),
        None => Err(ApiError::NotFound(format!(
            "no dashboard asset '{file}' (expected one of {})",
            ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// The asset's answer with its caching headers, or a 304 when the client holds it already;
/// the caller adds headers and finishes it.
fn serve(req: &HttpRequest, asset: &Asset) -> ServeBuilder {
    let etag = format!("\"{:016x}\"", asset.etag);
    let fresh = req
        .headers()
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut builder = if fresh {
        HttpResponse::NotModified()
    } else {
        HttpResponse::Ok()
    };
    builder
        .insert_header((header::ETAG, etag))
        .insert_header((header::CACHE_CONTROL, CACHE_CONTROL))
        .insert_header((header::X_CONTENT_TYPE_OPTIONS, "nosniff"));
    if !fresh {
        builder.insert_header((header::CONTENT_TYPE, asset.content_type));
    }
    ServeBuilder {
        builder,
        body: (!fresh).then_some(asset.body),
    }
}

/// A response under construction and the body it will get.
struct ServeBuilder {
    builder: actix_web::HttpResponseBuilder,
    body: Option<&'static [u8]>,
}

impl ServeBuilder {
    fn insert_header(mut self, h: impl actix_web::http::header::TryIntoHeaderPair) -> Self {
        self.builder.insert_header(h);
        self
    }

    fn finish(mut self) -> HttpResponse {
        match self.body {
            Some(body) => self.builder.body(body),
            None => self.builder.finish(),
        }
    }
}
