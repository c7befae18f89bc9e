//! Extractors that hold request input to the API's error shape: path parameters checked
//! for text the store cannot hold, and bodies whose size error is JSON like every other.

use super::error::ApiError;
use crate::submission::fields::check_text;
use crate::submission::MAX_BODY_BYTES;
use actix_web::web::{self, Bytes};
use actix_web::{FromRequest, HttpRequest};

/// A path parameter (`{id}`, `{kind}`), decoded: a NUL character in it is refused with a
/// 422 naming the parameter, before it reaches a query (PostgreSQL cannot hold one).
pub(crate) struct Segment(String);

impl Segment {
    /// The decoded text.
    pub(crate) fn into_inner(self) -> String {
        self.0
    }
}

impl FromRequest for Segment {
    type Error = ApiError;
    type Future = std::future::Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let name = req
            .match_info()
            .iter()
            .next()
            .map_or("path", |(name, _)| name)
            .to_string();
        // The same decoding as `web::Path<String>`.
        let value = web::Path::<String>::extract(req)
            .into_inner()
            .map(web::Path::into_inner)
            .map_err(|e| ApiError::invalid(name.as_str(), e.to_string()))
            .and_then(|v| {
                check_text(&name, &v)?;
                Ok(Segment(v))
            });
        std::future::ready(value)
    }
}

/// A request body, read whole up to the configured limit; a larger one answers 413 with
/// the JSON error body every other error has (actix's own answer is plain text).
pub(crate) struct Body(pub(crate) Bytes);

impl FromRequest for Body {
    type Error = ApiError;
    type Future = futures_util::future::LocalBoxFuture<'static, Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, payload: &mut actix_web::dev::Payload) -> Self::Future {
        let read = Bytes::from_request(req, payload);
        Box::pin(async move {
            read.await.map(Body).map_err(|e| {
                let status = e.as_response_error().status_code();
                if status == actix_web::http::StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::TooLarge(format!(
                        "the request body is larger than the limit of {MAX_BODY_BYTES} bytes"
                    ))
                } else {
                    ApiError::MalformedJson(format!("cannot read the request body: {e}"))
                }
            })
        })
    }
}
