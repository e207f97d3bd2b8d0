//! The one error type of the domain. Every variant knows the HTTP status and the stable
//! machine-readable code it is answered with, so handlers never invent their own mapping.

use crate::ports::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A request field is missing or wrong. `field` names it with a JSON path (`events[2]`).
    #[error("{field}: {message}")]
    Validation { field: String, message: String },

    /// A body field the route does not know (a typo the client should hear about).
    #[error("{field}: unknown field")]
    UnknownField { field: String },

    /// The request as a whole is unusable (bad JSON, wrong content type, too large, ...).
    #[error("{message}")]
    BadRequest {
        status: u16,
        code: &'static str,
        message: String,
    },

    #[error("missing or invalid API key")]
    Unauthorized,

    #[error("this key lacks the `{scope}` scope")]
    Forbidden { scope: &'static str },

    #[error("{entity} `{id}` not found")]
    NotFound { entity: &'static str, id: String },

    #[error("{entity} `{id}` already exists")]
    Duplicate { entity: &'static str, id: String },

    /// A conditional write lost a race: someone else changed the record first.
    #[error("{entity} `{id}` was changed concurrently")]
    Conflict { entity: &'static str, id: String },

    /// A calendar provider refused or failed a call made for this request. `code` says
    /// which (`exchange_auth_failed`, `exchange_throttled`, ...); 502 or 503.
    #[error("{message}")]
    Provider {
        status: u16,
        code: &'static str,
        message: String,
    },

    /// A dependency (store, queue, provider) failed. Retrying later may succeed.
    #[error("{0}")]
    Unavailable(String),

    /// A bug or corrupt data. Never caused by request input.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Validation {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn not_found(entity: &'static str, id: impl Into<String>) -> Self {
        Error::NotFound {
            entity,
            id: id.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Error::Validation { .. } | Error::UnknownField { .. } => 422,
            Error::BadRequest { status, .. } | Error::Provider { status, .. } => *status,
            Error::Unauthorized => 401,
            Error::Forbidden { .. } => 403,
            Error::NotFound { .. } => 404,
            Error::Duplicate { .. } | Error::Conflict { .. } => 409,
            Error::Unavailable(_) => 503,
            Error::Internal(_) => 500,
        }
    }

    /// The stable code in `{"error": {"code": ...}}`.
    pub fn code(&self) -> &'static str {
        match self {
            Error::Validation { .. } => "validation_failed",
            Error::UnknownField { .. } => "unknown_field",
            Error::BadRequest { code, .. } | Error::Provider { code, .. } => code,
            Error::Unauthorized => "unauthorized",
            Error::Forbidden { .. } => "forbidden",
            Error::NotFound { .. } => "not_found",
            Error::Duplicate { .. } => "duplicate",
            Error::Conflict { .. } => "conflict",
            Error::Unavailable(_) => "unavailable",
            Error::Internal(_) => "internal",
        }
    }

    /// The field a validation error names, when there is one.
    pub fn field(&self) -> Option<&str> {
        match self {
            Error::Validation { field, .. } | Error::UnknownField { field } => Some(field),
            _ => None,
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(m) => Error::Unavailable(format!("store unavailable: {m}")),
            StoreError::Corrupt(m) => Error::Internal(format!("corrupt record: {m}")),
            // A condition failure is classified by the typed store that knows what the
            // condition meant; reaching here means a caller forgot to.
            StoreError::ConditionFailed => Error::Internal("unclassified write conflict".into()),
        }
    }
}
