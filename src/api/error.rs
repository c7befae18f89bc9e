//! The HTTP error boundary: one enum, one JSON shape (`{"detail": …}`, the seed's FastAPI
//! form, plus `field` when one field is at fault).

use crate::model::FieldError;
use crate::queue::messages::EngineError;
use crate::submission::SubmissionError;
use actix_web::http::StatusCode;
use actix_web::{HttpResponse, ResponseError};

/// The body of every error answer: the seed's FastAPI shape.
#[derive(Debug, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"detail": "targets[0].path: must not be empty", "field": "targets[0].path"}))]
pub struct ErrorBody {
    /// What went wrong, for a person.
    pub detail: String,
    /// The request field at fault (a path such as `targets[3].path`), when one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ErrorBody {
    /// An error that names no field.
    pub fn new(detail: impl Into<String>) -> Self {
        ErrorBody {
            detail: detail.into(),
            field: None,
        }
    }
}

/// Every error an endpoint can answer.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body is not JSON at all.
    #[error("{0}")]
    MalformedJson(String),
    /// A field has a wrong type or value.
    #[error("{field}: {message}")]
    Invalid {
        /// The offending field, as a path (`targets[3].path`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// No such resource.
    #[error("{0}")]
    NotFound(String),
    /// The request body is over the size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// The endpoint's processor is not part of this engine.
    #[error("{0}")]
    NotAvailable(String),
    /// The engine cannot take the request now.
    #[error("{0}")]
    Unavailable(String),
    /// The storage has no space left (disk full): 507.
    #[error("{0}")]
    InsufficientStorage(String),
    /// The database file is damaged (a corrupt page): 500 naming the cause, since no
    /// retry will read it.
    #[error("the database is damaged: {0}")]
    Damaged(String),
    /// Something failed inside; details go to the log, not to the client.
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// An error about one field.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::Invalid {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl From<FieldError> for ApiError {
    fn from(e: FieldError) -> Self {
        ApiError::Invalid {
            field: e.field,
            message: e.message,
        }
    }
}

impl From<SubmissionError> for ApiError {
    fn from(e: SubmissionError) -> Self {
        match e {
            SubmissionError::Malformed(m) => ApiError::MalformedJson(m),
            SubmissionError::Invalid(e) => e.into(),
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::NoProcessor(kind) => ApiError::NotAvailable(format!(
                "processor '{kind}' is not available in this engine: no processor of that kind is registered"
            )),
            EngineError::Invalid { field, message } => ApiError::Invalid { field, message },
            EngineError::ShuttingDown => ApiError::Unavailable(e.to_string()),
            EngineError::Mailbox(_) => ApiError::Unavailable(e.to_string()),
            EngineError::Conflict(m) => ApiError::Conflict(m),
            EngineError::Store(crate::store::StoreError::Storage { kind, detail }) => match kind {
                crate::store::fault::FaultKind::Full => ApiError::InsufficientStorage(detail),
                _ => ApiError::Unavailable(detail),
            },
            // The group commit hands each waiter the fault as text: classify that too.
            EngineError::Store(err) => {
                let text = err.to_string();
                match crate::store::fault::classify_message(&text) {
                    Some(crate::store::fault::FaultKind::Full) => {
                        ApiError::InsufficientStorage(text)
                    }
                    Some(_) => ApiError::Unavailable(text),
                    None if is_damage(&text) => ApiError::Damaged(text),
                    None => ApiError::Internal(text),
                }
            }
        }
    }
}

/// Whether a database error says the file itself is damaged (SQLite's `SQLITE_CORRUPT`
/// and `SQLITE_NOTADB`), not that a query or the connection failed.
fn is_damage(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("database disk image is malformed")
        || m.contains("file is not a database")
        || m.contains("database corruption")
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            ApiError::MalformedJson(_) => StatusCode::BAD_REQUEST,
            ApiError::Invalid { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::NotAvailable(_) => StatusCode::NOT_IMPLEMENTED,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::InsufficientStorage(_) => StatusCode::INSUFFICIENT_STORAGE,
            ApiError::Damaged(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let body = match self {
            ApiError::Invalid { field, message } => ErrorBody {
                detail: format!("{field}: {message}"),
                field: Some(field.clone()),
            },
            ApiError::Damaged(cause) => {
                log::error!("the database is damaged: {cause}");
                ErrorBody::new(self.to_string())
            }
            ApiError::Internal(cause) => {
                log::error!("internal error: {cause}");
                ErrorBody::new("internal error; the server log has the cause")
            }
            other => ErrorBody::new(other.to_string()),
        };
        HttpResponse::build(self.status_code()).json(body)
    }
}
