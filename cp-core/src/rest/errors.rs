//! REST errors: JSON `{code, message, details[]}` with a stable `code` per case.
//!
//! In: failures of validation, auth, the store and body handling. Out: HTTP responses with the
//! right status (400, 401, 403, 404, 409, 413, 415, 500).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use strait_api::{FieldError, ValidationErrors};
use strait_store::StoreError;

use crate::resources::ServiceError;

/// The JSON body of every error.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    /// Stable machine-readable code, such as `invalid_resource` or `conflict`.
    pub code: &'static str,
    /// What went wrong, for humans.
    pub message: String,
    /// One entry per bad field.
    pub details: Vec<FieldError>,
}

/// An error answered to a REST client.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
    /// The `Allow` header of a 405.
    allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, body: ErrorBody { code, message: message.into(), details: Vec::new() }, allow: None }
    }

    /// 400: the resource did not validate.
    pub fn invalid(what: &str, errors: ValidationErrors) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "invalid_resource", format!("{what} is invalid: {errors}"));
        e.body.details = errors.0;
        e
    }

    /// 400: a malformed request (not a body validation problem).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    /// 401: no token.
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "this request needs the admin token: send `Authorization: Bearer <token>`")
    }

    /// 403: a token that is not the admin token.
    pub fn forbidden() -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "the token sent is not the admin token")
    }

    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    /// 405: the method is not offered here; `allow` lists those that are (`Allow`).
    pub fn method_not_allowed(message: impl Into<String>, allow: &'static str) -> Self {
        let mut e = Self::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", message);
        e.allow = Some(allow);
        e
    }

    /// 413.
    pub fn too_large(limit: usize) -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", format!("request body is larger than the limit of {limit} bytes"))
    }

    /// 415.
    pub fn unsupported_media_type(got: Option<&str>) -> Self {
        let got = got.map(|g| format!("{g:?}")).unwrap_or_else(|| "none".into());
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("content type {got} is not supported: send application/json or application/yaml"),
        )
    }

    /// 500: the store failed.
    /// A zone (or a sidecar behind it) could not answer: 502 (it answered wrongly), 503 (not
    /// connected) or 504 (not in time); any other status is taken as 502.
    pub fn upstream(status: u16, message: impl Into<String>) -> Self {
        match status {
            404 => Self::not_found(message),
            400 => Self::bad_request(message),
            503 => Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message),
            504 => Self::new(StatusCode::GATEWAY_TIMEOUT, "timeout", message),
            _ => Self::new(StatusCode::BAD_GATEWAY, "bad_gateway", message),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// The status code.
    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::Conflict { .. } => {
                let mut err =
                    Self::new(StatusCode::CONFLICT, "conflict", format!("{e}; read the resource again and retry with its current version"));
                err.body.details.push(FieldError { field: "version".into(), message: e.to_string() });
                err
            }
            StoreError::NotFound { key } => Self::not_found(format!("{key} not found")),
            StoreError::Unavailable(_) => {
                tracing::warn!(error = %e, "the store is unavailable");
                Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", format!("{e}; retry shortly"))
            }
            _ => {
                tracing::error!(error = %e, "store failure");
                Self::internal(format!("store failure: {e}"))
            }
        }
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Store(s) => s.into(),
            ServiceError::MeshNotFound(_) => ApiError::not_found(e.to_string()),
            ServiceError::Corrupt { .. } => {
                tracing::error!(error = %e, "stored resource does not parse");
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        }
        if let Some(allow) = self.allow {
            response.headers_mut().insert(header::ALLOW, header::HeaderValue::from_static(allow));
        }
        response
    }
}
