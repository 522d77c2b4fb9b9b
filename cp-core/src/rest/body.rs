//! Request bodies: size limit, content type (JSON or YAML), parsed into a JSON value.
//!
//! In: the raw request. Out: a `serde_json::Value`, or 413/415/400.

use axum::body::Body;
use axum::http::{header, HeaderMap};
use serde_json::Value;

use super::errors::ApiError;

/// Reads and parses a body of at most `limit` bytes.
pub async fn read_value(headers: &HeaderMap, body: Body, limit: usize) -> Result<Value, ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let media = content_type.map(|c| c.split(';').next().unwrap_or("").trim().to_ascii_lowercase());
    let yaml = match media.as_deref() {
        Some("application/json") => false,
        Some("application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml") => true,
        _ => return Err(ApiError::unsupported_media_type(content_type)),
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(ApiError::too_large(limit));
    }
    let bytes = axum::body::to_bytes(body, limit).await.map_err(|_| ApiError::too_large(limit))?;
    if yaml {
        let text = std::str::from_utf8(&bytes).map_err(|_| ApiError::bad_request("body is not UTF-8"))?;
        serde_yaml::from_str(text).map_err(|e| ApiError::bad_request(format!("body is not valid YAML: {e}")))
    } else {
        serde_json::from_slice(&bytes).map_err(|e| ApiError::bad_request(format!("body is not valid JSON: {e}")))
    }
}
